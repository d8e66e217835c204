"""lm-evaluation-harness model ``topkattn``: any harness task with Top-k attention.

`TopKLM` is lm-eval's Hugging Face model (`lm_eval.models.huggingface.HFLM`) with every model
call (the loglikelihood forward passes and ``generate``) run inside
``topkattn.sparsify(model, cfg)``, batched as the harness batches them. Its extra model
arguments build one `topkattn.TopKConfig` with the command line's own parsers
(`topkattn.cli.topk_options.topk_config`; selector specs by `topkattn.selectors.parse_selector`):

=================  ============================================================================
``k``              keys per query: 64, a ratio (0.05 or 5%), or ``full`` (default 64)
``selector``       selector spec, e.g. ``quest`` or ``quest:page_size=16`` (default ``exact``)
``phases``         ``decode``, ``prefill`` or ``decode,prefill`` (default: both, see below)
``granularity``    ``query_head`` or ``kv_group``
``sink, local``    first / most recent positions always kept, in addition to k (sink > 0
                   refuses lm-eval's left-padded ``generate_until`` batches: batch_size=1)
``dense_layers``   layer indices left dense: ``0;1`` or ``[0,1]``
``min_context``    below this many visible keys a query attends densely
``topk_backend``   ``auto``, ``reference`` or ``triton``
=================  ============================================================================

Phases: a loglikelihood request is one forward pass over context + continuation (a prefill),
so with ``phases=decode`` loglikelihood tasks run dense; the default applies Top-k to both.
``phases=decode`` gives the study's protocol for ``generate_until`` (dense prompt, Top-k
decode). A comma inside a value must be quoted on lm-eval's command line
(``phases="decode,prefill"``, ``selector="precision:0.8,protect=1"``) or the arguments given as
a JSON object; the Python string form (``simple_evaluate(model_args="k=64,...")``) splits on
every comma, so there pass a dict.

``pretrained=default`` (or a ``.gguf`` file) loads through `topkattn.models.load_model` (the
embedded SmolLM2-135M-Instruct GGUF); any other value is loaded by HFLM itself (Hub id, local
folder; ``revision``, ``peft``, ``accelerate launch`` as usual).

lm-eval 0.4 has no plugin entry point for models: importing this module registers the model::

    import lm_eval, topkattn.integrations.lm_eval_model  # registers "topkattn"
    lm_eval.simple_evaluate(model="topkattn", model_args={"pretrained": "default", "k": 64,
                            "selector": "quest"}, tasks=["hellaswag"])

and ``python -m topkattn.integrations.lm_eval_model <lm_eval arguments>`` is lm-eval's command
line with the model registered (``--model topkattn --model_args pretrained=default,k=64``).
Bad model arguments (an unknown key, a bad k or selector) raise one-line `ModelArgsError`
naming the value, before any weight is read.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from typing import Any, Iterator

try:
    import lm_eval  # noqa: F401
    from lm_eval.api.registry import register_model
    from lm_eval.models.huggingface import HFLM
except ImportError as e:  # pragma: no cover - the optional extra is missing
    raise ImportError("the lm-evaluation-harness model needs lm_eval: "
                      "pip install 'topkattn[lmeval]'") from e

from topkattn.cli.topk_options import topk_config
from topkattn.config import TopKConfig
from topkattn.errors import InputError
from topkattn.integrations.hf import sparsify

MODEL_NAME = "topkattn"

#: the Top-k model arguments and their defaults (strings as on the command line)
TOPK_ARGS: dict[str, Any] = {
    "k": "64", "selector": "exact", "phases": "decode,prefill", "granularity": "query_head",
    "sink": 0, "local": 0, "dense_layers": "", "min_context": 0, "topk_backend": "auto",
}

#: `from_pretrained` keywords HFLM forwards through its ``**kwargs`` that are accepted here
PASSTHROUGH_ARGS = ("attn_implementation", "device_map", "low_cpu_mem_usage", "load_in_8bit",
                    "load_in_4bit", "cache_dir", "local_files_only", "token")


class ModelArgsError(InputError):
    """A ``--model_args`` value of the ``topkattn`` model that is not allowed."""


def _hflm_args() -> tuple[str, ...]:
    params = inspect.signature(HFLM.__init__).parameters.values()
    return tuple(p.name for p in params
                 if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))


def check_model_args(args: dict[str, Any]) -> None:
    """Raise `ModelArgsError` naming any key that neither HFLM nor the Top-k options take."""
    allowed = set(_hflm_args()) | set(TOPK_ARGS) | set(PASSTHROUGH_ARGS)
    unknown = sorted(k for k in args if k not in allowed)
    if unknown:
        raise ModelArgsError(
            f"unknown topkattn model_args {', '.join(map(repr, unknown))}; the Top-k ones are "
            f"{', '.join(TOPK_ARGS)}, the others those of lm-eval's hf model (pretrained, "
            "dtype, batch_size, ...)")


def _text(value: Any) -> str:
    """A model-argument value as the command-line text the Top-k parsers read (lm-eval turns
    ``64`` into an int, ``0.05`` into a float, ``[0,1]`` into a list)."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return "" if value is None else str(value)


def build_topk_config(k: Any = TOPK_ARGS["k"], selector: Any = TOPK_ARGS["selector"],
                      phases: Any = TOPK_ARGS["phases"],
                      granularity: Any = TOPK_ARGS["granularity"], sink: Any = 0, local: Any = 0,
                      dense_layers: Any = "", min_context: Any = 0,
                      topk_backend: Any = "auto") -> TopKConfig:
    """The `TopKConfig` of the Top-k model arguments, through `topk_config` (the CLI's
    parsers); raises `ModelArgsError` naming the bad value."""
    try:
        return topk_config(
            "full" if k is None else _text(k), sink=_int(sink),
            local=_int(local), granularity=granularity,
            selector=None if selector is None else _text(selector),
            dense_layers=_text(dense_layers).replace(";", ","),
            min_context=_int(min_context), backend=topk_backend,
            phases=_text(phases).replace(";", ","))
    except InputError as e:
        raise ModelArgsError(f"topkattn model_args: {e}") from None


def _int(value: Any) -> Any:
    """``"2"`` -> 2 (a JSON or quoted value); anything else is left for `TopKConfig` to check."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return value


def _loads_embedded(pretrained: Any) -> bool:
    return isinstance(pretrained, str) and (pretrained == "default" or
                                            pretrained.endswith(".gguf"))


@register_model(MODEL_NAME) if __name__ != "__main__" else (lambda cls: cls)
class TopKLM(HFLM):
    """HFLM whose model calls run inside ``sparsify(model, self.topk_config)``.

    Attributes:
        topk_config: the `TopKConfig` of the model arguments.
        topk_calls: attention calls summed over layers and model calls, ``{"sparse": n,
            "dense": n}`` (`LayerState.calls`): sparse ones really dropped keys.
    """

    def __init__(self, pretrained: Any = "default", **kwargs: Any) -> None:
        check_model_args(kwargs)
        topk = {name: kwargs.pop(name) for name in list(kwargs) if name in TOPK_ARGS}
        self.topk_config = build_topk_config(**topk)
        self.topk_calls = {"sparse": 0, "dense": 0}
        self._topk_source = pretrained if isinstance(pretrained, str) else None
        self._topk_embedded = _loads_embedded(pretrained)
        if self._topk_embedded:
            pretrained, kwargs = self._load_embedded(pretrained, kwargs)
        super().__init__(pretrained=pretrained, **kwargs)
        from topkattn.compat import check_supported

        check_supported(self.model)

    @staticmethod
    def _load_embedded(name: str, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """(model, HFLM keyword arguments with its tokenizer) of `load_model` (GGUF)."""
        import torch
        from lm_eval.models.huggingface import get_dtype

        from topkattn.models import load_model

        dtype = kwargs.pop("dtype", None)
        device = kwargs.pop("device", None)
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            device = None  # lm-eval's default "cuda"/"cuda:0" on a CPU machine: the CPU, as HFLM
        model, tokenizer = load_model(
            name, dtype=None if dtype in (None, "auto") else get_dtype(dtype), device=device)
        if kwargs.get("tokenizer") is None:
            kwargs["tokenizer"] = tokenizer
        return model, kwargs

    @contextlib.contextmanager
    def _topk(self) -> Iterator[None]:
        """Run the block with Top-k attention; add its attention calls to `topk_calls`."""
        with sparsify(self.model, self.topk_config) as states:
            yield
        for state in states.values():
            for kind, n in state.calls.items():
                self.topk_calls[kind] = self.topk_calls.get(kind, 0) + n

    def _model_call(self, inps, attn_mask=None, labels=None):
        """inps [B, L] token ids -> logits [B, L, V], under Top-k attention."""
        with self._topk():
            return super()._model_call(inps, attn_mask, labels)

    def _model_generate(self, context, max_length: int, stop: list[str], **generation_kwargs):
        """context [B, L] (left-padded) -> [B, <= max_length] tokens, under Top-k attention."""
        with self._topk():
            return super()._model_generate(context, max_length, stop, **generation_kwargs)

    def get_model_info(self) -> dict:
        """HFLM's model information plus the Top-k configuration (``topk_config``); for the
        embedded model without HFLM's Hub look-up of its revision."""
        if self._topk_embedded:
            info = {"model_num_parameters": self.model.num_parameters(),
                    "model_dtype": str(self.model.dtype), "model_revision": None,
                    "model_sha": ""}
        else:
            info = super().get_model_info()
        info["topk_config"] = self.topk_config.to_json()
        info["topk_pretrained"] = self._topk_source
        return info


def main(argv: list[str] | None = None) -> None:
    """lm-eval's command line (``lm_eval <argv>``) with the ``topkattn`` model registered."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = ["lm_eval", *argv]
    cli_evaluate()


if __name__ == "__main__":
    # run as a script: register through the importable module (a second registration of
    # "topkattn" under __main__ would clash), then run lm-eval's command line
    from topkattn.integrations.lm_eval_model import main as _main

    _main()


__all__ = ["MODEL_NAME", "ModelArgsError", "TOPK_ARGS", "TopKLM", "build_topk_config",
           "check_model_args", "main"]
