"""The model's context limit, read from its config before any weight is loaded.

Commands that take prompt lengths (``eval --lengths``, ``fidelity --length``,
``train-indexer --length``) check them against this limit first, so that a length the model
cannot take stops with one line instead of after a model load (or, for ``fidelity`` and
``train-indexer``, instead of running on positions the model was never trained for).

The limit is the config's ``max_position_embeddings`` (for a ``.gguf`` file, its
``<arch>.context_length``, which transformers maps to the same field). A model whose RoPE
scaling lets it run longer than that must say so in ``max_position_embeddings``; the error
message says where the limit comes from.
"""

from __future__ import annotations

from topkattn.errors import InputError


_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                 10: "<Q", 11: "<q", 12: "<d"}


def _gguf_context_length(path: str) -> int | None:
    """``<arch>.context_length`` from a GGUF file's metadata, reading only the key-value
    header up to that key (``gguf.GGUFReader`` also maps every tensor: seconds for a model).
    None when the file is not GGUF v2/v3 or the key is absent."""
    import struct

    def read(f, fmt):
        n = struct.calcsize(fmt)
        data = f.read(n)
        if len(data) != n:
            raise EOFError
        return struct.unpack(fmt, data)[0]

    def read_str(f):
        return f.read(read(f, "<Q")).decode("utf-8", errors="replace")

    def skip(f, kind):
        if kind in _GGUF_SCALARS:
            f.seek(struct.calcsize(_GGUF_SCALARS[kind]), 1)
        elif kind == 8:
            f.seek(read(f, "<Q"), 1)
        elif kind == 9:
            inner, count = read(f, "<I"), read(f, "<Q")
            if inner in _GGUF_SCALARS:
                f.seek(count * struct.calcsize(_GGUF_SCALARS[inner]), 1)
            else:
                for _ in range(count):
                    skip(f, inner)
        else:
            raise ValueError(f"GGUF value type {kind}")

    try:
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF" or read(f, "<I") not in (2, 3):
                return None
            read(f, "<Q")  # tensor count
            arch = None
            for _ in range(read(f, "<Q")):
                key, kind = read_str(f), read(f, "<I")
                if key == "general.architecture" and kind == 8:
                    arch = read_str(f)
                elif arch is not None and key == f"{arch}.context_length" \
                        and kind in _GGUF_SCALARS:
                    return int(read(f, _GGUF_SCALARS[kind]))
                else:
                    skip(f, kind)
    except (OSError, EOFError, ValueError, struct.error):
        return None
    return None


def context_limit(model: str | None) -> tuple[int | None, str]:
    """(``max_position_embeddings`` of ``model``'s config or None, a note on its source).

    ``model`` is what ``--model`` takes (None or "default": the embedded model). Nothing but
    the config (or the GGUF header) is read. A model that cannot be resolved or read returns
    (None, ""): `topkattn.models.load_model` then reports the real problem.
    """
    from pathlib import Path

    from topkattn.models import resolve_model_source

    try:
        source, gguf_file = resolve_model_source(model)
    except Exception:  # noqa: BLE001 - load_model gives the one-line reason
        return None, ""
    if gguf_file is not None:
        n = _gguf_context_length(str(Path(source) / gguf_file))
        return n, "its GGUF context_length" if n else ""
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(source)
    except Exception:  # noqa: BLE001 - load_model gives the one-line reason
        return None, ""
    n = getattr(config, "max_position_embeddings", None)
    scaling = getattr(config, "rope_scaling", None) or {}
    note = "its config"
    kind = scaling.get("rope_type", scaling.get("type")) if isinstance(scaling, dict) else None
    if kind not in (None, "default"):
        note += (f", whose rope_scaling {kind!r} (factor {scaling.get('factor')}) is not "
                 "counted")
    return (n if isinstance(n, int) else None), note


def check_lengths(lengths, limit: int | None, option: str = "--lengths",
                  source: str = "its config") -> None:
    """`InputError` naming the first length above ``limit`` (the model's
    ``max_position_embeddings``), ``option`` and where the limit comes from."""
    if limit is None:
        return
    for n in lengths:
        if n > limit:
            raise InputError(
                f"{option}: length {n} tokens exceeds the model's context limit "
                f"(max_position_embeddings={limit}, from {source}); give lengths up to {limit}, "
                "or a model whose max_position_embeddings covers them (a model whose RoPE "
                "scaling reaches further must declare it there)")


def check_model_lengths(model: str | None, lengths, option: str = "--lengths") -> None:
    """`check_lengths` against `context_limit` of ``model`` (its config, no weights)."""
    limit, source = context_limit(model)
    check_lengths(lengths, limit, option, source or "its config")


__all__ = ["check_lengths", "check_model_lengths", "context_limit"]
