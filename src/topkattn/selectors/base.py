"""The selector interface: given queries and keys, which key positions each query attends to.

A selector is a small dataclass with one method, `select`. Exact top-k is one selector;
approximate ones (Lightning Indexer, Quest, Ltri-LLM spans, window, random) replace it and
their chosen positions are fed to `topk_attention(..., indices=...)`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import torch


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
