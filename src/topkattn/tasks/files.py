"""Helpers for benchmarks read from local files: JSON/JSONL records, field checks, truncation.

`read_records` accepts a JSON file (a list of objects, ``{"data": [...]}`` or one object) and a
JSONL file (one object a line), whatever the file's suffix: it tries JSON first, then JSONL. A
broken JSONL line is reported by its line number (``line 3``), a broken JSON document by the
position `json` reports.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable, Iterable

from topkattn.tasks.base import TokenizerLike, count_tokens
from topkattn.errors import InputError, MissingFileError


def read_records(path: str | Path) -> list[dict]:
    """Records of a JSON or JSONL file (JSON tried first, then one object a line).

    Raises FileNotFoundError naming the path when it does not exist, ValueError when it holds
    no records or is neither valid JSON nor valid JSONL (naming the first bad line).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise MissingFileError(f"benchmark file not found: {str(path)!r}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{str(path)!r} is not UTF-8 text ({e.reason} at byte {e.start})") \
            from None
    records: list
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        if text.lstrip().startswith("["):  # meant as one JSON list: its own error is the clue
            raise InputError(f"{str(path)!r} is not valid JSON: line {e.lineno} column "
                             f"{e.colno}: {e.msg}") from None
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e2:
                raise InputError(f"{str(path)!r} is not valid JSON or JSONL: line {n} "
                                 f"(character {e2.colno}): {e2.msg}") from None
    else:
        if isinstance(obj, dict):
            records = obj["data"] if isinstance(obj.get("data"), list) else [obj]
        elif isinstance(obj, list):
            records = obj
        else:
            records = []
    records = [r for r in records if isinstance(r, dict)]
    if not records:
        raise InputError(f"{str(path)!r} holds no records (expected JSON objects)")
    return records


def check_fields(records: Iterable[dict], required: Iterable[str | tuple[str, ...]], path: str,
                 what: str) -> None:
    """Raise one line naming the first record that lacks a required field.

    ``required`` items are field names, or tuples of alternatives (any one of them will do,
    written ``a|b`` in the message). ``what`` names the benchmark ("LongBench v2",
    "HELMET json_kv", ...).
    """
    req = [(r,) if isinstance(r, str) else tuple(r) for r in required]
    for i, rec in enumerate(records):
        missing = ["|".join(alts) for alts in req if not any(a in rec for a in alts)]
        if missing:
            have = ", ".join(sorted(rec)[:12])
            raise InputError(f"{path!r}: record {i} lacks {what} fields {missing} "
                             f"(it has: {have})")


def seeded_pick(records: list[dict], n: int, seed: int) -> list[tuple[int, dict]]:
    """Up to ``n`` (index, record) pairs in an order shuffled by ``seed`` (same seed, same pick)."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    return [(i, records[i]) for i in order[:n]]


def truncate_middle(tokenizer: TokenizerLike, text: str, max_tokens: int) -> str:
    """``text`` cut to at most ``max_tokens`` tokens by dropping its middle (as LongBench does).

    Keeps the first ``max_tokens // 2`` and the last ``max_tokens - max_tokens // 2`` tokens.
    """
    if max_tokens <= 0:
        return ""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return text
    half = max_tokens // 2
    head = tokenizer.decode(ids[:half], skip_special_tokens=True)
    tail = tokenizer.decode(ids[len(ids) - (max_tokens - half):], skip_special_tokens=True)
    return head + tail


def truncate_end(tokenizer: TokenizerLike, text: str, max_tokens: int, postfix: str = "") -> str:
    """``text`` cut to at most ``max_tokens`` tokens by dropping its end (as HELMET does).

    ``postfix`` (e.g. HELMET's ``" ... [the rest of the text is omitted]"``) is appended when
    something was cut; its tokens count against ``max_tokens``.
    """
    if max_tokens <= 0:
        return ""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return text
    keep = max_tokens - (count_tokens(tokenizer, postfix) if postfix else 0)
    if keep <= 0:
        return ""
    return tokenizer.decode(ids[:keep], skip_special_tokens=True) + postfix


def fit_context(tokenizer: TokenizerLike, context: str, length: int, render: Callable[[str], str],
                cut: Callable[[TokenizerLike, str, int], str] | None = None) -> tuple[str, int]:
    """The prompt ``render(context')`` with ``context'`` cut to fit ``length`` tokens.

    ``cut(tokenizer, text, max_tokens)`` shortens the text (default: `truncate_middle`).
    Returns the prompt and its token count (at most ``length`` unless the prompt without any
    context is already longer, which raises ValueError).
    """
    prompt, n, _ = fit_text(tokenizer, context, length, render, cut)
    return prompt, n


def fit_text(tokenizer: TokenizerLike, text: str, length: int, render: Callable[[str], str],
             cut: Callable[[TokenizerLike, str, int], str] | None = None
             ) -> tuple[str, int, str]:
    """`fit_context`, also returning the cut text that was rendered."""
    cut = cut or truncate_middle
    overhead = count_tokens(tokenizer, render(""))
    if overhead > length:
        raise InputError(f"length {length} tokens is too short for this prompt "
                         f"(needs {overhead} tokens without context)")
    budget = length - overhead
    for _ in range(8):
        short = cut(tokenizer, text, budget)
        prompt = render(short)
        n = count_tokens(tokenizer, prompt)
        if n <= length:
            return prompt, n, short
        budget -= max(n - length, 1)  # re-tokenisation at the seam can add a token or two
    return prompt, n, short  # pragma: no cover
