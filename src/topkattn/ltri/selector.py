"""The ``ltri`` selector: Ltri-LLM span retrieval behind the `Selector` interface.

It works with any cache that holds the whole context (transformers' `DynamicCache` or
`StaticCache`, the evaluation runner's deep-copied prefixes, the fidelity run): the keys it
is given are the whole cache, and it returns the positions of the retrieved spans. The
token budget is the Top-k config's k (so ``topkattn eval --selector ltri --k 64`` compares
ltri with exact Top-k at the same budget); the integration adds the config's sink and local
positions as for every selector.

- Prefill: `observe_prefill` (the integration calls it at every prefill over key ranges, the
  fidelity run at its dense prefill) collects the detection layers' attention bands
  (`topkattn.ltri.detection.band_attention`, blocks of query rows: no n x n map) and
  segments the prompt once every detection layer has reported (triangle scores + NMS).
  Where no prefill was observed, segmentation falls back to key-similarity boundaries.
- Decode: every layer adds its representatives of new spans and asks the `Retriever`
  (collaborative: retrieval heads vote, see `topkattn.ltri.retrieval`); the open span at
  the end of the cache (fewer than ``max_span`` newest tokens) is always attended and counts
  against the budget; generated tokens are committed as spans of ``max_span``.
- The two-tier cache and streaming prefill are `topkattn.ltri.context`: ``sparsify`` with
  this selector hands over to `ltri_context`, which runs this selector for caches that hold
  the whole context (the in-memory Ltri) and the two-tier path for an `LtriCache`.

One sequence at a time (batch 1): a batch of several raises `InputError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

from topkattn.errors import InputError
from topkattn.ltri.config import LtriConfig
from topkattn.ltri.detection import band_attention
from topkattn.ltri.state import LtriState
from topkattn.selectors.base import SelectionContext, Selector

STORE_KEY = "ltri"
_LIST_FIELDS = ("detect_layers", "retrieval_layers", "retrieval_heads")


def model_shape(module, q: torch.Tensor, k: torch.Tensor) -> tuple[int, int, int, int]:
    """(layers, query heads, KV heads, head dim) from an attention module's config and q, k."""
    cfg = getattr(module, "config", None)
    n_layers = getattr(cfg, "num_hidden_layers", None)
    if n_layers is None:
        raise InputError("the ltri selector needs the attention module (its config names the "
                         "number of layers); call it through sparsify or the fidelity run")
    return int(n_layers), q.shape[1], k.shape[1], k.shape[-1]


@dataclass(frozen=True)
class LtriSelector(LtriConfig, Selector):
    """Ltri-LLM retrieval as a selector; its fields are `LtriConfig`'s (the token budget is
    the Top-k config's k here, ``budget_tokens`` is used by the streaming context only; the
    layer and head lists are kept as spec text, "2;5", and `config` gives the tuples)."""

    observes_dense_prefill = True  # callers that prefill densely pass the prefill here
    _live: dict = field(default_factory=dict, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        # layer / head lists as spec text ("2;5"), so the selector's spec names them
        # (`topkattn.config.selector_spec` writes scalars only); () stays the default
        for name in _LIST_FIELDS:
            v = getattr(self, name)
            object.__setattr__(self, name, ";".join(map(str, v)) if v else ())

    def config(self) -> LtriConfig:
        return LtriConfig(**{f.name: getattr(self, f.name) for f in fields(LtriConfig)})

    # -- state ----------------------------------------------------------------------------
    def state(self, ctx: SelectionContext, q: torch.Tensor, k: torch.Tensor) -> LtriState:
        """The sequence's shared state (a new one when a layer that already joined the live
        state starts over with an empty store: a new sequence)."""
        if q.shape[0] != 1:
            raise InputError(f"the ltri selector runs one sequence at a time; got a batch of "
                             f"{q.shape[0]}")
        st = ctx.store.get(STORE_KEY)
        if st is not None:
            return st
        layer = ctx.layer_idx or 0
        live = self._live.get("state")
        shape = model_shape(ctx.module, q, k)
        if live is None or layer in live.joined or live.shape != shape:
            live = LtriState(self.config(), *shape, device=k.device)
            live.shape = shape
            self._live["state"] = live
        live.joined.add(layer)
        ctx.store[STORE_KEY] = live
        return live

    # -- prefill --------------------------------------------------------------------------
    @torch.no_grad()
    def observe_prefill(self, q: torch.Tensor, k: torch.Tensor, end: int,
                        ctx: SelectionContext) -> None:
        """q [1, Hq, Lq, D] queries at positions end - Lq .. end - 1; k [1, Hkv, >= end, D]."""
        st = self.state(ctx, q, k)
        layer = ctx.layer_idx or 0
        keys = k[0, :, :end]
        if st.wants_band(layer):
            rows = band_attention(q[0], keys, ctx.scale, self.max_span, q_start=end - q.shape[2],
                                  chunk=self.detect_chunk)
            st.add_band(layer, rows, end - q.shape[2])
            if st.band_ready() >= end:
                st.segment(end, 0, keys)
        elif self.boundary != "triangle" or not st.detect_layers:
            if layer == min(st.joined):
                st.segment(end, 0, keys)
        st.sync(layer, keys)

    # -- selection ------------------------------------------------------------------------
    @torch.no_grad()
    def select(self, q: torch.Tensor, k: torch.Tensor, ctx: SelectionContext) -> torch.Tensor:
        """int64 [1, Hkv, Lq, n]: the retrieved spans' positions and the open tail."""
        st = self.state(ctx, q, k)
        layer = ctx.layer_idx or 0
        Lk = k.shape[2]
        keys = k[0]
        st.begin_pass(Lk, prefill=q.shape[2] > 1)
        idx = st.index
        if idx.covered == 0 and Lk > 0:  # no prefill observed: key-similarity boundaries
            st.segment(Lk, 0, keys)
        st.commit_fixed(Lk, 0)  # generated tokens, in whole spans of max_span
        st.sync(layer, keys)
        tail = torch.arange(idx.covered, Lk, device=k.device)
        budget = max(0, ctx.topk - tail.numel())
        if budget > 0 and idx.represented(layer):
            sel = st.retriever.spans_for(idx, layer, q[0], budget, idx.covered)
            pos = torch.cat([idx.positions(sel.ids, sel.take), tail])
        else:
            pos = tail
        if pos.numel() == 0:
            pos = torch.tensor([Lk - 1], device=k.device)
        Hkv, Lq = k.shape[1], q.shape[2]
        return pos.view(1, 1, 1, -1).expand(1, Hkv, Lq, pos.numel())


__all__ = ["LtriSelector", "STORE_KEY", "model_shape"]


def _register() -> None:
    from topkattn.selectors.registry import SELECTORS, register

    if "ltri" not in SELECTORS:
        register("ltri")(LtriSelector)


_register()
