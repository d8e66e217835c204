"""``precision:p``: exact top-k with a share 1-p of the set swapped for random positions.

A controlled-fidelity selector for studying how selection precision drives accuracy: the
expected precision (|selected ∩ exact top-k| / k) is ``p``. Which members may be swapped is part
of the dial (docs/results.md: swapping the single highest-scoring key, usually the attention sink,
is what hurts): the ``protect`` highest-scoring members are never swapped, and ``swap`` says
which of the others go ("random", the "lowest"-scoring or the "highest"-scoring ones).

The number swapped per row is (1-p)·n rounded stochastically (floor plus a Bernoulli draw of the
remainder), so the mean precision equals p exactly, not only up to rounding; replacements are
drawn uniformly from visible positions outside the exact set. The RNG is a seeded
`torch.Generator`, so a run is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from topkattn.ops.topk.naive import topk_indices, visible_mask
from topkattn.selectors._common import check_float, check_int
from topkattn.selectors.exact import ExactSelector
from topkattn.selectors.base import SelectionContext
from topkattn.errors import InputError

SWAP_MODES = ("random", "lowest", "highest")


@dataclass(frozen=True)
class PrecisionSelector(ExactSelector):
    """Exact top-k with a fraction ``1 - p`` of its members replaced by random positions.

    Attributes:
        p: target precision in [0, 1] (1.0 = exact top-k).
        protect: the ``protect`` highest-scoring members of each row are never swapped (the
            swapped count is still (1-p)·n, taken from the others; capped at n - protect).
        swap: which unprotected members are swapped: "random", "lowest" or "highest" scores.
        seed: RNG seed.
    """

    p: float = 1.0
    protect: int = 0
    swap: str = "random"
    seed: int = 0
    _gen: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # RNG cache

    def __post_init__(self) -> None:
        object.__setattr__(self, "p", check_float("precision p", self.p, 0.0, 1.0))
        object.__setattr__(self, "protect", check_int("protect", self.protect, 0))
        object.__setattr__(self, "seed", check_int("seed", self.seed, 0))
        if self.swap not in SWAP_MODES:
            raise InputError(f"swap must be one of {SWAP_MODES}, got {self.swap!r}")

    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._gen:
            self._gen[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._gen[key]

    def select(self, q: torch.Tensor, k: torch.Tensor, ctx: SelectionContext) -> torch.Tensor:
        """q [B, Hq, Lq, D], k [B, Hkv, Lk, D] -> int64 [B, Hq (or Hkv for kv_group), Lq, n]."""
        Lq, Lk = q.shape[2], k.shape[2]
        scores = self.group_scores(q, k, ctx)  # exact q.k, summed per KV group for kv_group
        vis = visible_mask(Lq, Lk, True, None, q.device)
        idx = topk_indices(scores, ctx.topk, vis)  # the exact set, ascending positions
        if self.p >= 1.0:
            return idx
        # best first (stable: equal scores keep the lower position first), for protect / swap
        s = scores.gather(-1, idx.clamp(min=0)).masked_fill(idx < 0, float("-inf"))
        idx = idx.gather(-1, s.argsort(dim=-1, descending=True, stable=True))
        return self.swap_members(idx, vis.expand(*idx.shape[:-1], Lk))

    def swap_members(self, idx: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        """Swap (1-p) of each row of ``idx`` [..., n] (best first, -1 = padding) for random
        visible positions outside the row; ``vis`` bool [..., Lk]. Returns [..., n]."""
        gen = self._generator(idx.device)
        shape = idx.shape
        n, Lk = shape[-1], vis.shape[-1]
        idx = idx.reshape(-1, n)
        vis = vis.reshape(-1, Lk)
        R = idx.shape[0]
        valid = idx >= 0
        n_valid = valid.sum(-1)  # [R]
        rank = torch.arange(n, device=idx.device).expand(R, n)
        swappable = valid & (rank >= self.protect)
        # number to swap: stochastic rounding of (1-p) * n_valid, capped by what may be swapped
        want = (1.0 - self.p) * n_valid.float()
        m = want.floor() + (torch.rand(R, generator=gen, device=idx.device) < want.frac()).float()
        m = torch.minimum(m.long(), swappable.sum(-1))
        # choose which members: order the swappable ones by a key, take the first m
        if self.swap == "random":
            key = torch.rand(R, n, generator=gen, device=idx.device)
        elif self.swap == "lowest":
            key = -rank.float()
        else:
            key = rank.float()
        key = key.masked_fill(~swappable, float("inf"))
        order = key.argsort(dim=-1)
        pos_in_order = order.argsort(dim=-1)  # rank of each member in the swap order
        swap = pos_in_order < m.unsqueeze(-1)
        # replacements: random visible positions outside the current set
        in_set = torch.zeros(R, Lk + 1, dtype=torch.bool, device=idx.device)
        in_set.scatter_(-1, torch.where(valid, idx, Lk), True)
        cand = vis & ~in_set[:, :Lk]
        r = torch.rand(R, Lk, generator=gen, device=idx.device).masked_fill(~cand, -1.0)
        mmax = int(m.max()) if R else 0
        if mmax == 0:
            return idx.view(shape)
        rv, ri = r.topk(min(mmax, Lk), dim=-1)  # [R, mmax]
        ri = torch.where(rv >= 0, ri, torch.full_like(ri, -1))  # -1 when too few candidates
        slot = (swap.long().cumsum(-1) - 1).clamp(min=0, max=ri.shape[-1] - 1)
        repl = ri.gather(-1, slot)
        out = torch.where(swap & (repl >= 0), repl, idx)
        return out.view(shape)


__all__ = ["PrecisionSelector", "SWAP_MODES"]
