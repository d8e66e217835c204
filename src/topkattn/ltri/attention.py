"""The Ltri attention function (registered as ``"topk_ltri"``).

Two paths, chosen per call by the cache the model was given:

- `LtriCache` (its `LtriLayer.update` tags the keys it returns): the two-tier path,
  `two_tier_attention`. The call's queries (a prefill chunk or one decode token) attend to
  tier 1: the sink, the retrieved spans' tokens in the pool and the local window (recent
  tokens, the open span, the chunk itself, causally). Per call and layer:
  1. at the first layer of a forward pass, the pass starts (`LtriState.begin_pass`) and
     generated tokens older than the recent window are committed as fixed spans;
  2. the layer adds representatives of newly committed spans (from its local window, else
     from tier 2);
  3. retrieval (`Retriever.spans_for`: collaborative by default) names spans among those
     ending at or before the pass's *horizon* (what was committed when the pass started, and
     before the chunk); the local window then forgets positions before the horizon of the set
     it uses - positions from the horizon on stay local, so no token is ever neither local
     nor retrievable - and takes the new keys and values; the pool holds the set's tokens
     (`LtriLayer.fetch` copies only new ones: usually already done on the side stream, started
     when the last retrieval layer decided);
  4. attention over tier 1 (SDPA with a bool mask of the filled, visible slots);
  5. detection layers add their attention band of the chunk (normaliser over the tier-1 keys
     the chunk saw); after the last of them the state segments the chunk (keeping the recent
     window open); after the last retrieval layer the new set is prefetched for every layer.
  A call with more queries than ``chunk_size`` (a whole prompt handed to ``model.generate``)
  runs in chunks inside this layer; its chunks use per-layer retrieval and the first layer
  segments them by key similarity (the detection layers' attention comes too late for the
  layers before them); `topkattn.ltri.context.LtriRun.prefill` streams chunks through the
  whole model instead, as the paper does.
- any other cache (the whole context in memory): `topkattn.integrations.hf`'s Top-k attention
  with the ``ltri`` selector, exactly as ``sparsify`` runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from topkattn.integrations.hf import LayerState, topk_attention_forward
from topkattn.ltri.detection import band_attention

ATTENTION_NAME = "topk_ltri"


@dataclass
class LtriLayerState(LayerState):
    """What one attention module needs: hf's `LayerState` (the in-memory path) plus the run."""

    run: Any = field(default=None)


def ltri_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                           scaling: float | None = None, **kwargs):
    """query [1, Hq, Lq, D]; key, value [1, Hkv, Lq or Lk, D]. Returns (out [1, Lq, Hq, D],
    None) like transformers' SDPA function."""
    layer = getattr(key, "_ltri_layer", None)
    rec: LtriLayerState | None = getattr(module, "_topkattn_state", None)
    if layer is None or rec is None or rec.run is None:
        return topk_attention_forward(module, query, key, value, attention_mask, dropout,
                                      scaling, **kwargs)
    if query.dtype != value.dtype:
        query = query.to(value.dtype)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out = two_tier_attention(rec.run, layer, rec.layer_idx, query, key.to(value.dtype), value,
                             scale)
    return out.contiguous(), None


def _positions(index, sel) -> np.ndarray:
    return index.positions(sel.ids, sel.take).cpu().numpy()


@torch.no_grad()
def two_tier_attention(run, layer, li: int, query, key, value, scale: float) -> torch.Tensor:
    """The two-tier path of one layer call (see the module docstring)."""
    cache = layer.owner
    st = run.state_for(cache, query, key)
    cfg = st.cfg
    Lq = query.shape[2]
    n0 = layer.n - Lq
    C = cfg.chunk_size
    bulk = Lq > C
    outs = []
    for c0 in range(0, Lq, C):
        c1 = min(Lq, c0 + C)
        outs.append(_chunk(run, st, cache, layer, li, query[:, :, c0:c1], key[:, :, c0:c1],
                           value[:, :, c0:c1], n0 + c0, scale, bulk))
    return torch.cat(outs, 1) if len(outs) > 1 else outs[0]


def _chunk(run, st, cache, layer, li, q, k, v, p0, scale, bulk) -> torch.Tensor:
    cfg, idx, ret = st.cfg, st.index, st.retriever
    c = q.shape[2]
    end = p0 + c
    if li == run.first_layer and not bulk:
        st.begin_pass((id(cache), end), prefill=c > 1)
        if c == 1:  # a generated token: commit whole spans older than the recent window
            st.commit_fixed(end, cfg.recent)
        st.horizon = min(idx.covered, p0)
    horizon = min(idx.covered, p0) if bulk else st.horizon
    _sync(st, layer, li)
    # retrieval: spans ending at or before the pass's horizon; later positions stay local
    sel = None
    if idx.represented(li):
        exclude = st.exclude(li)
        if bulk:
            from topkattn.ltri.retrieval import Selection

            S = min(idx.count_upto(horizon), idx.represented(li))
            ex = exclude[:S]
            ids, take = idx.search(li, q[0], layer.spec.pool, cfg.represent, exclude=ex,
                                   n_spans=S)
            sel = Selection(ids, take, ret.step, horizon)
        else:
            sel = ret.spans_for(idx, li, q[0], layer.spec.pool, horizon, exclude)
    layer.drop_local(min(sel.horizon if sel is not None else layer.local_start, p0))
    layer.write_local(k, v, p0)
    if li == run.first_layer and c > 1 and (bulk or cfg.boundary != "triangle"):
        # similarity / fixed boundaries; in a bulk prompt the detection layers' attention
        # comes too late for the layers before them, so key similarity segments it
        kl, ls = layer.local_keys()
        st.segment(end, cfg.recent, kl, ls)
    if sel is not None and cache.prefetched.get(li) is sel:
        layer.wait()
    else:
        pos = _positions(idx, sel) if sel is not None else np.zeros(0, dtype=np.int64)
        layer.fetch(pos)
        cache.prefetched[li] = sel
    # attention over tier 1
    vis = layer.visible(p0, c)
    out = torch.nn.functional.scaled_dot_product_attention(
        q, layer.t1k, layer.t1v, attn_mask=vis[None, None], scale=scale,
        enable_gqa=q.shape[1] != layer.t1k.shape[1])
    # detection: the chunk's attention band, normalised over what it saw
    if c > 1 and st.wants_band(li):
        kl, ls = layer.local_keys()
        rows = band_attention(q[0], kl, scale, cfg.max_span, q_start=p0 - ls,
                              k_norm=layer.t1k[0], norm_visible=vis, chunk=cfg.detect_chunk)
        st.add_band(li, rows, p0)
        if li == st.detect_layers[-1]:
            st.segment(end, cfg.recent, kl, ls)
    # collaborative: the set just decided goes to every layer's pool on the side stream
    if (not bulk and cfg.retrieval == "collaborative" and li == ret.last_layer
            and ret.current is not None and sel is ret.current):
        pos = _positions(idx, sel)
        for lj, other in enumerate(cache.layers):
            if lj != li and other.is_initialized and cache.prefetched.get(lj) is not sel:
                other.fetch(pos, stream=True)
                cache.prefetched[lj] = sel
    return out.transpose(1, 2)


def _sync(st, layer, li) -> None:
    """Representatives of ``li``'s missing spans, from the local window (else tier 2)."""
    a, b = st.index.pending_range(li)
    if b > a:
        if a >= layer.local_start:
            kl, ls = layer.local_keys()
            st.sync(li, kl, ls)
        else:
            st.sync(li, layer.tier2_keys(a, b), a)


__all__ = ["ATTENTION_NAME", "LtriLayerState", "ltri_attention_forward", "two_tier_attention"]
