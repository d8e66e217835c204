"""The selector interface: given queries and keys, which key positions each query attends to.

A selector is a small validated dataclass with one method, `select`; its positions are fed to
`topk_attention(..., indices=...)`. Most selectors rank keys by a score: they subclass
`ScoreSelector` and write only `score()`; the base expands KV heads to query heads, sums each
KV group's scores for ``granularity="kv_group"``, hides keys a query may not see and takes the
top-k with the reference's tie rule (`topkattn.ops.topk.naive.topk_indices`: lowest position
wins). Window and random selection are not score-based and implement `select` directly.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import torch

from topkattn.errors import InputError
from topkattn.ops.topk.naive import topk_indices, visible_mask


@dataclass
class SelectionContext:
    """What a selector may know besides q and k.

    Attributes:
        layer_idx: the decoder layer (None outside a model).
        topk: keys to select per query (already resolved from k or k_ratio).
        granularity: "query_head" (indices per query head) or "kv_group" (per KV head).
        scale: the attention score scale.
        phase: "decode" or "prefill".
        store: persistent per-layer state (e.g. indexer keys, span index); the integration
            keeps one dict per layer for the life of a `sparsify` block and clears it when a
            new sequence starts (a prefill with an empty cache).
        module: the attention module (selectors that need hidden states read them from the
            hooks they installed), or None.
        hidden_states: the layer's input hidden states for these queries [B, Lq, hidden] when
            the integration captured them, else None.
    """

    layer_idx: int | None = None
    topk: int = 64
    granularity: str = "query_head"
    scale: float = 1.0
    phase: str = "decode"
    store: dict = field(default_factory=dict)
    module: Any = None
    hidden_states: torch.Tensor | None = None


def expand_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, H, ...] -> [B, heads, ...] (each of the H heads repeated heads // H times, the
    grouped-query layout of transformers' ``repeat_kv``); t itself when H == heads."""
    H = t.shape[1]
    if heads % H:
        raise InputError(f"{heads} query heads are not a multiple of {H} key heads")
    return t if H == heads else t.repeat_interleave(heads // H, dim=1)


class Selector(abc.ABC):
    """Chooses the key positions each query attends to."""

    #: True when the selector needs the layer's input hidden states (ctx.hidden_states).
    needs_hidden_states: bool = False

    @abc.abstractmethod
    def select(self, q: torch.Tensor, k: torch.Tensor, ctx: SelectionContext) -> torch.Tensor:
        """Selected positions.

        Args:
            q: [B, Hq, Lq, D] queries (the last Lq of the Lk key positions).
            k: [B, Hkv, Lk, D] all cached keys of this layer.
            ctx: layer, k, phase and persistent state.

        Returns:
            int64 indices [B, Hq or Hkv, Lq, n] (n >= 1; entries < 0 are padding). Positions
            a query may not see are dropped by the operator, so a selector need not mask them.
        """

    def range_indices(self, q: torch.Tensor, k: torch.Tensor, starts: torch.Tensor,
                      ends: torch.Tensor, ctx: SelectionContext) -> torch.Tensor | None:
        """Optional fast decode path over key ranges (one query per sequence, a cache whose
        sequence b sees positions [starts[b], ends[b]), int32 [B] on the device): int32
        indices [B, Hkv, 1, n], each row distinct and inside its range (-1: padding), computed
        with no host synchronisation while a CUDA graph is captured or `torch.compile`
        traces. A captured call's host-side work runs once, at the capture: per-step state
        kept on the host belongs in `prepare_range_graph`, which runs before every step.
        None (the default): the integration uses `select` with a mask instead."""
        return None

    @property
    def has_range_path(self) -> bool:
        """Whether `range_indices` is overridden (a graph-safe decode path)."""
        return type(self).range_indices is not Selector.range_indices

    def prepare_range_graph(self, q: torch.Tensor, k: torch.Tensor,
                            ctx: SelectionContext) -> tuple:
        """Called outside any capture before a decode step whose `range_indices` may be
        captured as a CUDA graph over a whole cache buffer k [B, Hkv, cap, D] or replayed
        (`integrations.decode_graphs`): make the per-sequence state that `range_indices`
        reads and writes ready for cap positions, so that the captured call changes nothing
        on the host, and return what identifies that state's device tensors (addresses,
        shapes): a graph is replayed only while it is the same. Default: nothing to prepare."""
        return ()

    def observe_prefill(self, q: torch.Tensor, k: torch.Tensor, end: int,
                        ctx: SelectionContext) -> None:
        """Called by the integration at every prefill over key ranges, outside any graph: the
        chunk's queries q [B, Hq, Lq, D] and the layer's whole cache k [B, Hkv, cap, D] whose
        positions [0, end) are now filled. Selectors with a `range_indices` path index those
        positions here. Default: nothing."""


class ScoreSelector(Selector):
    """A selector that ranks keys by a score: subclasses implement `score` only."""

    @abc.abstractmethod
    def score(self, q: torch.Tensor, k: torch.Tensor, ctx: SelectionContext) -> torch.Tensor:
        """fp32 scores [B, H, Lq, Lk] of every cached key for every query, higher = keep.

        H is the number of query heads Hq (one ranking per query head; for ``kv_group`` the
        base sums each KV head's G query heads), the number of KV heads Hkv (one ranking per
        KV group) or 1 (one ranking shared by all heads). Use `expand_heads` to bring
        per-KV-head tensors to the query heads. Keys a query may not see need no masking."""

    def group_scores(self, q: torch.Tensor, k: torch.Tensor, ctx: SelectionContext
                     ) -> torch.Tensor:
        """`score` with each KV group's query heads summed for ``kv_group``: [B, H', Lq, Lk]
        with H' = Hkv for kv_group (when H = Hq), else H."""
        s = self.score(q, k, ctx).float()
        B, Hq, Lq = q.shape[:3]
        Hkv, Lk = k.shape[1], k.shape[2]
        if s.dim() != 4 or s.shape[0] != B or s.shape[2:] != (Lq, Lk) or s.shape[1] not in (1, Hkv, Hq):
            raise InputError(f"{type(self).__name__}.score must return [B={B}, H in (1, {Hkv}, "
                             f"{Hq}), Lq={Lq}, Lk={Lk}]; got {tuple(s.shape)}")
        G = Hq // Hkv
        if ctx.granularity == "kv_group" and G > 1 and s.shape[1] == Hq:
            s = s.view(B, Hkv, G, Lq, Lk).sum(2)
        return s

    def select(self, q: torch.Tensor, k: torch.Tensor, ctx: SelectionContext) -> torch.Tensor:
        """int64 [B, H', Lq, min(topk, Lk)]: the top-k visible keys of `group_scores` (ties:
        lowest position); a shared ranking (H = 1) is repeated over the KV heads."""
        Lq, Lk, Hkv = q.shape[2], k.shape[2], k.shape[1]
        idx = topk_indices(self.group_scores(q, k, ctx), ctx.topk,
                           visible_mask(Lq, Lk, True, None, q.device))
        return idx.expand(idx.shape[0], Hkv, *idx.shape[2:]) if idx.shape[1] == 1 else idx
