"""Accuracy of Top-k decoding against full attention on long-context tasks.

For every sample the prompt is prefilled ONCE with dense attention, except its last token
(``model(input_ids[:, :-1], use_cache=True)``). Then, for full attention and for each k, a deep
copy of that cache is taken, the last prompt token is fed as the first decode step and the
answer is decoded greedily inside ``sparsify(model, replace(cfg.topk, k=..., k_ratio=...))``,
so that even the first answer token comes from a Top-k decode step (Top-k Decoding, as in
arXiv 2512.03494). Full attention decodes inside ``sparsify(model, TopKConfig(k=None))``: the
same attention function, over key ranges.

Two-turn tasks (LongBench v2 with chain of thought, ``longbench_v2_cot:<file>``): where
`Task.followup` returns a second prompt built from a branch's first output, that prompt is
decoded in the same way and under the same setting (prefilled densely, decoded with full
attention or with the branch's Top-k config); the second output is the ``prediction`` that is
scored and the first is kept as ``reasoning``.

KV-cache compression baselines (NVIDIA kvpress presses, ``ks`` labels such as
``kvpress:snapkv@0.5``) are methods like the k settings: each prefills the prompt but its last
token under the press, then decodes greedily over the compressed cache
(`topkattn.integrations.kvpress_baseline.decode_press`); their lines carry ``press``,
``compression_ratio`` and ``kv_kept`` (mean cache length per layer after compression).

Batches (`EvalConfig.batch_size` > 1, `topkattn.evaluation.batch`): up to that many samples of
one task and length are left padded, prefilled together and decoded together per setting,
each row stopping on its own; their lines are written as each setting's rows finish and carry
``batch`` (samples evaluated together), with ``seconds`` and ``prefill_seconds`` the shared wall
times divided by the rows. Settings that cannot batch fall back to one sample at a time.

Results: ``results.jsonl`` gets one line per (sample, k), flushed at once; a rerun with the same
output folder skips finished (task, length, sample, k) keys, so an interrupted run resumes
(`topkattn.evaluation.records`: a torn last line is cut off first, with a warning). With a
`Shard` (``--shard i/n``, or torchrun's ``RANK``/``WORLD_SIZE``) the process evaluates its
part of the samples (`topkattn.evaluation.shard`) into ``results.shard-<i>-of-<n>.jsonl``;
finished results of any file in the folder are reused. `topkattn.evaluation.report` then writes
``summary.json``, ``table.md`` and ``accuracy.png`` from the results of every file, in one
fixed order, so that they equal an unsharded run's; a shard writes them when the folder holds
every result of the run (the last shard to finish), and ``report_only`` at any time.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from topkattn.config import TopKConfig, parse_k, parse_k_list, selector_spec
from topkattn.errors import InputError, MissingFileError
from topkattn.evaluation.records import (RESULTS_FILE, key_of, read_folder, read_results,
                                         record_key, repair_tail, result_files)
from topkattn.evaluation.report import Cell, Summary, write_reports  # noqa: F401  (Cell: re-exported)
from topkattn.evaluation.batch import blocker, decode_rows, note
from topkattn.evaluation.shard import Shard
from topkattn.generation import decode_branches, decode_one, eos_token_ids  # noqa: F401
from topkattn.integrations.kvpress_baseline import (PressSpec, check_press_model, decode_press,
                                                    is_press_label, parse_press,
                                                    parse_press_list, require_kvpress)

CONFIG_FILE = "eval_config.json"


class EvalInterrupted(KeyboardInterrupt):
    """`run_eval` stopped by Ctrl-C (or SIGINT): every finished result is in the folder.

    Attributes: ``new`` results written by this call, ``done`` and ``total`` results of this
    process's part of the run, ``path`` of its results file.
    """

    def __init__(self, new: int, done: int, total: int, path: Path) -> None:
        self.new, self.done, self.total, self.path = new, done, total, Path(path)
        super().__init__(str(self))

    def __str__(self) -> str:
        return (f"interrupted after {self.done} of {self.total} results ({self.new} new) in "
                f"{self.path}; rerun the same command to resume")


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
            is always measured and comes first. Also kvpress baselines,
            ``"kvpress:<press>@<ratio>"`` (`topkattn.integrations.kvpress_baseline`): they come
            after the k settings, one more method each.
        topk: the base `TopKConfig` shared by every k (sink, local, dense_layers,
            min_context, granularity, selector, backend, phases); its own k and k_ratio are
            replaced by each setting of ``ks`` (`settings`). Default: exact Top-k, nothing
            else kept.
        samples: samples per (task, length) cell; needle depths are swept across them.
        seed: task seed (the same seed gives the same prompts).
        max_new_tokens: greedy decode budget per answer; None uses each task's default.
        followup_max_new_tokens: budget of a two-turn task's second turn (LongBench v2 CoT's
            answer); None uses the task's ``followup_max_new_tokens``.
        out: output folder (``results.jsonl``, ``summary.json``, ``table.md``,
            ``accuracy.png``).
        progress: show a rich progress bar.
        batch_size: samples of one task and length prefilled and decoded per forward
            (left padded; `topkattn.evaluation.batch`); 1 evaluates one sample at a time.
            Answers and scores equal those of 1 (in fp32; bf16 kernels may round a near tie
            otherwise); settings that cannot batch fall back to 1 with a one-line note. Not a
            resume setting: a rerun into the same folder may change it.
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
    followup_max_new_tokens: int | None = None
    batch_size: int = 1

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
        items = self.ks.split(",") if isinstance(self.ks, str) else list(self.ks)
        press = [x for x in items if is_press_label(x)]
        rest = [x for x in items if not is_press_label(x)] or (["full"] if press else [])
        labels = [label for label, _ in parse_k_list(rest)]  # names a bad k
        # full first, then the sparse settings in the given order, then the presses
        self.ks = (("full",) + tuple(k for k in labels if k != "full")
                   + tuple(p.label for p in parse_press_list(press)))  # names a bad press
        if not isinstance(self.topk, TopKConfig):
            raise InputError(f"topk must be a TopKConfig, got {self.topk!r}")
        for name in ("samples", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"{name} must be an integer >= 1, got {v!r}")
        for name in ("max_new_tokens", "followup_max_new_tokens"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise InputError(f"{name} must be an integer >= 1, got {v!r}")
        self.out = Path(self.out)

    def settings(self) -> list[tuple[str, Any]]:
        """``(label, TopKConfig)`` of every k setting, in order (None: full attention): the
        base `topk` with the setting's k and k_ratio, built here, once per setting; a press
        label gives its `PressSpec`."""
        out: list[tuple[str, Any]] = []
        for label in self.ks:
            if is_press_label(label):
                out.append((label, parse_press(label)))
                continue
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

    @classmethod
    def from_json(cls, d: dict, **changes) -> "EvalConfig":
        """The config that `to_json` wrote (``eval_config.json``), with ``changes`` applied.

        Reads older folders too (Top-k settings at the top level, no ``topk``)."""
        from topkattn.selectors import parse_selector

        names = {f.name for f in fields(cls)} - {"topk"}
        kw = {k: v for k, v in d.items() if k in names}
        for k in ("tasks", "lengths", "ks"):
            if k in kw:
                kw[k] = tuple(kw[k])
        t = d.get("topk") if isinstance(d.get("topk"), dict) else d
        tk = {k: t[k] for k in RESUME_TOPK_FIELDS if k in t}
        for k in ("dense_layers", "phases"):
            if k in tk:
                tk[k] = tuple(tk[k])
        spec = tk.pop("selector", None)
        if "topk" not in changes:
            sel = None if spec in (None, "", "exact") else parse_selector(spec)
            kw["topk"] = TopKConfig(k=None, selector=sel, **tk)
        kw.update(changes)
        return cls(**kw)


# Settings that change what a finished line means: a rerun into the same folder must keep them
# (the Top-k ones are those of `EvalConfig.topk`; older folders stored them at the top level).
RESUME_FIELDS = ("samples", "seed", "max_new_tokens", "followup_max_new_tokens")
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
    if not path.exists() or not result_files(Path(cfg.out)):
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


def sort_rows(rows: list[dict], cfg: EvalConfig) -> list[dict]:
    """``rows`` in one fixed order, whatever file or shard each came from: task and length
    as in ``cfg``, then sample id (digit runs compared as numbers), then k as in ``cfg``."""
    def natural(text: str) -> tuple:
        return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(text)))

    tasks = {t: i for i, t in enumerate(_labels(cfg))}
    lengths = {n: i for i, n in enumerate(cfg.lengths)}
    ks = {k: i for i, k in enumerate(cfg.ks)}
    big = 1 << 30
    return sorted(rows, key=lambda r: (tasks.get(r["task"], big), str(r["task"]),
                                       lengths.get(r["length"], big), int(r["length"]),
                                       natural(r["sample_id"]), ks.get(r["k"], big),
                                       str(r["k"])))


def _labels(cfg: EvalConfig) -> list[str]:
    from topkattn.tasks import get_task

    return [get_task(t).name or t for t in cfg.tasks]


def _write_config(cfg: EvalConfig, out: Path) -> None:
    """``eval_config.json``, replaced atomically (shards may write it at the same time)."""
    tmp = out / f".{CONFIG_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(cfg.to_json(), indent=2) + "\n")
    os.replace(tmp, out / CONFIG_FILE)


def run_eval(model, tokenizer, cfg: EvalConfig, *, shard: "Shard | str | None" = None) -> Summary:
    """Evaluate full attention and Top-k decoding at each k; write results; return a Summary.

    ``shard``: a `Shard` (or ``"i/n"``, or ``"auto"`` for torchrun's ``RANK``/``WORLD_SIZE``)
    to evaluate only that part of the samples, into its own results file; None evaluates
    everything. The reports are written when the folder holds every result of the run; the
    returned Summary says so (``complete``) and counts what is missing.

    Raises ValueError when a length exceeds the model's context (``max_position_embeddings``)
    before any work is done, and `EvalInterrupted` (a KeyboardInterrupt) on Ctrl-C, after the
    finished results are safely written.
    """
    import torch
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    from topkattn.tasks import get_task
    from topkattn.tasks.base import check_length

    t_start = time.perf_counter()
    shard = Shard() if shard is None else Shard.parse(shard)
    max_len = getattr(model.config, "max_position_embeddings", None)
    for length in cfg.lengths:
        check_length(length, max_len)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    check_resumable(cfg)
    _write_config(cfg, out)
    results_path = out / shard.results_name
    repair_tail(results_path)  # a torn last line must not swallow the next record
    done = {key_of(r) for r in read_folder(out)}
    n_before = len(done)
    settings = cfg.settings()
    if any(isinstance(c, PressSpec) for _, c in settings):
        check_press_model(model)  # before any work; kvpress is imported on the first press
        require_kvpress()
    eos = eos_token_ids(model, tokenizer)
    tasks = [(name, get_task(name)) for name in cfg.tasks]

    was_training = model.training
    model.eval()
    columns = (TextColumn("[bold]eval[/] {task.description}"), BarColumn(),
               MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    n_all = len(tasks) * len(cfg.lengths) * cfg.samples
    total = len([i for i in range(n_all) if shard.owns(i)])
    expected: set[str] = set()
    mine: set[str] = set()
    number = 0
    try:
        with results_path.open("a", encoding="utf-8") as f, torch.no_grad(), \
                Progress(*columns, disable=not cfg.progress) as bar:
            prog = bar.add_task("", total=total)
            for name, task in tasks:
                label = task.name or name
                max_new = cfg.max_new_tokens or getattr(task, "max_new_tokens", 16)
                follow_new = (cfg.followup_max_new_tokens
                              or getattr(task, "followup_max_new_tokens", 128))
                for length in cfg.lengths:
                    bar.update(prog, description=f"{label} {length}"
                               + (f" (shard {shard.label})" if shard.sharded else ""))
                    samples = task.samples(tokenizer, length, cfg.samples, cfg.seed,
                                           max_length=max_len)
                    pending: list[tuple[Any, tuple]] = []  # (sample, settings still to do)
                    for s in samples:
                        keys = [record_key(label, length, s.id, k) for k, _ in settings]
                        expected.update(keys)
                        owned = shard.owns(number)
                        number += 1
                        if not owned:
                            continue
                        mine.update(keys)
                        todo = tuple((k, c) for (k, c), key in zip(settings, keys)
                                     if key not in done)
                        if not todo:
                            bar.advance(prog)
                            continue
                        pending.append((s, todo))
                        if len(pending) == cfg.batch_size:
                            _eval_pending(model, tokenizer, task, label, pending, max_new, eos,
                                          f, done, follow_new)
                            bar.advance(prog, len(pending))
                            pending = []
                    if pending:
                        _eval_pending(model, tokenizer, task, label, pending, max_new, eos, f,
                                      done, follow_new)
                        bar.advance(prog, len(pending))
    except KeyboardInterrupt as e:
        if isinstance(e, EvalInterrupted):
            raise
        n_mine = len([k for k in done if k in mine])
        raise EvalInterrupted(len(done) - n_before, n_mine, total * len(settings),
                              results_path) from None
    finally:
        if was_training:
            model.train()
    return _finish(cfg, out, expected, shard, results_path, t_start)


def _finish(cfg: EvalConfig, out: Path, expected: set[str], shard: Shard, results_path: Path,
            t_start: float) -> Summary:
    """The Summary of the results of every file in ``out`` that belong to the run; the
    reports are written only when none is missing (an unsharded run always writes them)."""
    from topkattn.evaluation.report import aggregate

    rows = sort_rows([r for r in read_folder(out) if key_of(r) in expected], cfg)
    missing = len(expected) - len(rows)
    if missing and shard.sharded:  # other shards still running: the last one reports
        summary = Summary(config=cfg, cells=aggregate(rows), out=out,
                          files={"results": results_path}, complete=False, missing=missing)
    else:
        summary = write_reports(cfg, rows, out)
        summary.files["results"] = results_path
        summary.complete, summary.missing = missing == 0, missing
    summary.shard = shard.label if shard.sharded else None
    summary.seconds = time.perf_counter() - t_start
    return summary


def report_only(cfg: EvalConfig) -> Summary:
    """Summary, table and plot from the finished lines in ``cfg.out`` (no model is run).

    Uses every line of every results file in the folder (``results.jsonl`` and the shard files)
    whose task, length and k are in ``cfg`` (any sample count), so an interrupted, staged or
    sharded run can be reported as it stands. Result files are only read.

    Raises `MissingFileError` when the folder holds no results, `InputError` when none of
    them is of ``cfg``'s tasks, lengths and ks (naming what the folder holds), and
    `InputError` when the reports would replace a ``summary.json`` that counts more results
    (`topkattn.evaluation.report.check_not_less`).
    """
    from topkattn.evaluation.report import check_not_less

    out = Path(cfg.out)
    files = result_files(out)
    all_rows = read_folder(out)
    if not all_rows:
        what = (f"{', '.join(repr(str(p)) for p in files)} holds no finished result" if files
                else f"no results file ({RESULTS_FILE} or results.shard-*.jsonl) in {str(out)!r}")
        raise MissingFileError(f"no results to report: {what}")
    labels = set(_labels(cfg))
    rows = [r for r in all_rows
            if r["task"] in labels and r["length"] in cfg.lengths and r["k"] in cfg.ks]
    if not rows:
        held = sorted({(r["task"], r["length"], r["k"]) for r in all_rows}, key=str)
        raise InputError(
            f"no results in {str(out)!r} for tasks {sorted(labels)}, lengths "
            f"{list(cfg.lengths)} and k {list(cfg.ks)}; the folder holds tasks "
            f"{sorted({t for t, _, _ in held})}, lengths {sorted({n for _, n, _ in held})}, k "
            f"{sorted({k for _, _, k in held})}")
    rows = sort_rows(rows, cfg)
    check_not_less(out, rows)
    return write_reports(cfg, rows, out)


def _eval_pending(model, tokenizer, task, label, pending, max_new, eos, f, done,
                  followup_max_new: int = 128) -> int:
    """`_eval_batch` for each group of the samples in ``pending`` ((sample, todo) pairs of one
    task and length) that have the same settings still to do (all of them, but after an
    interrupted run). Returns lines written."""
    groups: dict[tuple, list] = {}
    for s, todo in pending:
        groups.setdefault(tuple(k for k, _ in todo), []).append((s, todo))
    return sum(_eval_batch(model, tokenizer, task, label, [s for s, _ in g], list(g[0][1]),
                           max_new, eos, f, done, followup_max_new)
               for g in groups.values())


def _eval_batch(model, tokenizer, task, label, samples, todo, max_new, eos, f, done,
                followup_max_new: int = 128) -> int:
    """Prefill the samples (one task and length) together, then decode each one's answer for
    each (k, TopKConfig) in ``todo`` (`topkattn.evaluation.batch.decode_rows`; one sample:
    the batch-1 protocol); a two-turn task's second turn is decoded under the same setting,
    the rows of a piece together. Each line is written as its piece of rows finishes. Returns
    lines written."""
    configs = dict(todo)
    follow = getattr(task, "followup", None)
    n = 0
    for k, piece in _branches(model, tokenizer, [s.prompt for s in samples], todo, max_new,
                              eos):
        topk = configs[k]
        press = topk if isinstance(topk, PressSpec) else None
        recs = [_record(label, samples[r], br, topk, press, len(samples)) for r, br in piece]
        if follow is not None:
            turn2 = [follow(tokenizer, samples[r], br.text) for r, br in piece]
            asked = [i for i, p in enumerate(turn2) if p is not None]
            for i, br2 in _second_turn(model, tokenizer, [turn2[i] for i in asked], k, topk,
                                       followup_max_new, eos):
                rec = recs[asked[i]]
                rec.update(prediction=br2.text, reasoning=rec["prediction"],
                           followup_n_tokens=br2.n_tokens,
                           followup_new_tokens=len(br2.token_ids),
                           followup_seconds=round(br2.seconds + br2.prefill_seconds, 4))
        for (r, _), rec in zip(piece, recs):
            rec["score"] = float(task.score(rec["prediction"], samples[r]))
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            done.add(record_key(label, rec["length"], rec["sample_id"], k))
            n += 1
    return n


def _record(label: str, s, br, topk, press, batch: int) -> dict:
    """The result line of sample ``s`` answered by ``br`` under ``topk`` (score set later);
    ``batch``: samples decoded together (recorded when above 1)."""
    rec = {
        "task": label, "length": s.length, "n_tokens": br.n_tokens,
        "depth": s.depth, "sample_id": s.id, "k": br.label,
        "k_value": topk.k if topk and not press else None,
        "k_ratio": topk.k_ratio if topk and not press else None,
        "prediction": br.text, "answer": s.answer, "answers": list(s.answers),
        "score": 0.0, "new_tokens": len(br.token_ids),
        "seconds": round(br.seconds, 4), "prefill_seconds": round(br.prefill_seconds, 4),
    }
    if press is not None:
        rec.update(press=press.name, compression_ratio=press.compression_ratio,
                   kv_kept=round(br.kv_kept, 2))
    if batch > 1:
        rec["batch"] = batch
    return rec


def _second_turn(model, tokenizer, prompts, label, topk, max_new, eos):
    """(index into ``prompts``, Branch) of the second turn of each prompt under ``topk``."""
    for _, piece in _branches(model, tokenizer, prompts, [(label, topk)], max_new, eos):
        yield from piece


def _branches(model, tokenizer, prompts, todo, max_new, eos):
    """`decode_rows` for the k settings of ``todo`` (one dense prefill of the prompts), then
    one `decode_press` per kvpress baseline and prompt (a compressed prefill each). Yields
    (k label, [(row, Branch), ...])."""
    dense = [(k, c) for k, c in todo if not isinstance(c, PressSpec)]
    if dense:
        yield from decode_rows(model, tokenizer, prompts, dense, max_new, eos)
    for k, c in todo:
        if isinstance(c, PressSpec):
            if len(prompts) > 1:
                note(f"{k}: {blocker(c)}")
            for r, prompt in enumerate(prompts):
                yield k, [(r, decode_press(model, tokenizer, prompt, c, max_new, eos, label=k))]
