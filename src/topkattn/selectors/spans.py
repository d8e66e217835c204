"""``spans``: span retrieval after Ltri-LLM (Tang et al., arXiv 2412.04757).

Ltri-LLM observes that attention maps are made of local "triangles": runs of consecutive
tokens that later queries attend to together, i.e. semantic spans. It splits the KV cache into
such spans, keeps one index vector per span and retrieves whole spans for a query.

This version keeps the idea and drops the engineering (offline index, retrieval-head voting):
- Span boundaries are placed where consecutive keys stop resembling each other (the drop in
  key similarity is the cheap proxy for where a triangle ends): starting at position a, the
  next span starts at the position j in [a + min_span, a + max_span] whose key has the lowest
  cosine similarity to its predecessor (keys averaged over KV heads) - a 1-D non-maximum
  suppression of boundary strength. ``boundary="fixed"`` uses spans of exactly ``max_span``.
- Each span is represented by its mean key (``represent="mean"``, the static index vector) or
  by its per-channel key bounds (``represent="bound"``, as in Quest) per KV head.
- A query scores spans with its own q, and whole top spans are retrieved until ``topk``
  tokens (the last one may be cut). The open span at the end of the cache (the local context,
  which Ltri-LLM keeps in memory) is always retrieved when ``keep_last=True``, and so is the
  first span (the initial tokens / attention sink, also kept resident by Ltri-LLM's streaming
  memory) when ``keep_first=True``.
Span boundaries of the cached prefix are kept in ``ctx.store`` and extended for new tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from topkattn.selectors._common import check_int, fingerprint
from topkattn.selectors.base import ScoreSelector, SelectionContext, expand_heads
from topkattn.selectors.quest import page_upper_bound
from topkattn.errors import InputError

BOUNDARIES = ("similarity", "fixed")
SCORES = ("mean", "bound")


def adjacent_similarity(k: torch.Tensor) -> torch.Tensor:
    """cos(k_j, k_{j-1}) of keys concatenated over heads: k [B, H, L, D] -> [B, L] (sim[:, 0]
    is 1)."""
    B, H, L, D = k.shape
    flat = torch.nn.functional.normalize(k.float().transpose(1, 2).reshape(B, L, H * D), dim=-1)
    sim = torch.ones(B, L, device=k.device)
    if L > 1:
        sim[:, 1:] = (flat[:, 1:] * flat[:, :-1]).sum(-1)
    return sim


def segment(sim: torch.Tensor, start: int, L: int, min_span: int, max_span: int,
            fixed: bool = False) -> list[int]:
    """Span starts from ``start`` to ``L`` (a 1-D list); sim [L] as from `adjacent_similarity`.

    The last span is "open" (it may grow when tokens arrive) when it is shorter than max_span.
    """
    starts: list[int] = []
    a = start
    simc = sim.cpu()
    while a < L:
        starts.append(a)
        if L - a <= max_span:
            break
        if fixed:
            a = a + max_span
            continue
        lo, hi = a + min_span, a + max_span  # hi < L here
        a = lo + int(simc[lo : hi + 1].argmin())
    return starts


@dataclass(frozen=True)
class SpanSelector(ScoreSelector):
    """Ltri-LLM-style span retrieval.

    Attributes:
        max_span: longest span in tokens (spec ``spans:32``); also the fixed span size.
        min_span: shortest span (similarity boundaries only).
        boundary: "similarity" (boundaries where key similarity drops) or "fixed".
        represent: span representative: "mean" key or key "bound" (per-channel min/max).
        keep_last: always retrieve the open span at the end of the cache.
        keep_first: always retrieve the first span (initial tokens, the attention sink).
    """

    max_span: int = 32
    min_span: int = 4
    boundary: str = "similarity"
    represent: str = "mean"
    keep_last: bool = True
    keep_first: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_span", check_int("max_span", self.max_span, 1))
        object.__setattr__(self, "min_span", check_int("min_span", self.min_span, 1))
        if self.min_span > self.max_span:
            raise InputError(
                f"min_span must be <= max_span, got min_span={self.min_span}, "
                f"max_span={self.max_span}"
            )
        if self.boundary not in BOUNDARIES:
            raise InputError(f"boundary must be one of {BOUNDARIES}, got {self.boundary!r}")
        if self.represent not in SCORES:
            raise InputError(f"represent must be one of {SCORES}, got {self.represent!r}")

    def span_ids(self, k: torch.Tensor, store: dict) -> torch.Tensor:
        """Span index of every cached position: k [B, Hkv, Lk, D] -> int64 [B, Lk].

        Starts of spans whose boundary decision only read still-valid keys are reused.
        """
        B, Hkv, Lk, D = k.shape
        fp_now = fingerprint(k)  # [B, Lk, 4]
        st = store.get("spans")
        sim = None
        ids = []
        new_state = {"fp": fp_now, "starts": []}
        nv = 0
        if st is not None and st["fp"].shape[0] == B:
            n = min(st["fp"].shape[1], Lk)
            same = (st["fp"][:, :n] == fp_now[:, :n]).all(-1).all(0)
            bad = (~same).nonzero()
            nv = n if bad.numel() == 0 else int(bad[0])
        for b in range(B):
            old = st["starts"][b] if (st is not None and nv > 0) else []
            # keep starts whose successor was decided from keys < nv; resume from the next one
            keep = [s for s in old if s + self.max_span < nv]
            # (the successor of the last kept start is valid too; an old last span is open)
            resume = old[len(keep)] if len(keep) < len(old) else 0
            keep = keep if len(keep) < len(old) else []
            if sim is None and self.boundary == "similarity":
                sim = adjacent_similarity(k)
            starts = keep + segment(sim[b] if sim is not None else torch.ones(Lk), resume, Lk,
                                    self.min_span, self.max_span, self.boundary == "fixed")
            new_state["starts"].append(starts)
            marks = torch.zeros(Lk, dtype=torch.long, device=k.device)
            marks[torch.tensor(starts[1:], dtype=torch.long, device=k.device)] = 1
            ids.append(marks.cumsum(0))
        store["spans"] = new_state
        return torch.stack(ids)

    @torch.no_grad()
    def score(self, q: torch.Tensor, k: torch.Tensor, ctx: SelectionContext) -> torch.Tensor:
        """q [B, Hq, Lq, D], k [B, Hkv, Lk, D] -> [B, Hq, Lq, Lk]: every token scored by its
        span's score (kept spans score the fp32 maximum)."""
        B, Hq, Lq, D = q.shape
        Hkv, Lk = k.shape[1], k.shape[2]
        sid = self.span_ids(k, ctx.store)  # [B, Lk]
        S = int(sid.max()) + 1
        idx = sid[:, None, :, None].expand(B, Hkv, Lk, D)
        kf = k.float()
        if self.represent == "mean":
            tot = kf.new_zeros(B, Hkv, S, D).scatter_add_(2, idx, kf)
            cnt = torch.zeros(B, S, device=k.device).scatter_add_(1, sid, torch.ones_like(sid, dtype=torch.float))
            rep = tot / cnt.clamp(min=1)[:, None, :, None]  # [B, Hkv, S, D]
            span_score = torch.matmul(q.float(), expand_heads(rep, Hq).transpose(-1, -2))  # [B, Hq, Lq, S]
        else:
            kmin = kf.new_full((B, Hkv, S, D), float("inf")).scatter_reduce(2, idx, kf, "amin")
            kmax = kf.new_full((B, Hkv, S, D), float("-inf")).scatter_reduce(2, idx, kf, "amax")
            span_score = page_upper_bound(q, expand_heads(kmin, Hq), expand_heads(kmax, Hq))
        if self.keep_last or self.keep_first:
            top = torch.finfo(torch.float32).max
            if self.keep_first:
                span_score[..., 0] = top
            if self.keep_last:
                span_score[..., S - 1] = top
        return span_score.gather(-1, sid[:, None, None, :].expand(B, Hq, Lq, Lk))


__all__ = ["BOUNDARIES", "SCORES", "SpanSelector", "adjacent_similarity", "segment"]
