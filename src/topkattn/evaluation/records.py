"""The result lines of an evaluation folder: reading, repairing and merging JSONL files.

A run appends one JSON object per (task, length, sample, k) to its results file and flushes
it, so a crash loses at most the line being written. What such a crash leaves, and what is
done about it:

- a last line without its newline that is a whole JSON object (the crash fell between the
  object and ``\\n``): the newline is added (`repair_tail`);
- a last line that is not valid JSON (torn mid-write): it is cut off before anything is
  appended, with a warning naming the file and the bytes removed (`repair_tail`); the run then
  redoes that one result;
- a bad line elsewhere (edited by hand, two writers on one file): it is skipped with a warning
  that gives its line number, so the count of results is never silently wrong (`read_results`).

A folder may hold several results files: ``results.jsonl`` (one process) and
``results.shard-<i>-of-<n>.jsonl`` (one per shard, `topkattn.evaluation.shard`).
`read_folder` reads them all and keeps the first line of each resume key (`record_key`), so a
rerun with another shard count, or without shards, reuses every finished result.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

RESULTS_FILE = "results.jsonl"
SHARD_GLOB = "results.shard-*-of-*.jsonl"


class ResultsWarning(UserWarning):
    """A results file held a line that could not be read (skipped or cut off)."""


def record_key(task: str, length: int, sample_id: str, k: str) -> str:
    """Resume key of one result line."""
    return f"{task}/{length}/{sample_id}/{k}"


def key_of(row: dict) -> str:
    """`record_key` of a result row."""
    return record_key(row["task"], row["length"], row["sample_id"], row["k"])


def _warn(msg: str) -> None:
    warnings.warn(msg, ResultsWarning, stacklevel=3)


def read_results(path: Path, warn: bool = True) -> list[dict]:
    """Result lines of one JSONL file, in file order.

    A line that is not a JSON object with the keys of a result (a torn last line of an
    interrupted write, which `repair_tail` removes before a run appends, or a damaged line) is
    skipped with a `ResultsWarning` naming the file and its line numbers.
    """
    path = Path(path)
    if not path.exists():
        return []
    rows: list[dict] = []
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    bad: list[int] = []
    for i, line in enumerate(lines):
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict) and all(k in row for k in ("task", "length", "sample_id",
                                                             "k", "score")):
            rows.append(row)
        else:
            bad.append(i + 1)
    if bad and warn:
        _warn(f"{path}: skipped {len(bad)} unreadable line(s) (line {', '.join(map(str, bad[:5]))}"
              f"{', ...' if len(bad) > 5 else ''}); those results will be computed again")
    return rows


def repair_tail(path: Path) -> int:
    """Make ``path`` safe to append to; returns the number of bytes cut off (0: none).

    A last line without a newline gets one when it is a whole JSON object, and is cut off
    (with a `ResultsWarning`) when it is not: a line torn by a crash mid-write.
    """
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return 0
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return 0
    start = data.rfind(b"\n") + 1
    tail = data[start:]
    try:
        ok = isinstance(json.loads(tail.decode("utf-8")), dict)
    except (UnicodeDecodeError, json.JSONDecodeError):
        ok = False
    if ok:
        with path.open("ab") as f:
            f.write(b"\n")
        return 0
    with path.open("r+b") as f:
        f.truncate(start)
    _warn(f"{path}: removed a torn last line ({len(tail)} bytes, an interrupted write); "
          "that result will be computed again")
    return len(tail)


def result_files(out: Path) -> list[Path]:
    """Every results file in folder ``out``: ``results.jsonl`` first, then the shard files
    sorted by shard count and index."""
    out = Path(out)
    files = [out / RESULTS_FILE] if (out / RESULTS_FILE).exists() else []

    def order(p: Path) -> tuple:
        parts = p.name[len("results.shard-"):-len(".jsonl")].split("-of-")
        try:
            return (int(parts[1]), int(parts[0]), p.name)
        except (IndexError, ValueError):
            return (1 << 30, 0, p.name)

    return files + sorted(out.glob(SHARD_GLOB), key=order)


def read_folder(out: Path, warn: bool = True) -> list[dict]:
    """The result rows of every results file in ``out`` (`result_files`), each resume key
    once (its first line in that file order)."""
    seen: set[str] = set()
    rows: list[dict] = []
    for path in result_files(out):
        for r in read_results(path, warn=warn):
            k = key_of(r)
            if k not in seen:
                seen.add(k)
                rows.append(r)
    return rows


__all__ = ["RESULTS_FILE", "ResultsWarning", "key_of", "read_folder", "read_results",
           "record_key", "repair_tail", "result_files"]
