"""Helpers for benchmarks read from local files: JSON/JSONL records and context truncation."""

from __future__ import annotations

import json
import random
from pathlib import Path

from topkattn.tasks.base import TokenizerLike, count_tokens
from topkattn.errors import InputError, MissingFileError


def read_records(path: str | Path) -> list[dict]:
    """Records of a JSON file (a list of objects, or ``{"data": [...]}``) or a JSONL file.

    Raises FileNotFoundError naming the path when it does not exist, ValueError when it holds
    no records or is not valid JSON/JSONL.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise MissingFileError(f"benchmark file not found: {str(path)!r}")
    text = p.read_text(encoding="utf-8")
    records: list = []
    stripped = text.lstrip()
    try:
        if stripped.startswith("["):
            records = json.loads(text)
        elif stripped.startswith("{") and p.suffix == ".json":
            obj = json.loads(text)
            records = obj.get("data", [obj]) if isinstance(obj, dict) else obj
        else:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise InputError(f"{str(path)!r} is not valid JSON or JSONL: {e}") from None
    records = [r for r in records if isinstance(r, dict)]
    if not records:
        raise InputError(f"{str(path)!r} holds no records")
    return records


def seeded_pick(records: list[dict], n: int, seed: int) -> list[tuple[int, dict]]:
    """Up to ``n`` (index, record) pairs in an order shuffled by ``seed`` (same seed, same pick)."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    return [(i, records[i]) for i in order[:n]]


def truncate_middle(tokenizer: TokenizerLike, text: str, max_tokens: int) -> str:
    """``text`` cut to at most ``max_tokens`` tokens by dropping its middle (as LongBench does)."""
    if max_tokens <= 0:
        return ""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return text
    half = max_tokens // 2
    head = tokenizer.decode(ids[:half], skip_special_tokens=True)
    tail = tokenizer.decode(ids[len(ids) - (max_tokens - half):], skip_special_tokens=True)
    return head + tail


def fit_context(tokenizer: TokenizerLike, context: str, length: int, render) -> tuple[str, int]:
    """The prompt ``render(context')`` with ``context'`` middle-truncated to fit ``length``.

    Returns the prompt and its token count (at most ``length`` unless the prompt without any
    context is already longer, which raises ValueError).
    """
    overhead = count_tokens(tokenizer, render(""))
    if overhead > length:
        raise InputError(f"length {length} tokens is too short for this prompt "
                         f"(needs {overhead} tokens without context)")
    budget = length - overhead
    for _ in range(8):
        cut = truncate_middle(tokenizer, context, budget)
        prompt = render(cut)
        n = count_tokens(tokenizer, prompt)
        if n <= length:
            return prompt, n
        budget -= max(n - length, 1)  # re-tokenisation at the seam can add a token or two
    return prompt, n  # pragma: no cover
