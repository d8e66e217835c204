"""Resumable stages: each finished stage writes ``OUT/stages/<name>.json`` and is skipped on a
rerun whose settings match.

A `Stage` is a name, a key (a hash of the settings its result depends on, from
`StudyConfig.key`) and a function returning a JSON-ready dict. `StageRunner.run` executes the
stages in order; a stage whose file holds the same key is reused, one whose file holds another
key stops the run before any work (`InputError`: the folder holds another study). Files are
written atomically (temporary file, then rename), so a kill leaves either no file or a whole
one; work inside a stage (evaluation JSONL lines, training checkpoints, per-sample lines)
resumes through the existing APIs.

Several processes may share one output folder (``topkattn study --stages`` / ``--shard``):
`StageRunner.run` runs only the selected stages, and a sharded stage (``shardable``) whose
process has finished its own part while other shards' parts are missing raises
`StageIncomplete`: its file is written by the shard that completes it (or by a rerun).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from topkattn.errors import InputError

STAGES_DIR = "stages"


@dataclass(frozen=True)
class Stage:
    """One unit of resumable work.

    Attributes:
        name: unique, file-safe (``claim2-train-topk-s0``).
        key: settings hash; a finished file with another key is another study's.
        run: computes the result (a JSON-ready dict).
        needs: model names the stage loads (for the up-front checks and the summary).
        shardable: whether ``--shard i/n`` splits the stage's samples between processes
            (evaluations, fidelity, entropy); a training stage runs whole in one process.
    """

    name: str
    key: str
    run: Callable[[], dict]
    needs: tuple[str, ...] = ()
    shardable: bool = False


class StageIncomplete(Exception):
    """A sharded stage's own part is done, other shards' parts are not yet in the folder."""


def clean(obj):
    """``obj`` with every non-finite float (nan, inf) as None, tuples as lists: strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    return obj


def write_json_atomic(path: Path, obj) -> Path:
    """Write ``obj`` as strict JSON (`clean`) to ``path`` through a temporary file and a
    rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(clean(obj), indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path


class StageRunner:
    """Runs stages in order, reusing finished ones; ``on_start(name)`` is called before a stage
    runs (tests use it to simulate a kill), ``log(text)`` prints progress lines."""

    def __init__(self, out: str | Path, log: Callable[[str], None] | None = None,
                 on_start: Callable[[str], None] | None = None, stamp: dict | None = None):
        self.dir = Path(out) / STAGES_DIR
        self.stamp = dict(stamp or {})  # written into every record (device, commit)
        self.log = log or (lambda text: None)
        self.on_start = on_start
        self.ran: list[str] = []
        self.reused: list[str] = []
        self.skipped: list[str] = []   # not selected and not finished
        self.waiting: list[str] = []   # this shard's part done, other shards' parts missing

    def path(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    def load(self, stage: Stage) -> dict | None:
        """The finished record of ``stage`` (None if not finished; a torn file is ignored)."""
        p = self.path(stage.name)
        if not p.exists():
            return None
        try:
            rec = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return rec if isinstance(rec, dict) and "result" in rec else None

    def check(self, stages: list[Stage]) -> set[str]:
        """The names of the finished ``stages``; raises `InputError` when a finished stage file
        was made with other settings."""
        names = [s.name for s in stages]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"stage names must be unique, got {sorted(dup)}")
        finished = set()
        for s in stages:
            rec = self.load(s)
            if rec is not None and rec.get("key") != s.key:
                raise InputError(
                    f"{str(self.path(s.name))!r} holds stage {s.name!r} of a study with other "
                    "settings; rerun with the same model, budget and options, or use another "
                    "--out")
            if rec is not None:
                finished.add(s.name)
        return finished

    def pending(self, stages: list[Stage]) -> list[Stage]:
        return [s for s in stages if self.load(s) is None]

    def run(self, stages: list[Stage], selected: set[str] | None = None) -> dict[str, dict]:
        """Run or reuse every stage (only those named in ``selected`` run, when given; the
        others are reused if finished, else skipped); returns ``{name: record}`` of the
        finished ones (record: name, key, seconds, finished, the ``stamp`` fields, result)."""
        self.check(stages)
        out: dict[str, dict] = {}
        n = len(stages)
        for i, s in enumerate(stages, 1):
            rec = self.load(s)
            if rec is not None:
                self.reused.append(s.name)
                self.log(f"[{i}/{n}] {s.name}: finished before, reused")
                out[s.name] = rec
                continue
            if selected is not None and s.name not in selected:
                self.skipped.append(s.name)
                self.log(f"[{i}/{n}] {s.name}: not selected, not run")
                continue
            if self.on_start is not None:
                self.on_start(s.name)
            self.log(f"[{i}/{n}] {s.name} ...")
            t0 = time.perf_counter()
            try:
                result = s.run()
            except StageIncomplete as e:
                self.waiting.append(s.name)
                self.log(f"[{i}/{n}] {s.name}: this shard's part is done in "
                         f"{time.perf_counter() - t0:.0f} s; waiting on other shards ({e})")
                continue
            rec = {"name": s.name, "key": s.key, "seconds": round(time.perf_counter() - t0, 2),
                   "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   **self.stamp, "result": result}
            write_json_atomic(self.path(s.name), rec)
            self.ran.append(s.name)
            self.log(f"[{i}/{n}] {s.name}: done in {rec['seconds']:.0f} s")
            out[s.name] = rec
        return out


__all__ = ["STAGES_DIR", "Stage", "StageIncomplete", "StageRunner", "write_json_atomic"]
