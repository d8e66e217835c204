"""Reports of an evaluation run: summary JSON, markdown table and accuracy plot.

- ``summary.json``: the config and one entry per (task, length, k) with ``n`` (samples scored),
  ``score_sum`` and ``accuracy`` (mean score); ``breakdowns``: the benchmark's own summary
  where the task has one (LongBench v2: overall, easy/hard, short/medium/long, each with its
  count and 95% Wilson interval).
- ``table.md``: rows task x length, columns full attention then each k (accuracy in [0, 1]).
- ``accuracy.png``: one panel per task, accuracy vs k (categorical axis in the order given),
  one line per length, full attention as a dashed line of the same colour.

Each file is written to a temporary name and then renamed, so a reader (or a second shard
writing the same reports) never sees half a file. Score sums are exact sums (``math.fsum``), so
the same results give the same numbers in any order.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from topkattn.analysis.plots import interval_yerr
from topkattn.tasks.stats import wilson_interval

if TYPE_CHECKING:
    from topkattn.evaluation.runner import EvalConfig

SUMMARY_FILE = "summary.json"
TABLE_FILE = "table.md"
PLOT_FILE = "accuracy.png"


@dataclass
class Cell:
    """Accuracy of one (task, length, k) cell."""

    task: str
    length: int
    k: str
    n: int
    score_sum: float

    @property
    def accuracy(self) -> float:
        return self.score_sum / self.n if self.n else float("nan")


@dataclass
class Summary:
    """What `run_eval` measured, and where it wrote it."""

    config: "EvalConfig"
    cells: list[Cell]
    out: Path
    files: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0
    complete: bool = True  # False: a shard's part is done, others are missing (no reports yet)
    missing: int = 0  # results of the run not in the folder yet
    shard: str | None = None  # "i/n" of the process that made this Summary, None unsharded

    def accuracy(self, task: str, length: int, k: str) -> float | None:
        for c in self.cells:
            if c.task == task and c.length == length and c.k == k:
                return c.accuracy
        return None

    def table(self) -> str:
        """The markdown table (rows task x length, columns full then each k)."""
        return markdown_table(self.cells, self.config.ks)


def aggregate(rows: Iterable[dict]) -> list[Cell]:
    """Cells (task, length, k) with sample counts and score sums, in first-seen order."""
    cells: dict[tuple[str, int, str], Cell] = {}
    scores: dict[tuple[str, int, str], list[float]] = {}
    for r in rows:
        key = (r["task"], int(r["length"]), str(r["k"]))
        c = cells.setdefault(key, Cell(task=key[0], length=key[1], k=key[2], n=0, score_sum=0.0))
        c.n += 1
        scores.setdefault(key, []).append(float(r["score"]))
    for key, c in cells.items():
        c.score_sum = math.fsum(scores[key])
    return list(cells.values())


def check_not_less(out: Path, rows: list[dict]) -> None:
    """`InputError` when ``out/summary.json`` counts results that ``rows`` lack: a cell
    (task, length, k) it has and ``rows`` do not, or one with more samples. Reports made from
    ``rows`` would then replace a finished summary with less."""
    from topkattn.errors import InputError

    path = Path(out) / SUMMARY_FILE
    try:
        old = json.loads(path.read_text())["cells"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    new = {(c.task, c.length, c.k): c.n for c in aggregate(rows)}
    lost = []
    for c in old:
        if not isinstance(c, dict):
            continue
        n = new.get((c.get("task"), c.get("length"), c.get("k")), 0)
        if n < c.get("n", 0):
            lost.append(f"{c['task']} {c['length']} k={c['k']}: {c['n']} -> {n} samples")
    if lost:
        raise InputError(
            f"the reports in {str(out)!r} count more results than these settings select "
            f"({', '.join(lost[:3])}{', ...' if len(lost) > 3 else ''}); nothing was written: "
            "leave out --task/--lengths/--k to report with the folder's own settings")


def _replace_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _rows_of(cells: list[Cell]) -> list[tuple[str, int]]:
    seen: dict[tuple[str, int], None] = {}
    for c in cells:
        seen.setdefault((c.task, c.length), None)
    return sorted(seen, key=lambda tl: ([c.task for c in cells].index(tl[0]), tl[1]))


def method_label(k: str) -> str:
    """Column name of a method: ``full``, ``k=64`` for a k setting, a kvpress baseline's own
    label (``kvpress:snapkv@0.5``)."""
    return k if k == "full" or k.startswith("kvpress:") else f"k={k}"


def markdown_table(cells: list[Cell], ks: Iterable[str]) -> str:
    """Markdown table: rows task x length, columns ``full`` then each k; ``n`` per row."""
    ks = list(ks)
    by = {(c.task, c.length, c.k): c for c in cells}
    head = "| task | length | n | " + " | ".join(method_label(k) for k in ks) + " |"
    sep = "|---|---:|---:|" + "---:|" * len(ks)
    lines = [head, sep]
    for task, length in _rows_of(cells):
        ns = {by[(task, length, k)].n for k in ks if (task, length, k) in by}
        n = str(max(ns)) if ns else "0"
        vals = []
        for k in ks:
            c = by.get((task, length, k))
            vals.append(f"{c.accuracy:.2f}" if c and c.n else "-")
        lines.append(f"| {task} | {length} | {n} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def plot_accuracy(cells: list[Cell], ks: Iterable[str], path: Path, title: str = "") -> Path:
    """Accuracy vs k, one panel per task, one line per length, full attention dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = list(ks)
    sparse = [k for k in ks if k != "full"]
    tasks = list(dict.fromkeys(c.task for c in cells))
    lengths = sorted({c.length for c in cells})
    by = {(c.task, c.length, c.k): c for c in cells}
    ncol = min(len(tasks), 4) or 1
    nrow = (len(tasks) + ncol - 1) // ncol or 1
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.4 * nrow), squeeze=False,
                             sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    x = list(range(len(sparse)))
    press_x = [i for i, k in enumerate(sparse) if k.startswith("kvpress:")]
    topk_x = [i for i in x if i not in press_x]
    for i, task in enumerate(tasks):
        ax = axes[i // ncol][i % ncol]
        for j, length in enumerate(lengths):
            col = colors[j % len(colors)]
            pts = [by.get((task, length, k)) for k in sparse]
            ys = [c.accuracy if c is not None else float("nan") for c in pts]
            if sparse:
                # 95% Wilson intervals as error bars; small horizontal offsets keep equal
                # values of different lengths visible
                err = interval_yerr(ys, [wilson_interval(c.score_sum, c.n) if c is not None
                                         else None for c in pts])
                off = (j - (len(lengths) - 1) / 2) * 0.06
                # a line through the k settings; kvpress presses as points of their own
                for part, line in ((topk_x, "-"), (press_x, "none")):
                    if part:
                        ax.errorbar([x[i] + off for i in part], [ys[i] for i in part],
                                    yerr=[[e[i] for i in part] for e in err], linestyle=line,
                                    marker="osD^v"[j % 5], color=col, capsize=3,
                                    label=f"{length} tok" if part is topk_x or not topk_x
                                    else None)
            full = by.get((task, length, "full"))
            if full is not None:
                ax.axhline(full.accuracy, color=col, linestyle="--", linewidth=1,
                           label=f"{length} full" if not sparse else None)
                lo, hi = wilson_interval(full.score_sum, full.n)
                ax.axhspan(lo, hi, color=col, alpha=0.08, linewidth=0)
        ax.set_title(task)
        ax.set_xticks(x, [method_label(k).removeprefix("kvpress:") for k in sparse],
                      rotation=30 if press_x else 0, ha="right" if press_x else "center",
                      rotation_mode="anchor")
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel(("Top-k / kvpress press" if press_x else "Top-k decoding")
                      + " (dashed, band: full attention)")
        if i % ncol == 0:
            ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")  # where no point hides behind it (low presses)
    for i in range(len(tasks), nrow * ncol):
        axes[i // ncol][i % ncol].axis("off")
    if title:
        import textwrap

        # wrap to the figure's width so that a long title is never cut off at the edges
        width = max(20, int(fig.get_figwidth() * 9))
        fig.suptitle("\n".join(textwrap.wrap(title, width)), fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def breakdowns(rows: list[dict]) -> list[dict]:
    """Each task's own summary of its rows per (task, length, k) where it has one
    (`Task.breakdown`: LongBench v2 by difficulty and length bucket, with counts and 95%
    intervals); synthetic tasks have none."""
    from topkattn.tasks import get_task

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["length"], r["k"]), []).append(r)
    out, tasks = [], {}
    for (task, length, k), group in groups.items():
        if task not in tasks:
            try:
                tasks[task] = get_task(task)
            except (ValueError, OSError):  # a file moved since the run: no breakdown
                tasks[task] = None
        b = tasks[task].breakdown(group) if tasks[task] is not None else None
        if b is not None:
            out.append({"task": task, "length": length, "k": k, "breakdown": b})
    return out


def write_reports(cfg: "EvalConfig", rows: list[dict], out: Path) -> Summary:
    """Write summary JSON, markdown table and plot for ``rows``; return the `Summary`."""
    cells = aggregate(rows)
    out.mkdir(parents=True, exist_ok=True)
    summary_path = out / SUMMARY_FILE
    _replace_text(summary_path, json.dumps({
        "config": cfg.to_json(),
        "cells": [{"task": c.task, "length": c.length, "k": c.k, "n": c.n,
                   "score_sum": c.score_sum, "accuracy": c.accuracy} for c in cells],
        "breakdowns": breakdowns(rows),
    }, indent=2) + "\n")
    table_path = out / TABLE_FILE
    _replace_text(table_path, markdown_table(cells, cfg.ks))
    plot_path = plot_accuracy(cells, cfg.ks, out / PLOT_FILE,
                              title=f"Top-k decoding vs full attention ({cfg.samples} "
                                    f"samples per point)")
    return Summary(config=cfg, cells=cells, out=out,
                   files={"results": out / "results.jsonl", "summary": summary_path,
                          "table": table_path, "plot": plot_path})
