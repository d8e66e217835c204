"""``window``: attention sinks plus the most recent positions (StreamingLLM, arXiv 2309.17453).

The selected set of a query at position t is the first ``sink`` positions and the
``topk - sink`` most recent ones up to t. It ignores q and k entirely: a content-blind baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from topkattn.selectors._common import check_int
from topkattn.selectors.base import SelectionContext, Selector


@dataclass(frozen=True)
class WindowSelector(Selector):
    """Sink tokens + recent window.

    Attributes:
        sink: initial positions always kept (counted within ``topk``; spec ``window:4``).
    """

    sink: int = 4

    def __post_init__(self) -> None:
        object.__setattr__(self, "sink", check_int("sink", self.sink, 0))

    def select(self, q: torch.Tensor, k: torch.Tensor, ctx: SelectionContext) -> torch.Tensor:
        """-> int64 [B, Hkv, Lq, n] with n = topk (duplicates and positions < 0 are -1)."""
        B, Lq = q.shape[0], q.shape[2]
        Hkv, Lk = k.shape[1], k.shape[2]
        n = max(1, ctx.topk)
        sink = min(self.sink, n)
        recent = n - sink
        qpos = torch.arange(Lk - Lq, Lk, device=q.device).unsqueeze(-1)  # [Lq, 1]
        rec = qpos - torch.arange(recent, device=q.device).unsqueeze(0)  # [Lq, recent]
        snk = torch.arange(sink, device=q.device).expand(Lq, sink)
        # sink positions that also fall in the recent window, or beyond the query, are dropped
        snk = torch.where((snk <= qpos) & (snk <= qpos - recent), snk, torch.full_like(snk, -1))
        idx = torch.cat([snk, rec.clamp(min=-1)], dim=-1)  # [Lq, n]
        return idx[None, None].expand(B, Hkv, Lq, n).long()

    def range_indices(self, q: torch.Tensor, k: torch.Tensor, starts: torch.Tensor,
                      ends: torch.Tensor, ctx: SelectionContext) -> torch.Tensor | None:
        """int32 [B, Hkv, 1, n]: per sequence the first ``sink`` keys of its range [starts,
        ends) and the most recent ones before ends (-1: padding), on the device. The sink
        counts from each row's first visible key, so a left-padded row keeps its own."""
        if q.shape[2] != 1:
            return None
        B, Hkv, cap = k.shape[0], k.shape[1], k.shape[2]
        n = max(1, min(ctx.topk, cap))
        sink = min(self.sink, n)
        recent = n - sink
        lo, hi = starts.long().view(B, 1), ends.long().view(B, 1)
        rec = hi - 1 - torch.arange(recent, device=k.device)  # [B, recent]
        snk = lo + torch.arange(sink, device=k.device)  # [B, sink]
        snk = torch.where(snk < hi - recent, snk, -1)  # not in the recent window, nor past it
        rec = torch.where(rec >= lo, rec, -1)
        idx = torch.cat([snk, rec], dim=-1).to(torch.int32)
        return idx.view(B, 1, 1, n).expand(B, Hkv, 1, n)


__all__ = ["WindowSelector"]
