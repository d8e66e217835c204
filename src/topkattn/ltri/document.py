"""A prefilled document, indexed once and reused: `save_document` writes an `LtriCache`'s
tier 2 (every layer's keys and values) and its span index; `load_document` rebuilds a cache
from them, ready to take more tokens (a question) and decode, as often as wanted.

The file is one ``torch.save`` of plain tensors: ``{"format", "config", "n", "keys",
"values", "index"}`` (keys / values: per layer [n, Hkv, D] in the model's dtype). The local
window of the loaded cache holds the positions after the last committed span; the pool fills
at the first retrieval.
"""

from __future__ import annotations

from pathlib import Path

import torch

from topkattn.errors import InputError, MissingFileError
from topkattn.ltri.cache import LtriCache
from topkattn.ltri.index import SpanIndex

FORMAT = "topkattn-ltri-document/1"


def save_document(cache: LtriCache, path: str | Path) -> Path:
    """Write ``cache`` (tier 2 and index) to ``path``."""
    if cache.state is None or not all(ly.is_initialized for ly in cache.layers):
        raise InputError("only a prefilled Ltri cache can be saved")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = cache.get_seq_length()
    torch.save({"format": FORMAT, "config": cache.cfg.to_json(), "n": n,
                "keys": [ly.t2k[:n].cpu() for ly in cache.layers],
                "values": [ly.t2v[:n].cpu() for ly in cache.layers],
                "index": cache.state.index.state_dict()}, path)
    return path


def load_document(run, path: str | Path, extra_tokens: int = 4096) -> LtriCache:
    """A new cache of ``run`` (`topkattn.ltri.context.LtriRun`) holding the document at
    ``path`` (tier 2 sized for ``extra_tokens`` more)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"Ltri document file {str(path)!r} does not exist")
    d = torch.load(path, map_location="cpu", weights_only=True)
    if d.get("format") != FORMAT:
        raise InputError(f"{str(path)!r} is not an Ltri document (format {d.get('format')!r})")
    n = int(d["n"])
    if len(d["keys"]) != run.n_layers:
        raise InputError(f"the document has {len(d['keys'])} layers, the model {run.n_layers}")
    cache = run.new_cache(n + extra_tokens)
    st = cache.state
    st.index = SpanIndex.from_state_dict(d["index"], run.device)
    covered = st.index.covered
    for ly, k, v in zip(cache.layers, d["keys"], d["values"]):
        H, D = k.shape[1], k.shape[2]
        dummy = torch.empty(1, H, 0, D, dtype=k.dtype, device=run.device)
        ly.lazy_initialization(dummy, dummy)
        ly.update(k.transpose(0, 1)[None].to(run.device), v.transpose(0, 1)[None].to(run.device))
        # the sink region, then the local window from the first uncommitted position
        s = min(ly.spec.sink, n)
        ly.write_local(k[:s].transpose(0, 1)[None].to(run.device),
                       v[:s].transpose(0, 1)[None].to(run.device), 0)
        ly.drop_local(covered)
        ly.local_start = covered
        ly.write_local(k[covered:].transpose(0, 1)[None].to(run.device),
                       v[covered:].transpose(0, 1)[None].to(run.device), covered)
    st.band_start = covered
    return cache


__all__ = ["FORMAT", "load_document", "save_document"]
