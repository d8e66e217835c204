"""Accuracy of Top-k decoding against full attention on long-context tasks.

For every sample the prompt is prefilled ONCE with dense attention, except its last token
(``model(input_ids[:, :-1], use_cache=True)``). Then, for full attention and for each k, a deep
copy of that cache is taken, the last prompt token is fed as the first decode step and the
answer is decoded greedily inside ``sparsify(model, replace(cfg.topk, k=..., k_ratio=...))``,
so that even the first answer token comes from a Top-k decode step (Top-k Decoding, as in
arXiv 2512.03494). Full attention decodes inside ``sparsify(model, TopKConfig(k=None))``: the
same attention function, over key ranges.

Results: ``results.jsonl`` gets one line per (sample, k), flushed at once; a rerun with the same
output folder skips finished (task, length, sample, k) keys, so an interrupted run resumes.
`topkattn.evaluation.report` then writes ``summary.json``, ``table.md`` and ``accuracy.png``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from topkattn.config import TopKConfig, parse_k, parse_k_list, selector_spec
from topkattn.errors import InputError, MissingFileError
from topkattn.evaluation.report import Cell, Summary, write_reports  # noqa: F401  (Cell: re-exported)
from topkattn.generation import decode_branches, eos_token_ids  # noqa: F401  (re-exported)

RESULTS_FILE = "results.jsonl"
CONFIG_FILE = "eval_config.json"


def parse_length(text: str | int) -> int:
    """``"1k"`` -> 1024, ``"4K"`` -> 4096, ``"1024"`` -> 1024, ``"1.5k"`` -> 1536.

    Raises ValueError naming the value for anything else.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        n = text
    else:
        t = str(text).strip().lower()
        try:
            n = round(float(t[:-1]) * 1024) if t.endswith("k") else int(t)
        except ValueError:
            raise InputError(
                f"length must be a number of tokens such as 1024 or 1k, got {text!r}"
            ) from None
    if n <= 0:
        raise InputError(f"length must be a positive number of tokens, got {text!r}")
    return n


@dataclass
class EvalConfig:
    """What `run_eval` measures (validated on construction).

    Attributes:
        tasks: task names (`topkattn.tasks.get_task`), e.g. ``("passkey", "kv")``.
        lengths: prompt lengths in tokens (ints, or strings such as ``"2k"``).
        ks: the k settings of the sweep, as for the CLI: ``"64"`` (absolute), ``"5%"`` /
            ``"0.05"`` (ratio) or ``"full"`` (also a comma-separated string); full attention
            is always measured and comes first.
        topk: the base `TopKConfig` shared by every k (sink, local, dense_layers,
            min_context, granularity, selector, backend, phases); its own k and k_ratio are
            replaced by each setting of ``ks`` (`settings`). Default: exact Top-k, nothing
            else kept.
        samples: samples per (task, length) cell; needle depths are swept across them.
        seed: task seed (the same seed gives the same prompts).
        max_new_tokens: greedy decode budget per answer; None uses each task's default.
        out: output folder (``results.jsonl``, ``summary.json``, ``table.md``,
            ``accuracy.png``).
        progress: show a rich progress bar.
    """

    tasks: tuple[str, ...] = ("passkey",)
    lengths: tuple[int, ...] = (1024,)
    ks: tuple[str, ...] = ("full",)
    topk: TopKConfig = field(default_factory=lambda: TopKConfig(k=None))
    samples: int = 10
    seed: int = 0
    max_new_tokens: int | None = None
    out: str | Path = "runs/eval"
    progress: bool = True

    def __post_init__(self) -> None:
        from topkattn.tasks import get_task

        if isinstance(self.tasks, str):
            self.tasks = tuple(t for t in self.tasks.split(",") if t.strip())
        self.tasks = tuple(t.strip() for t in self.tasks)
        if not self.tasks:
            raise InputError("tasks must name at least one task")
        for t in self.tasks:
            get_task(t)  # raises ValueError naming an unknown task and the allowed names
        if isinstance(self.lengths, (str, int)):
            self.lengths = tuple(str(self.lengths).split(","))
        self.lengths = tuple(parse_length(x) for x in self.lengths)
        if not self.lengths:
            raise InputError("lengths must hold at least one length")
        labels = [label for label, _ in parse_k_list(self.ks)]  # names a bad k
        # full first, then the sparse settings in the given order, without duplicates
        self.ks = ("full",) + tuple(k for k in labels if k != "full")
        if not isinstance(self.topk, TopKConfig):
            raise InputError(f"topk must be a TopKConfig, got {self.topk!r}")
        for name in ("samples",):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"{name} must be an integer >= 1, got {v!r}")
        if self.max_new_tokens is not None and (
            isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int)
            or self.max_new_tokens < 1
        ):
            raise InputError(f"max_new_tokens must be an integer >= 1, got "
                             f"{self.max_new_tokens!r}")
        self.out = Path(self.out)

    def settings(self) -> list[tuple[str, TopKConfig | None]]:
        """``(label, TopKConfig)`` of every k setting, in order (None: full attention): the
        base `topk` with the setting's k and k_ratio, built here, once per setting."""
        out: list[tuple[str, TopKConfig | None]] = []
        for label in self.ks:
            k, k_ratio = parse_k(label)
            out.append((label, None if k is None and k_ratio is None
                        else replace(self.topk, k=k, k_ratio=k_ratio)))
        return out

    def to_json(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["tasks"], d["lengths"], d["ks"] = list(self.tasks), list(self.lengths), list(self.ks)
        d["out"] = str(self.out)
        d["topk"] = self.topk.to_json()
        d["topk"].pop("k"), d["topk"].pop("k_ratio")  # each of ks sets them
        return d


# Settings that change what a finished line means: a rerun into the same folder must keep them
# (the Top-k ones are those of `EvalConfig.topk`; older folders stored them at the top level).
RESUME_FIELDS = ("samples", "seed", "max_new_tokens")
RESUME_TOPK_FIELDS = ("sink", "local", "dense_layers", "min_context", "granularity",
                      "selector", "backend", "phases")


def _resume_view(d: dict) -> dict:
    view = {f: d[f] for f in RESUME_FIELDS if f in d}
    topk = d.get("topk") if isinstance(d.get("topk"), dict) else d
    view.update({f: topk[f] for f in RESUME_TOPK_FIELDS if f in topk})
    if topk is d and isinstance(d.get("selector"), str):  # an older folder: the spec as typed
        from topkattn.selectors import parse_selector

        try:
            view["selector"] = selector_spec(parse_selector(d["selector"]))
        except (ValueError, FileNotFoundError):
            pass
    return view


def check_resumable(cfg: EvalConfig) -> None:
    """Raise ValueError when ``cfg.out`` holds results made with other settings (`RESUME_FIELDS`
    and the Top-k settings of `RESUME_TOPK_FIELDS`).

    Tasks, lengths and ks may change between runs into one folder (new cells are added); the
    sample count and seed may not, since a sample's id does not encode its needle depth.
    """
    path = Path(cfg.out) / CONFIG_FILE
    if not path.exists() or not (Path(cfg.out) / RESULTS_FILE).exists():
        return
    try:
        old = _resume_view(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, TypeError, AttributeError):
        return
    new = _resume_view(json.loads(json.dumps(cfg.to_json())))
    diff = [f"{f}={old[f]!r} (now {new[f]!r})" for f in new if f in old and old[f] != new[f]]
    if diff:
        raise InputError(f"output folder {str(cfg.out)!r} holds results made with "
                         f"{', '.join(diff)}; use the same settings to resume, or another --out")


def record_key(task: str, length: int, sample_id: str, k: str) -> str:
    """Resume key of one result line."""
    return f"{task}/{length}/{sample_id}/{k}"


def read_results(path: Path) -> list[dict]:
    """Result lines of a JSONL file (a torn last line from an interrupted run is ignored)."""
    if not path.exists():
        return []
    rows = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def _end_with_newline(path: Path) -> None:
    if path.exists() and path.stat().st_size:
        with path.open("rb") as f:
            f.seek(-1, 2)
            last = f.read(1)
        if last != b"\n":
            with path.open("a", encoding="utf-8") as f:
                f.write("\n")


def run_eval(model, tokenizer, cfg: EvalConfig) -> Summary:
    """Evaluate full attention and Top-k decoding at each k; write results; return a Summary.

    Raises ValueError when a length exceeds the model's context (``max_position_embeddings``)
    before any work is done.
    """
    import torch
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    from topkattn.tasks import get_task
    from topkattn.tasks.base import check_length

    t_start = time.perf_counter()
    max_len = getattr(model.config, "max_position_embeddings", None)
    for length in cfg.lengths:
        check_length(length, max_len)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    check_resumable(cfg)
    (out / CONFIG_FILE).write_text(json.dumps(cfg.to_json(), indent=2) + "\n")
    results_path = out / RESULTS_FILE
    done = {record_key(r["task"], r["length"], r["sample_id"], r["k"])
            for r in read_results(results_path)}
    settings = cfg.settings()
    _end_with_newline(results_path)  # a torn last line must not swallow the next record
    eos = eos_token_ids(model, tokenizer)
    tasks = [(name, get_task(name)) for name in cfg.tasks]

    was_training = model.training
    model.eval()
    columns = (TextColumn("[bold]eval[/] {task.description}"), BarColumn(),
               MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    total = len(tasks) * len(cfg.lengths) * cfg.samples
    expected: set[str] = set()
    try:
        with results_path.open("a", encoding="utf-8") as f, torch.no_grad(), \
                Progress(*columns, disable=not cfg.progress) as bar:
            prog = bar.add_task("", total=total)
            for name, task in tasks:
                label = task.name or name
                max_new = cfg.max_new_tokens or getattr(task, "max_new_tokens", 16)
                for length in cfg.lengths:
                    bar.update(prog, description=f"{label} {length}")
                    samples = task.samples(tokenizer, length, cfg.samples, cfg.seed,
                                           max_length=max_len)
                    for s in samples:
                        expected.update(record_key(label, length, s.id, k) for k, _ in settings)
                        todo = [(k, c) for k, c in settings
                                if record_key(label, length, s.id, k) not in done]
                        if todo:
                            _eval_sample(model, tokenizer, task, label, s, todo, max_new, eos, f,
                                         done)
                        bar.advance(prog)
    finally:
        if was_training:
            model.train()
    rows = [r for r in read_results(results_path)
            if record_key(r["task"], r["length"], r["sample_id"], r["k"]) in expected]
    summary = write_reports(cfg, rows, out)
    summary.seconds = time.perf_counter() - t_start
    return summary


def report_only(cfg: EvalConfig) -> Summary:
    """Summary, table and plot from the finished lines in ``cfg.out`` (no model is run).

    Uses every line whose task, length and k are in ``cfg`` (any sample count), so an
    interrupted or staged run can be reported as it stands.
    """
    from topkattn.tasks import get_task

    out = Path(cfg.out)
    path = out / RESULTS_FILE
    if not path.exists():
        raise MissingFileError(f"no results to report: {str(path)!r} does not exist")
    labels = {get_task(t).name or t for t in cfg.tasks}
    rows = [r for r in read_results(path)
            if r["task"] in labels and r["length"] in cfg.lengths and r["k"] in cfg.ks]
    return write_reports(cfg, rows, out)


def _eval_sample(model, tokenizer, task, label, s, todo, max_new, eos, f, done) -> None:
    """Prefill one sample once, then decode its answer for each (k, TopKConfig) in ``todo``."""
    configs = dict(todo)
    for br in decode_branches(model, tokenizer, s.prompt, todo, max_new, eos):
        topk = configs[br.label]
        rec = {
            "task": label, "length": s.length, "n_tokens": br.n_tokens,
            "depth": s.depth, "sample_id": s.id, "k": br.label,
            "k_value": topk.k if topk else None,
            "k_ratio": topk.k_ratio if topk else None,
            "prediction": br.text, "answer": s.answer, "answers": list(s.answers),
            "score": float(task.score(br.text, s)), "new_tokens": len(br.token_ids),
            "seconds": round(br.seconds, 4), "prefill_seconds": round(br.prefill_seconds, 4),
        }
        f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        f.flush()
        done.add(record_key(label, s.length, s.id, br.label))
