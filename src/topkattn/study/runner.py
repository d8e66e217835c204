"""`run_study`: plan the stages, run or reuse them, analyse, decide and write the report."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from topkattn.study.claims import Models, analyze, plan
from topkattn.study.config import StudyConfig
from topkattn.study.stages import StageRunner, write_json_atomic
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


def run_study(cfg: StudyConfig, log: Callable[[str], None] | None = None,
              on_start: Callable[[str], None] | None = None, command: str = "") -> StudyResult:
    """Run (or resume) the study of ``cfg``; returns the verdicts and report paths.

    ``log`` gets one progress line per stage; ``on_start(stage name)`` is called before each
    stage that runs (a test hook). Finished stages of an earlier run with the same settings
    are reused; a folder holding another study's stages raises `InputError` before any work.
    """
    from topkattn.study.claims import precheck_lengths

    log = log or (lambda text: None)
    precheck_lengths(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    models = Models(cfg, log)
    stages = plan(cfg, models)
    runner = StageRunner(out, log=log, on_start=on_start)
    runner.check(stages)
    write_json_atomic(out / CONFIG_FILE, cfg.to_json())
    try:
        records = runner.run(stages)
    finally:
        models.release()
    analyses = analyze(cfg, records)
    rules = cfg.budget.rules
    verdicts = [decide(c, analyses[c] if c in cfg.claims else None, rules)
                for c in (1, 2, 3, 4)]
    from topkattn.study.report import write_report

    files = write_report(cfg, verdicts, analyses, records, command=command)
    return StudyResult(cfg, verdicts, analyses, files, runner.ran, runner.reused)


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
    analyses = analyze(cfg, records)
    verdicts = [decide(c, analyses[c] if c in cfg.claims else None, cfg.budget.rules)
                for c in (1, 2, 3, 4)]
    from topkattn.study.report import write_report

    files = write_report(cfg, verdicts, analyses, records, command=command)
    return StudyResult(cfg, verdicts, analyses, files, [], list(records))


def read_study(out: str | Path) -> dict:
    """The ``study.json`` of a finished study folder."""
    from topkattn.study.report import JSON_FILE

    return json.loads((Path(out) / JSON_FILE).read_text())


__all__ = ["CONFIG_FILE", "StudyResult", "load_stages", "read_study", "report_only",
           "run_study"]
