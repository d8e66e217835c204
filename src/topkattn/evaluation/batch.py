"""Batched greedy decoding: B prompts of one task and length per forward, answers per row.

`decode_rows` is `topkattn.generation.decode_branches` for several prompts: the prompts are
left padded to the longest (`pad_left`; ``attention_mask`` 0 on the padding, position ids
counted from the mask as transformers' ``generate`` does), all but their last token are
prefilled densely once, and each setting decodes greedily from its own copy of that cache
inside ``sparsify`` (`greedy_decode_rows`). Every row stops on its own EOS or budget; the
tokens fed to a finished row while the others go on are ignored. The Top-k attention reads
each row's key range [lo, hi) from the mask (`topkattn.integrations.key_ranges`), so a row
attends exactly the keys it would alone.

A step decides sparse or dense, and k, once for the whole batch: from the cache length for an
absolute k, from the longest row's visible keys for k_ratio and min_context. So that each row
decodes as it would alone, rows whose decisions would differ never share a step: an absolute
k groups the rows up front (`row_groups`, each group prefilled with its own padding), k_ratio
and min_context split a batch into parts while decoding (`greedy_decode_rows`). A selector
with a key-range path (`Selector.range_indices`: window, Lightning) selects within each row's
own keys, so it batches when the prefill stays dense. A setting that cannot batch at all (any
other selector, Ltri, a kvpress baseline) or that raises on a batch decodes one row at a
time, with a one-line note on stderr (`note`). Answers therefore equal those of batch 1, up
to floating-point rounding.
"""

from __future__ import annotations

import copy
import inspect
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator

from topkattn.config import TopKConfig
from topkattn.errors import note_once as note
from topkattn.generation import Branch, _sparsify, decode_branches, decode_one

if TYPE_CHECKING:
    import torch

@dataclass
class PaddedPrompts:
    """Prompts tokenized and left padded to one length P.

    Attributes:
        ids: int64 [B, P] token ids (padding first).
        mask: int64 [B, P], 1 on tokens, 0 on padding.
        lengths: each row's own token count.
    """

    ids: "torch.Tensor"
    mask: "torch.Tensor"
    lengths: list[int]

    @property
    def positions(self):
        """int64 [B, P] position ids: tokens count from 0, padding holds 1 (as ``generate``)."""
        pos = self.mask.cumsum(-1) - 1
        return pos.masked_fill(self.mask == 0, 1)


def tokenize(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Token ids of each prompt, without special tokens (as the batch-1 path)."""
    return [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]


def pad_left(tokenizer, rows: list[list[int]], device) -> PaddedPrompts:
    """Left pad token id ``rows`` (`tokenize`) with the tokenizer's pad (else EOS) token."""
    import torch

    P = max(len(r) for r in rows)
    pad = getattr(tokenizer, "pad_token_id", None)
    pad = pad if pad is not None else (getattr(tokenizer, "eos_token_id", None) or 0)
    ids = torch.full((len(rows), P), int(pad), dtype=torch.long)
    mask = torch.zeros((len(rows), P), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, P - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[b, P - len(r):] = 1
    return PaddedPrompts(ids.to(device), mask.to(device), [len(r) for r in rows])


def prefill_rows(model, batch: PaddedPrompts):
    """Dense prefill of all but the last column of ``batch`` ([B, P-1]); returns the cache.
    Only the last position's logits are computed where the model allows it."""
    import torch

    kw = {}
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        kw["logits_to_keep"] = 1
    with torch.no_grad():
        return model(input_ids=batch.ids[:, :-1], attention_mask=batch.mask[:, :-1],
                     position_ids=batch.positions[:, :-1], use_cache=True,
                     **kw).past_key_values


@dataclass
class _Part:
    """Rows decoded together: global row indices, their cache, the next input tokens [b, 1],
    the attention mask [b, T] (T: keys after this step) and positions [b, 1]."""

    rows: list[int]
    cache: object
    tok: "torch.Tensor"
    mask: "torch.Tensor"
    pos: "torch.Tensor"

    def select(self, rows: list[int], copy_cache: bool) -> "_Part":
        """The part of ``rows`` (a subset of ``self.rows``): its cache rows
        (``Cache.batch_select_indices``, on a copy where ``copy_cache``)."""
        import torch

        idx = torch.tensor([self.rows.index(r) for r in rows], device=self.tok.device)
        cache = copy.deepcopy(self.cache) if copy_cache else self.cache
        cache.batch_select_indices(idx)
        return _Part(rows, cache, self.tok[idx], self.mask[idx], self.pos[idx])


def greedy_decode_rows(model, batch: PaddedPrompts, cache, max_new_tokens: int,
                       eos: set[int], decide: Callable[[int], tuple] | None = None
                       ) -> list[list[int]]:
    """Greedy decoding of B rows from ``cache`` (the prefill of ``batch.ids[:, :-1]``): feed
    the last prompt column [B, 1], then each row's argmax; the mask grows by one column of
    ones per step and each row's position by one. A row ends at its first EOS token (not
    returned) or after ``max_new_tokens``; decoding stops when every row has ended.

    ``decide``: the decision of a step that sees a given number of keys
    (`TopKConfig.decode_decision`), where the batch decides from its longest row's visible
    keys (k_ratio, min_context). Before a step whose rows would decide differently, the rows
    split into parts of equal decisions (each with its own rows of the cache; rows already
    ended are dropped), so every row decodes as it would alone. None: one part throughout.

    Returns the generated token ids of each row.
    """
    import torch

    B = batch.ids.shape[0]
    out: list[list[int]] = [[] for _ in range(B)]
    live = [True] * B
    parts = [_Part(list(range(B)), cache, batch.ids[:, -1:], batch.mask,
                   batch.positions[:, -1:])]
    for i in range(max_new_tokens):
        if decide is not None:
            parts = [q for p in parts for q in _split(p, decide, batch.lengths, i, live)]
        for p in parts:
            step = model(input_ids=p.tok, attention_mask=p.mask, position_ids=p.pos,
                         past_key_values=p.cache, use_cache=True)
            p.cache = step.past_key_values
            nxt = step.logits[:, -1].argmax(-1)
            for r, t in zip(p.rows, nxt.tolist()):
                if live[r]:
                    if t in eos:
                        live[r] = False
                    else:
                        out[r].append(t)
            ones = torch.ones_like(p.pos)
            p.tok, p.mask, p.pos = nxt[:, None], torch.cat([p.mask, ones], dim=1), p.pos + 1
        parts = [p for p in parts if any(live[r] for r in p.rows)]
        if not parts:
            break
    return out


def _split(part: _Part, decide, lengths: list[int], step: int, live: list[bool]) -> list[_Part]:
    """``part`` as it is when all its rows decide alike at ``step`` (row r sees
    ``lengths[r] + step`` keys), else its live rows in parts of equal decisions."""
    if len({decide(lengths[r] + step) for r in part.rows}) == 1:
        return [part]
    classes: dict[tuple, list[int]] = {}
    for r in part.rows:
        if live[r]:
            classes.setdefault(decide(lengths[r] + step), []).append(r)
    groups = list(classes.values())
    return [part.select(rows, copy_cache=j < len(groups) - 1) for j, rows in enumerate(groups)]


def blocker(topk) -> str | None:
    """Why setting ``topk`` (None: full attention, a `TopKConfig`, or a kvpress `PressSpec`)
    never decodes batched, or None when it may."""
    if topk is None:
        return None
    if not isinstance(topk, TopKConfig):
        return "kvpress baselines compress and decode one sample at a time"
    sel = topk.selector
    if sel is None or type(sel).__name__ == "ExactSelector":
        return None
    if getattr(sel, "has_range_path", False) and "prefill" not in topk.phases:
        return None  # its decode selection runs over each row's own key range
    return (f"selector {type(sel).__name__} decodes one sample at a time (its selection "
            "does not know the other rows' padding)")


def decides_by_rows(topk: TopKConfig | None) -> bool:
    """Whether a batch step of ``topk`` decides from its longest row's visible keys (k_ratio
    or min_context) rather than from the cache length (an absolute k)."""
    return topk is not None and not topk.dense and (topk.k_ratio is not None
                                                     or bool(topk.min_context))


def row_groups(topk: TopKConfig | None, lengths: list[int], steps: int) -> list[list[int]]:
    """Rows (indices into ``lengths``, the prompts' token counts) prefilled and decoded
    together, each group left padded to its own longest row.

    Row b's step i sees ``lengths[b] + i`` keys. An absolute k decides from the cache length,
    the group's longest row: rows whose decisions (`TopKConfig.decode_decision`) agree at
    every one of ``steps`` steps form one group. Settings that decide from the rows
    (`decides_by_rows`) take every row and split while decoding (`greedy_decode_rows`). With
    ``sink`` only rows of equal length go together (no padding): the operator, kernels and
    reference alike, counts sink positions from key slot 0, which in a left-padded row is
    padding (and `sparsify` refuses such a batch). Groups come in the order of their first
    row.
    """
    if topk is None or topk.dense:
        return [list(range(len(lengths)))]
    groups: dict[tuple, list[int]] = {}
    for b, n in enumerate(lengths):
        key: tuple = (() if decides_by_rows(topk) else
                      tuple(topk.decode_decision(n + i) for i in range(steps)))
        if topk.sink:
            key = (n, key)
        groups.setdefault(key, []).append(b)
    return list(groups.values())


#: a piece of `decode_rows`' output: (row index, its answer) for some of the rows
Rows = list[tuple[int, Branch]]


def decode_rows(model, tokenizer, prompts: list[str], settings, max_new_tokens: int,
                eos: set[int]) -> Iterator[tuple[str, Rows]]:
    """Prefill ``prompts`` together and decode one greedy answer per row and setting.

    ``settings``: ``(label, TopKConfig or None)`` pairs as for `decode_branches` (None: full
    attention). Yields ``(label, [(row, Branch), ...])`` as each group of rows finishes (a
    setting may come in several pieces; together they cover every row once). One prompt is
    exactly `decode_branches`. In a batch the Branch's ``seconds`` and ``prefill_seconds``
    are the group's wall times divided by its rows.
    """
    if not prompts:
        return
    if len(prompts) == 1:
        for br in decode_branches(model, tokenizer, prompts[0], settings, max_new_tokens, eos):
            yield br.label, [(0, br)]
        return
    device = next(model.parameters()).device
    token_rows = tokenize(tokenizer, prompts)
    prefixes: dict[tuple[int, ...], tuple[PaddedPrompts, object, float]] = {}

    def prefix(rows: tuple[int, ...]):
        """(padded rows, their dense prefill, its seconds), once per group of rows."""
        if rows not in prefixes:
            batch = pad_left(tokenizer, [token_rows[r] for r in rows], device)
            t0 = time.perf_counter()
            prefixes[rows] = (batch, prefill_rows(model, batch), time.perf_counter() - t0)
        return prefixes[rows]

    lengths = [len(r) for r in token_rows]
    alone = []
    for label, topk in settings:
        why = blocker(topk)
        if why is not None:
            note(f"{label}: {why}")
            alone.append((label, topk))
            continue
        for rows in row_groups(topk, lengths, max_new_tokens):
            single = len(rows) == 1
            if not single:
                try:
                    piece = _decode_group(model, tokenizer, rows, prefix(tuple(rows)), topk,
                                          label, max_new_tokens, eos)
                except Exception as e:  # noqa: BLE001 - batch 1 gives the answer (or the error)
                    note(f"{label}: a batch of {len(rows)} rows failed ({type(e).__name__}: "
                         f"{(str(e).splitlines() or [''])[0]}); decoding one sample at a time")
                    single = True
                else:
                    yield label, piece
            if single:
                for r in rows:
                    yield label, [(r, decode_one(model, tokenizer, prompts[r], topk,
                                                 max_new_tokens, eos, label=label))]
    prefixes.clear()
    for r, prompt in enumerate(prompts):
        for br in decode_branches(model, tokenizer, prompt, alone, max_new_tokens, eos):
            yield br.label, [(r, br)]
    if device.type == "cuda":  # pragma: no cover - GPU only
        import torch

        torch.cuda.empty_cache()


def _decode_group(model, tokenizer, rows: list[int], prefilled, topk, label: str,
                  max_new_tokens: int, eos: set[int]) -> Rows:
    """Decode the rows of one group from a copy of their prefilled cache under ``topk``."""
    import torch

    batch, cache, prefill_s = prefilled
    cache = copy.deepcopy(cache)
    t0 = time.perf_counter()
    decide = topk.decode_decision if decides_by_rows(topk) else None
    with torch.no_grad(), _sparsify(model, topk):
        gen = greedy_decode_rows(model, batch, cache, max_new_tokens, eos, decide)
    secs = (time.perf_counter() - t0) / len(rows)
    del cache
    return [(r, Branch(label, g, tokenizer.decode(g, skip_special_tokens=True), secs,
                       prefill_s / len(rows), n))
            for r, g, n in zip(rows, gen, batch.lengths)]


__all__ = ["PaddedPrompts", "blocker", "decides_by_rows", "decode_rows", "greedy_decode_rows",
           "note", "pad_left", "prefill_rows", "row_groups", "tokenize"]
