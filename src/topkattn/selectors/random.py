"""``random``: ``topk`` uniformly random visible positions per query row (seeded).

The chance baseline: its expected precision against exact top-k is topk / visible keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from topkattn.ops.topk.naive import visible_mask
from topkattn.selectors._common import check_int
from topkattn.selectors.base import SelectionContext, Selector


@dataclass(frozen=True)
class RandomSelector(Selector):
    """Random visible positions.

    Attributes:
        seed: RNG seed (spec ``random:7``).
        per_head: draw a set per KV head (True) or one set shared by all heads (False).
    """

    seed: int = 0
    per_head: bool = True
    _gen: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # RNG cache

    def __post_init__(self) -> None:
        object.__setattr__(self, "seed", check_int("seed", self.seed, 0))

    def select(self, q: torch.Tensor, k: torch.Tensor, ctx: SelectionContext) -> torch.Tensor:
        """-> int64 [B, Hkv, Lq, min(topk, Lk)] (-1 where a row sees fewer keys)."""
        B, Lq = q.shape[0], q.shape[2]
        Hkv, Lk = k.shape[1], k.shape[2]
        key = str(q.device)
        if key not in self._gen:
            self._gen[key] = torch.Generator(device=q.device).manual_seed(self.seed)
        H = Hkv if self.per_head else 1
        r = torch.rand(B, H, Lq, Lk, generator=self._gen[key], device=q.device)
        r = r.masked_fill(~visible_mask(Lq, Lk, True, None, q.device), -1.0)
        vals, idx = r.topk(min(ctx.topk, Lk), dim=-1)
        idx = torch.where(vals >= 0, idx, torch.full_like(idx, -1))
        return idx if H == Hkv else idx.expand(B, Hkv, Lq, idx.shape[-1])


__all__ = ["RandomSelector"]
