"""KV-cache compression presses of NVIDIA kvpress as baselines of `topkattn eval`.

A press (SnapKV, StreamingLLM, Expected Attention, KNorm, TOVA, ...) prunes the KV cache once,
during prefill, to ``1 - compression_ratio`` of its tokens; decoding then attends densely to
what is left. Top-k attention keeps the whole cache and picks k keys per query at every step.
`PressSpec` names one press at one ratio (``kvpress:snapkv@0.5`` on the command line); the
evaluation runner treats its label as one more method next to ``full`` and the k settings, so
it is measured on the same samples, scored the same way and shown in the same table and plot.

Protocol of a press row (`decode_press`), the runner's protocol with the prefill compressed:
the prompt except its last token is prefilled under the press (``with press(model):``, the
library's own context manager, which hooks every attention layer), so the question at the end
of the prompt is compressed with the context and also steers query-aware presses (SnapKV's
observation window); the last prompt token is then fed as the first decode step and the
answer decoded greedily with the model's own attention over the compressed cache. Positions
continue from the uncompressed prompt (``position_ids`` = true positions), as kvpress's own
pipeline does, since the cache is shorter than the text it holds.

kvpress is optional and pins an older transformers (0.5.5: ``transformers<5.3``); install it
with ``pip install --no-deps kvpress`` (plus ``cachetools`` and ``fire``, which kvpress
imports at import time). Its presses read the attention layer's keyword arguments
``past_key_values`` and ``cache_position``; transformers from 5.2x on passes ``cache`` and no
``cache_position``, so `press_context` gives the press's hook those two names where they are
missing (``cache_position``: the indices of this call's tokens in the cache, the meaning
transformers gave it). `PRESSES` lists the presses that ran end to end here on Llama-family
models with SDPA attention (a tiny random Llama and SmolLM2-135M, transformers 5.24): presses
that need a Hub download (QFilter, KVzip, DuoAttention, ...), eager attention
(ObservedAttention), a tokenizer delimiter (Finch) or another press as argument (AdaKV,
ChunkKV, ...) are left out.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from topkattn.errors import InputError
from topkattn.generation import Branch, greedy_decode

#: prefix of a press label in ``EvalConfig.ks`` and in results lines (``k``)
PREFIX = "kvpress:"

#: CLI name -> kvpress class name: the presses built from a compression ratio alone
PRESSES: dict[str, str] = {
    "snapkv": "SnapKVPress",
    "streaming_llm": "StreamingLLMPress",
    "expected_attention": "ExpectedAttentionPress",
    "knorm": "KnormPress",
    "tova": "TOVAPress",
    "random": "RandomPress",
    "keydiff": "KeyDiffPress",
    "pyramidkv": "PyramidKVPress",
    "lagkv": "LagKVPress",
    "cur": "CURPress",
    "leverage": "LeverageScorePress",
    "compactor": "CompactorPress",
    "non_causal_attn": "NonCausalAttnPress",
    "cap": "CapPress",
}

INSTALL_HINT = ("install it with `pip install --no-deps kvpress` (kvpress pins an older "
                "transformers, so skip its dependencies) and `pip install cachetools fire` "
                "(kvpress imports them at import time)")


@dataclass(frozen=True)
class PressSpec:
    """One kvpress baseline: press ``name`` (a key of `PRESSES`) at ``compression_ratio``,
    the fraction of the prefilled KV cache that the press removes, in [0, 1)."""

    name: str
    compression_ratio: float

    def __post_init__(self) -> None:
        if self.name not in PRESSES:
            raise InputError(f"unknown kvpress press {self.name!r}; allowed: "
                             f"{', '.join(PRESSES)}")
        r = self.compression_ratio
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= r < 1.0:
            raise InputError(f"compression ratio of press {self.name!r} must be a number in "
                             f"[0, 1) (the fraction of the KV cache removed), got {r!r}")
        object.__setattr__(self, "compression_ratio", float(r))

    @property
    def label(self) -> str:
        """``kvpress:<name>@<ratio>``, the method's label in tables and results."""
        return f"{PREFIX}{self.name}@{self.compression_ratio:g}"


def is_press_label(text: Any) -> bool:
    """Whether ``text`` names a press (``kvpress:...``) rather than a k setting."""
    return isinstance(text, str) and text.strip().lower().startswith(PREFIX)


def parse_press(text: str) -> PressSpec:
    """``"kvpress:snapkv@0.5"`` (or ``"snapkv@0.5"``, ``"snapkv@50%"``) -> `PressSpec`.

    Raises `InputError` naming the bad value and listing the allowed presses."""
    t = str(text).strip().lower()
    body = t[len(PREFIX):] if t.startswith(PREFIX) else t
    name, sep, ratio = body.partition("@")
    name = name.strip().replace("-", "_")
    if not sep or not name or not ratio.strip():
        raise InputError(f"press {text!r} must be kvpress:<press>@<compression ratio>, e.g. "
                         f"kvpress:snapkv@0.5; presses: {', '.join(PRESSES)}")
    if name not in PRESSES:
        raise InputError(f"unknown kvpress press {name!r} in {text!r}; allowed: "
                         f"{', '.join(PRESSES)}")
    r = ratio.strip()
    try:
        value = float(r[:-1]) / 100.0 if r.endswith("%") else float(r)
    except ValueError:
        raise InputError(f"compression ratio {ratio!r} in press {text!r} is not a number; give "
                         "a fraction in [0, 1) such as 0.5 or 50%") from None
    if not 0.0 <= value < 1.0:
        raise InputError(f"compression ratio {ratio!r} in press {text!r} must be in [0, 1) "
                         "(the fraction of the KV cache removed), e.g. 0.5 or 87.5%")
    return PressSpec(name, value)


def parse_press_list(texts: str | Iterable[str]) -> tuple[PressSpec, ...]:
    """Presses of a comma-separated string or of several such strings (a repeated option),
    in order, without duplicates. Raises `InputError` naming the first bad one."""
    items = [texts] if isinstance(texts, str) else list(texts)
    out: dict[str, PressSpec] = {}
    for item in items:
        for part in str(item).split(","):
            if part.strip():
                spec = parse_press(part)
                out.setdefault(spec.label, spec)
    return tuple(out.values())


def require_kvpress():
    """The ``kvpress`` module; `InputError` (one line, with the install command) when it
    cannot be imported.

    kvpress wraps every registered attention function at import (for head-wise presses, none
    of which `PRESSES` offers); that wrapping is undone here, so that importing it leaves the
    attention of the other methods of a run as it was."""
    import sys

    if sys.modules.get("kvpress") is not None:  # imported already (None: import blocked)
        return sys.modules["kvpress"]
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS as fns

    before = {name: fns[name] for name in list(fns)}
    try:
        import kvpress
    except Exception as e:  # ImportError, or an API it expects that transformers dropped
        what = f"{type(e).__name__}: {e}"
        raise InputError(f"--press needs NVIDIA kvpress, which cannot be imported ({what}); "
                         f"{INSTALL_HINT}") from None
    finally:
        for name, fn in before.items():
            if fns[name] is not fn:
                with contextlib.suppress(KeyError):
                    del fns[name]  # kvpress's wrapper sits in the local mapping
                if fns[name] is not fn:
                    fns[name] = fn
    return kvpress


def build_press(spec: PressSpec):
    """A new kvpress press object of ``spec`` (kvpress imported here)."""
    kvpress = require_kvpress()
    return getattr(kvpress, PRESSES[spec.name])(compression_ratio=spec.compression_ratio)


def check_press_model(model) -> None:
    """`InputError` unless ``model`` has the layout kvpress hooks: ``model.model.layers[i]
    .self_attn`` with ``q_proj`` and ``k_proj`` (Llama, Mistral, Qwen2/3, Phi-3 families)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    attn = getattr(layers[0], "self_attn", None) if layers else None
    if attn is None or not (hasattr(attn, "q_proj") or hasattr(attn, "qkv_proj")):
        raise InputError(f"kvpress presses need a decoder with model.layers[i].self_attn and "
                         f"q_proj/k_proj projections (Llama, Mistral, Qwen2/3, Phi-3); "
                         f"{type(model).__name__} has not")


def _kwargs_for_press(kwargs: dict, layer_idx: int) -> dict:
    """The attention layer's keyword arguments with the names kvpress's hooks read:
    ``past_key_values`` (transformers >= 5.2x passes it as ``cache``) and ``cache_position``
    [Lq] (indices of this call's Lq tokens in the cache, after the layer's cache update)."""
    if "past_key_values" in kwargs and "cache_position" in kwargs:
        return kwargs
    import torch

    kw = dict(kwargs)
    if kw.get("past_key_values") is None and kw.get("cache") is not None:
        kw["past_key_values"] = kw["cache"]
    if "cache_position" not in kw:
        hidden = kw["hidden_states"]  # [B, Lq, hidden]
        end = kw["past_key_values"].get_seq_length(layer_idx)
        kw["cache_position"] = torch.arange(end - hidden.shape[1], end, device=hidden.device)
    return kw


@contextlib.contextmanager
def press_context(press, model) -> Iterator[None]:
    """``press(model)`` (kvpress's context manager), with the press's forward hook given the
    keyword names it reads (`_kwargs_for_press`) on any transformers version."""
    hook = press.forward_hook

    def forward_hook(module, args, kwargs, output):
        return hook(module, args, _kwargs_for_press(kwargs, module.layer_idx), output)

    press.forward_hook = forward_hook  # kvpress registers self.forward_hook on each layer
    try:
        with press(model):
            yield
    finally:
        del press.forward_hook  # the class's own method again


@dataclass
class PressBranch(Branch):
    """A `Branch` decoded after a press: ``kv_kept``, the mean cache length per layer after
    compression (of ``n_tokens - 1`` prefilled tokens)."""

    kv_kept: float = 0.0


def decode_press(model, tokenizer, prompt: str, spec: PressSpec, max_new_tokens: int,
                 eos: set[int], label: str | None = None) -> PressBranch:
    """One greedy answer to ``prompt`` after prefilling it under the press ``spec``.

    The prompt except its last token ([1, n-1] ids) is prefilled under the press, which
    compresses every layer's cache; the last prompt token is fed at position n-1 and the
    answer decoded greedily with the model's own attention. ``seconds``: decoding,
    ``prefill_seconds``: the compressed prefill. Raises `InputError` when the press cannot
    compress a prompt this short (e.g. SnapKV's 64-token observation window)."""
    import torch

    press = build_press(spec)
    device = next(model.parameters()).device
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    ids = ids.to(device)
    n = int(ids.shape[1])
    t0 = time.perf_counter()
    try:
        with torch.no_grad(), press_context(press, model):
            cache = model(input_ids=ids[:, :-1], use_cache=True, logits_to_keep=1).past_key_values
    except AssertionError as e:  # kvpress checks its preconditions with assert
        raise InputError(f"press {spec.label} cannot compress a {n - 1}-token prefill: "
                         f"{e}") from None
    prefill_s = time.perf_counter() - t0
    kept = sum(cache.get_seq_length(i) for i in range(len(cache))) / max(1, len(cache))
    t1 = time.perf_counter()
    with torch.no_grad():
        # explicit positions: the compressed cache is shorter than the prompt
        gen = greedy_decode(model, ids[:, -1:], cache, max_new_tokens, eos, position=n - 1)
    secs = time.perf_counter() - t1
    del cache
    return PressBranch(label or spec.label, gen, tokenizer.decode(gen, skip_special_tokens=True),
                       secs, prefill_s, n, kv_kept=kept)


__all__ = ["INSTALL_HINT", "PREFIX", "PRESSES", "PressBranch", "PressSpec", "build_press",
           "check_press_model", "decode_press", "is_press_label", "parse_press",
           "parse_press_list", "press_context", "require_kvpress"]
