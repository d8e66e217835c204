"""Exact top-k by q.k: the reference selector (the set the other selectors approximate)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from topkattn.ops.topk.naive import forced_mask, visible_mask
from topkattn.selectors.base import SelectionContext, Selector


def exact_topk_indices(
    scores: torch.Tensor, topk: int, vis: torch.Tensor | None = None
) -> torch.Tensor:
    """Indices of the ``topk`` largest ``scores`` [..., Lk] per row, ties to the lowest position.

    Positions where ``vis`` is False are never chosen (they come back as -1 when a row has
    fewer than ``topk`` visible positions). Returns int64 [..., min(topk, Lk)].
    """
    s = scores.float()
    if vis is not None:
        s = s.masked_fill(~vis, float("-inf"))
    n = min(topk, s.shape[-1])
    vals, idx = torch.sort(s, dim=-1, descending=True, stable=True)
    vals, idx = vals[..., :n], idx[..., :n]
    return torch.where(torch.isfinite(vals), idx, torch.full_like(idx, -1))


@dataclass
class ExactSelector(Selector):
    """Exact top-k of q.k (per query head, or per KV group by summed scores)."""

    causal: bool = True

    def select(self, q: torch.Tensor, k: torch.Tensor, ctx: SelectionContext) -> torch.Tensor:
        B, Hq, Lq, D = q.shape
        Hkv, Lk = k.shape[1], k.shape[2]
        G = Hq // Hkv
        kk = k.float().repeat_interleave(G, dim=1) if G > 1 else k.float()
        scores = torch.matmul(q.float(), kk.transpose(-1, -2)) * ctx.scale
        if ctx.granularity == "kv_group" and G > 1:
            scores = scores.view(B, Hkv, G, Lq, Lk).sum(2)
        vis = visible_mask(Lq, Lk, self.causal, None, q.device)
        return exact_topk_indices(scores, ctx.topk, vis)


__all__ = ["ExactSelector", "exact_topk_indices", "forced_mask"]
