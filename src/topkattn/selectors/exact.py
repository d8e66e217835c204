"""Exact top-k by q.k: the reference selector (the set the other selectors approximate)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from topkattn.selectors.base import ScoreSelector, SelectionContext, expand_heads


@dataclass(frozen=True)
class ExactSelector(ScoreSelector):
    """Exact top-k of q.k (per query head, or per KV group by summed scores). Inside
    `sparsify` this is the kernels' own selection; as an object it is the oracle of the
    fidelity measurements."""

    def score(self, q: torch.Tensor, k: torch.Tensor, ctx: SelectionContext) -> torch.Tensor:
        """q [B, Hq, Lq, D], k [B, Hkv, Lk, D] -> q.k * scale [B, Hq, Lq, Lk] (fp32)."""
        kk = expand_heads(k.float(), q.shape[1])
        return torch.matmul(q.float(), kk.transpose(-1, -2)) * ctx.scale


__all__ = ["ExactSelector"]
