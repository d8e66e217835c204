"""Collaborative retrieval (Ltri-LLM, section 3.3): retrieval heads vote for spans.

A few *retrieval heads* (the KV heads of ``retrieval_layers``, or ``retrieval_heads`` of
them) each rank the spans of the index for the current query and vote for the spans they
would retrieve within the token budget; spans are then taken by votes (ties: by the summed
per-head standardised score) until the budget is filled, and every layer attends to that one
set. Per-layer retrieval (``retrieval="per_layer"``) lets each layer's own KV heads vote.

Order within one forward pass (a decode step or a prefill chunk), `Retriever`:
- layers up to the last retrieval layer use the previous step's set (the first step after
  a prefill, which has none, lets each of them vote for itself: per-layer retrieval);
- the retrieval layers cast this step's votes as they run; after the last of them the set
  is decided, and every later layer uses it (the two-tier cache starts copying its spans to
  the device then, overlapped with the layers in between);
- with ``refresh_every = m`` the set is decided every m decode steps and kept in between
  (every prefill chunk decides its own).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from topkattn.ltri.config import LtriConfig
from topkattn.ltri.index import SpanIndex, fill_budget


def head_votes(scores: torch.Tensor, lengths: torch.Tensor, budget: int,
               exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Votes of each head for the spans it would retrieve.

    scores fp32 [h, S]; lengths [S]; exclude bool [S] (never voted for). Returns
    (votes [S]: how many heads would retrieve each span within ``budget`` tokens,
    strength [S]: the sum over heads of the standardised scores, the tie-break)."""
    h, S = scores.shape
    s = scores if exclude is None else scores.masked_fill(exclude[None], float("-inf"))
    order = s.argsort(dim=1, descending=True, stable=True)  # [h, S]
    ln = lengths[order]
    before = ln.cumsum(1) - ln
    chosen = before < budget
    if exclude is not None:
        chosen &= ~exclude[order]
    votes = torch.zeros(h, S, device=scores.device).scatter_(1, order, chosen.float()).sum(0)
    fin = torch.isfinite(s)
    mean = torch.where(fin, s, 0).sum(1, keepdim=True) / fin.sum(1, keepdim=True).clamp(min=1)
    std = torch.where(fin, (s - mean) ** 2, 0).sum(1, keepdim=True).div(
        fin.sum(1, keepdim=True).clamp(min=1)).sqrt().clamp(min=1e-6)
    strength = torch.where(fin, (s - mean) / std, 0).sum(0)
    return votes, strength


def decide(votes: torch.Tensor, strength: torch.Tensor, lengths: torch.Tensor, budget: int,
           exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Spans by votes (ties: strength), filled up to ``budget``: (ids [n], tokens [n])."""
    key = votes * (strength.abs().max() * 2 + 1) + strength  # votes first, then strength
    if exclude is not None:
        key = key.masked_fill(exclude, float("-inf"))
    order = key.argsort(descending=True, stable=True)
    if exclude is not None:
        order = order[~exclude[order]]
    return fill_budget(order, lengths, budget)


@dataclass
class Selection:
    """A retrieval result: span ids and the tokens taken of each; ``horizon``: only spans
    ending at or before it were candidates (positions from it on are attended locally);
    ``step``: the pass it was decided in."""

    ids: torch.Tensor
    take: torch.Tensor
    step: int
    horizon: int


@dataclass
class Retriever:
    """Per-sequence retrieval state over one forward pass after another (see module doc).

    Call `begin` once per forward pass (before its first layer), then `spans_for` at every
    layer in order."""

    cfg: LtriConfig
    n_layers: int
    layers: tuple[int, ...] = field(init=False)
    step: int = 0
    current: Selection | None = None  # decided in this pass
    previous: Selection | None = None  # the last one decided before this pass
    _ballot: list = field(default_factory=list)
    _own: dict = field(default_factory=dict)
    _prev_own: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.layers = self.cfg.layers_for_retrieval(self.n_layers)

    @property
    def last_layer(self) -> int:
        return self.layers[-1]

    def begin(self, force_refresh: bool = False) -> None:
        """A new forward pass starts (``force_refresh``: decide a new set in this pass
        whatever ``refresh_every`` says: prefill chunks do)."""
        self._force = force_refresh
        if self.current is not None:
            self.previous = self.current
        if self._own:
            self._prev_own = self._own
        self.current = None
        self._ballot = []
        self._own = {}
        self.step += 1

    def refreshing(self) -> bool:
        """Whether this pass decides a new set (every ``refresh_every`` passes, or when there
        is none yet)."""
        return (getattr(self, "_force", False) or self.previous is None
                or (self.step - 1) % self.cfg.refresh_every == 0)

    def _vote(self, index: SpanIndex, layer: int, q: torch.Tensor, budget: int, S: int,
              exclude: torch.Tensor | None, heads: tuple[int, ...]):
        s = index.scores(layer, q, self.cfg.represent, heads)[:, :S]
        return head_votes(s, index.lengths[:S], budget, exclude)

    def _own_vote(self, index, layer, q, budget, S, ex, horizon) -> Selection:
        v, st = self._vote(index, layer, q, budget, S, ex, ())
        return Selection(*decide(v, st, index.lengths[:S], budget, ex), self.step, horizon)

    def spans_for(self, index: SpanIndex, layer: int, q: torch.Tensor, budget: int,
                  horizon: int, exclude: torch.Tensor | None = None) -> Selection:
        """The spans ``layer`` attends to in this pass; q [Hq, Lq, D] (or [Hq, D]) is its
        query (the chunk's queries in prefill). Candidates: the spans ending at or before
        ``horizon`` (the same in every layer of a pass), but those ``exclude`` [S] marks."""
        S = min(index.count_upto(horizon), index.represented(layer))
        ex = None if exclude is None else exclude[:S]
        if self.cfg.retrieval == "per_layer":
            if not self.refreshing() and layer in self._prev_own:
                self._own[layer] = self._prev_own[layer]
                return self._own[layer]
            sel = self._own_vote(index, layer, q, budget, S, ex, horizon)
            self._own[layer] = sel
            if index.dynamic:
                index.record_votes(sel.ids)
            return sel
        if not self.refreshing():
            return self.previous
        if layer in self.layers:
            self._ballot.append(self._vote(index, layer, q, budget, S, ex,
                                           self.cfg.retrieval_heads))
            if layer == self.last_layer:
                v = torch.stack([b[0] for b in self._ballot]).sum(0)
                st = torch.stack([b[1] for b in self._ballot]).sum(0)
                self.current = Selection(*decide(v, st, index.lengths[:S], budget, ex),
                                         self.step, horizon)
                if index.dynamic:
                    index.record_votes(self.current.ids)
        if layer >= self.last_layer and self.current is not None:
            return self.current
        if self.previous is not None:
            return self.previous
        # the first pass: no earlier set; this layer's own heads vote for it
        return self._own_vote(index, layer, q, budget, S, ex, horizon)


__all__ = ["Retriever", "Selection", "decide", "head_votes"]
