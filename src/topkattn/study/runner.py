"""`run_study`: plan the stages, run or reuse them, analyse, decide and write the report."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from topkattn.study.claims import Models, analyze, plan
from topkattn.study.config import StudyConfig
from topkattn.study.stages import Stage, StageRunner, write_json_atomic
from topkattn.study.verdict import Verdict, decide

CONFIG_FILE = "study_config.json"


@dataclass
class StudyResult:
    """What `run_study` decided, and where it wrote it."""

    config: StudyConfig
    verdicts: list[Verdict]
    analyses: dict
    files: dict[str, Path]
    ran: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    #: stages not finished: not selected, or waiting on other shards
    pending: list[str] = field(default_factory=list)


def select_stages(stages: list[Stage], patterns: tuple[str, ...] | list[str] | str,
                  shard=None, finished: set[str] | None = None) -> set[str]:
    """The names of ``stages`` that match any of the shell patterns (``claim3-*``), checked:
    `InputError` for a pattern that matches no stage, for a stage that needs a fine-tune whose
    training stage is neither finished nor selected, and, when ``shard`` splits the work, for
    a selected unfinished stage that cannot be split (training)."""
    import fnmatch

    from topkattn.errors import InputError

    pats = ([p.strip() for p in patterns.split(",")] if isinstance(patterns, str)
            else [str(p).strip() for p in patterns])
    pats = [p for p in pats if p]
    names = [s.name for s in stages]
    if not pats:
        raise InputError(f"--stages names no stage; this study's stages: {', '.join(names)}")
    for p in pats:
        if not fnmatch.filter(names, p):
            raise InputError(f"--stages: {p!r} matches no stage of this study; its stages: "
                             f"{', '.join(names)}")
    chosen = {n for n in names if any(fnmatch.fnmatchcase(n, p) for p in pats)}
    done = finished or set()
    for s in stages:
        if s.name not in chosen or s.name in done:
            continue
        for need in s.needs:
            train = f"claim2-train-{need}"
            if need != "base" and train not in chosen and train not in done:
                raise InputError(f"--stages: {s.name!r} needs the fine-tune of stage {train!r}, "
                                 "which has not finished; finish it first or select it too")
        if shard is not None and shard.sharded and not s.shardable:
            raise InputError(f"--shard {shard.label}: stage {s.name!r} cannot be split between "
                             f"processes; run it in one process (--stages {s.name}, no --shard)")
    return chosen


def run_study(cfg: StudyConfig, log: Callable[[str], None] | None = None,
              on_start: Callable[[str], None] | None = None, command: str = "",
              stages: tuple[str, ...] | str | None = None) -> StudyResult:
    """Run (or resume) the study of ``cfg``; returns the verdicts and report paths.

    ``log`` gets one progress line per stage; ``on_start(stage name)`` is called before each
    stage that runs (a test hook). Finished stages of an earlier run with the same settings
    are reused; a folder holding another study's stages raises `InputError` before any work.
    ``stages``: shell patterns of the stages to run (`select_stages`; None: all). Several
    processes can share ``cfg.out``, each with its own stages or ``cfg.shard``; the report
    covers every stage finished in the folder, the others are listed in ``pending``.
    """
    from topkattn.study.claims import precheck_lengths

    log = log or (lambda text: None)
    precheck_lengths(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    models = Models(cfg, log)
    plan_ = plan(cfg, models)
    from topkattn.study.report import provenance

    runner = StageRunner(out, log=log, on_start=on_start, stamp=provenance(cfg))
    finished = runner.check(plan_)
    if stages is not None:
        selected = select_stages(plan_, stages, cfg.shard, finished)
    else:
        selected = None
        if cfg.shard.sharded:
            select_stages(plan_, "*", cfg.shard, finished)  # refuses unsplittable stages
    write_json_atomic(out / CONFIG_FILE, cfg.to_json())
    try:
        records = runner.run(plan_, selected)
    finally:
        models.release()
    if runner.skipped or runner.waiting:  # other processes may have finished stages meanwhile
        records = {**load_stages(cfg), **records}
    return _conclude(cfg, plan_, records, command, runner.ran, runner.reused)


def _conclude(cfg: StudyConfig, plan_: list[Stage], records: dict[str, dict], command: str,
              ran: list[str], reused: list[str]) -> StudyResult:
    """Analyse the finished ``records``, decide each claim (marking as provisional a claim
    whose stages are not all finished) and write the report."""
    from topkattn.study.report import write_report

    analyses = analyze(cfg, records)
    pending = [s.name for s in plan_ if s.name not in records]
    verdicts = []
    for c in (1, 2, 3, 4):
        a = analyses[c] if c in cfg.claims else None
        v = decide(c, a, cfg.budget.rules)
        verdicts.append(v if a is None or a.get("missing") else provisional(v, pending))
    files = write_report(cfg, verdicts, analyses, records, command=command, pending=pending)
    return StudyResult(cfg, verdicts, analyses, files, ran, reused, pending)


def stage_claims(name: str) -> set[int]:
    """The claims a stage feeds: ``claim3-L2048`` -> {3}; a fine-tune's training -> {2, 4}."""
    if name.startswith("claim2-train-"):
        return {2, 4}
    head = name.split("-", 1)[0]
    return {int(head[5:])} if head[5:].isdigit() else set()


def provisional(verdict: Verdict, pending: list[str]) -> Verdict:
    """``verdict`` (decided from some finished stages) with its reason saying which of its
    claim's stages are still pending; unchanged when none is."""
    mine = [n for n in pending if verdict.claim in stage_claims(n)]
    if not mine:
        return verdict
    return replace(verdict, reason=f"{verdict.reason} (provisional: {', '.join(mine)} not "
                                   "finished yet)")


def load_stages(cfg: StudyConfig) -> dict[str, dict]:
    """The finished stage records in ``cfg.out`` that belong to ``cfg``'s plan (same keys)."""
    models = Models(cfg)
    runner = StageRunner(cfg.out)
    out = {}
    for s in plan(cfg, models):
        rec = runner.load(s)
        if rec is not None and rec.get("key") == s.key:
            out[s.name] = rec
    return out


def report_only(cfg: StudyConfig, command: str = "") -> StudyResult:
    """Analyse, decide and write the report from the finished stages in ``cfg.out`` (no model
    is loaded; a claim whose stages are missing comes out inconclusive)."""
    records = load_stages(cfg)
    if not records:
        from topkattn.errors import MissingFileError

        raise MissingFileError(f"no finished stage of this study in {str(cfg.out)!r}")
    return _conclude(cfg, plan(cfg, Models(cfg)), records, command, [], list(records))


def read_study(out: str | Path) -> dict:
    """The ``study.json`` of a finished study folder."""
    from topkattn.study.report import JSON_FILE

    return json.loads((Path(out) / JSON_FILE).read_text())


__all__ = ["CONFIG_FILE", "StudyResult", "load_stages", "read_study", "report_only",
           "run_study", "select_stages"]
