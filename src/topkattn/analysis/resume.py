"""Resumable long runs: append-only JSONL records, a run's settings, and Ctrl-C.

`topkattn fidelity`, `topkattn entropy` and `topkattn train-indexer` keep each finished unit
of work (a sample, a recorded sequence, a block of optimiser steps) as soon as it is done:

- `read_records` reads a JSONL file of finished units; a torn last line (a process killed in
  the middle of a write) is cut off first (`topkattn.evaluation.records.repair_tail`), so the
  next append starts on a fresh line, and any other unreadable line is skipped with a warning;
- `append_record` writes one line and flushes it;
- `check_settings` keeps the settings of a run next to its records and refuses to mix records
  of other settings into it (one line naming the differing settings);
- `RunInterrupted` is the KeyboardInterrupt a run raises on Ctrl-C once its finished work is
  on disk: its message says where it stopped and how to resume.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import warnings
from pathlib import Path
from typing import Any, Iterator

from topkattn.errors import InputError


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C (or SIGINT) after writing its finished work.

    Attributes: ``what`` (e.g. "fidelity"), ``done`` and ``total`` units (``unit`` names them),
    ``path`` where the finished work is.
    """

    def __init__(self, what: str, done: int, total: int, path: str | os.PathLike,
                 unit: str = "samples") -> None:
        self.what, self.done, self.total, self.unit = what, done, total, unit
        self.path = Path(path)
        super().__init__(str(self))

    def __str__(self) -> str:
        return (f"interrupted: {self.what} stopped after {self.done} of {self.total} "
                f"{self.unit}; finished work is kept in {self.path}; rerun the same command "
                "to resume")


def read_records(path: str | os.PathLike) -> list[dict]:
    """The JSON objects of the lines of ``path`` (none if it does not exist), after cutting a
    torn last line off; other unreadable lines are skipped with a warning."""
    from topkattn.evaluation.records import ResultsWarning, repair_tail

    path = Path(path)
    if not path.exists():
        return []
    repair_tail(path)
    rows, bad = [], []
    for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").split("\n")):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad.append(i + 1)
    if bad:
        warnings.warn(f"{path}: skipped {len(bad)} unreadable line(s) (line "
                      f"{', '.join(map(str, bad[:5]))}); that work will be done again",
                      ResultsWarning, stacklevel=2)
    return rows


def append_record(path: str | os.PathLike, row: dict) -> None:
    """Append ``row`` as one JSON line to ``path`` and flush it."""
    with Path(path).open("a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()


def check_settings(path: str | os.PathLike, settings: dict[str, Any], what: str,
                   work: tuple[str, ...] = ("*.jsonl", "*.pt", "done.json")) -> bool:
    """Write ``settings`` to ``path``, or, when ``path`` holds those of an earlier run that left
    finished work (files matching a pattern of ``work`` next to ``path``, not empty), check they
    are the same. Returns True when such an earlier run was found.

    Raises:
        InputError: the earlier run had other settings (names them and both values).
    """
    path = Path(path)
    new = json.loads(json.dumps(settings))  # tuples -> lists, as read back
    finished = any(f.is_file() and f.stat().st_size > 0 and ".tmp" not in f.name
                   for pattern in work for f in path.parent.glob(pattern))
    if path.exists() and finished:
        try:
            old = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            old = None
        if isinstance(old, dict):
            diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
            if diff:
                shown = "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now"
                                  for k in diff[:3])
                art = "an" if what[:1] in "aeiou" else "a"
                raise InputError(f"{path.parent} holds {art} {what} run with other settings "
                                 f"({shown}); give another output or delete it to start anew")
            return True
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(new, indent=1))
    os.replace(tmp, path)
    return False


@contextlib.contextmanager
def deferred_sigint() -> Iterator[None]:
    """Hold SIGINT back inside the block (re-raised as KeyboardInterrupt at its end), so a
    state update in the block is never left half done. A no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    prev = signal.signal(signal.SIGINT, lambda s, f: got.append(s))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, prev)
    if got:
        raise KeyboardInterrupt


def atomic_save(write, path: str | os.PathLike) -> Path:
    """``write(tmp_path)`` then rename to ``path``: a kill leaves the old file or the new."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp" + path.suffix)
    write(tmp)
    os.replace(tmp, path)
    return path


__all__ = ["RunInterrupted", "append_record", "atomic_save", "check_settings",
           "deferred_sigint", "read_records"]
