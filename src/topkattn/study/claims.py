"""The four experiments, each run through the existing APIs, and their analyses.

Stages (`plan`), in an order that loads each model once:

- ``claim1-eval``: `topkattn.evaluation.run_eval` of the base model, full attention and exact
  Top-k at every ratio and absolute k, on the same samples (JSONL resume inside).
- ``claim3-L<length>``: per sample, `topkattn.analysis.fidelity.measure_fidelity` (precision
  and attention-mass recall of every selector and ``precision:p`` setting on the dense
  trajectory) and `run_downstream` (its accuracy under Top-k decoding); one JSONL line per
  sample (resume inside).
- ``claim2-eval-base`` / ``claim4-base``: the base model under full attention and Top-k
  decoding at claim 2's ratios; its per-prompt, per-step attention entropy (one JSONL line
  per prompt, resume inside).
- per fine-tune (``dense-s<seed>``, ``topk-s<seed>``): ``claim2-train-<name>``
  (`topkattn.train.sft.train`, same data, recipe and seed, dense vs Top-k at rho; checkpoint
  resume inside), ``claim2-eval-<name>``, ``claim4-<name>``.

``analyze_claim1`` ... ``analyze_claim4`` read only the stage results (compact per-sample
rows), so the verdict logic can be tested on synthetic result files.
"""

from __future__ import annotations

import gc
import json
import math
from pathlib import Path
from typing import Callable

import numpy as np

from topkattn.errors import InputError
from topkattn.study import stats as S
from topkattn.study.config import StudyConfig, ratio_label
from topkattn.study.stages import Stage, StageIncomplete

ARMS = ("dense", "topk")


# ---------------------------------------------------------------------------------------------
# Models, one loaded at a time


class Models:
    """Loads the study's models by name (``base`` or a fine-tune ``dense-s0``), one at a
    time; the first load of any model checks every length of the study against its context."""

    def __init__(self, cfg: StudyConfig, log: Callable[[str], None] | None = None):
        self.cfg = cfg
        self.log = log or (lambda text: None)
        self.name: str | None = None
        self.pair = None
        self.checked = False

    def source(self, name: str) -> str:
        return self.cfg.model if name == "base" else str(finetune_dir(self.cfg, name))

    def get(self, name: str):
        """(model, tokenizer) of ``name``, loaded on the study's device."""
        if self.name != name:
            from topkattn.models import load_model

            self.release()
            self.log(f"loading model {name} ({self.source(name)})")
            self.pair = load_model(self.source(name), device=self.cfg.device)
            self.name = name
            if not self.checked:
                check_lengths(self.cfg, self.pair[0])
                self.checked = True
        return self.pair

    def release(self) -> None:
        if self.pair is not None:
            self.pair, self.name = None, None
            gc.collect()
            try:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except Exception:  # pragma: no cover - cleanup only
                pass


def study_lengths(cfg: StudyConfig) -> dict[str, int]:
    """Every prompt length the study will run, by where it is used."""
    b, out = cfg.budget, {}
    if 1 in cfg.claims:
        out.update({f"claim 1 length {x}": x for x in b.claim1.lengths})
    if cfg.needs_finetunes:
        out[f"claim 2 train length {b.claim2.train_length}"] = b.claim2.train_length + 32
    if 2 in cfg.claims:
        out.update({f"claim 2 length {x}": x for x in b.claim2.eval_lengths})
    if 3 in cfg.claims:
        out.update({f"claim 3 length {x}": x for x in b.claim3.lengths})
    if 4 in cfg.claims:
        out[f"claim 4 length {b.claim4.length}"] = b.claim4.length
    return out


def precheck_lengths(cfg: StudyConfig) -> None:
    """`check_lengths` before any model is loaded, where the model is a saved folder (its
    ``config.json`` gives the context); other models are checked when they are loaded."""
    path = Path(cfg.model).expanduser() / "config.json"
    if not path.is_file():
        return
    try:
        conf = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return
    ctx = conf.get("max_position_embeddings") or (conf.get("text_config") or {}).get(
        "max_position_embeddings")
    if isinstance(ctx, int):
        _check(cfg, ctx)


def check_lengths(cfg: StudyConfig, model) -> None:
    """`InputError` naming the first length beyond the model's ``max_position_embeddings``."""
    _check(cfg, getattr(model.config, "max_position_embeddings", None))


def _check(cfg: StudyConfig, ctx: int | None) -> None:
    if not ctx:
        return
    for what, n in study_lengths(cfg).items():
        if n > ctx:
            raise InputError(f"{what} exceeds the model's context (max_position_embeddings="
                             f"{ctx}); give shorter --lengths or another model")


def finetune_names(cfg: StudyConfig) -> list[str]:
    return [f"{arm}-s{seed}" for seed in cfg.budget.claim2.seeds for arm in ARMS]


def finetune_dir(cfg: StudyConfig, name: str) -> Path:
    return Path(cfg.out) / "claim2" / "train" / name


# ---------------------------------------------------------------------------------------------
# Reading evaluation results (compact rows)


def read_eval_rows(folder: Path) -> list[list]:
    """``[task, length, sample_id, k, score]`` of every result line in an evaluation folder
    (every ``results*.jsonl``; a torn line is skipped; the last line of a key wins)."""
    rows: dict[tuple, list] = {}
    for f in sorted(Path(folder).glob("results*.jsonl")):
        with f.open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    r = json.loads(line)
                    key = (r["task"], int(r["length"]), str(r["sample_id"]), str(r["k"]))
                    rows[key] = list(key) + [float(r["score"])]
                except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                    continue
    return list(rows.values())


def _eval(cfg: StudyConfig, models: Models, name: str, folder: Path, tasks, lengths, ks,
          samples: int, max_new_tokens) -> dict:
    from topkattn.config import TopKConfig
    from topkattn.evaluation import EvalConfig, run_eval

    model, tok = models.get(name)
    ecfg = EvalConfig(tasks=tuple(tasks), lengths=tuple(lengths), ks=tuple(ks),
                      topk=TopKConfig(k=None), samples=samples, seed=cfg.seed,
                      max_new_tokens=max_new_tokens, out=folder, progress=cfg.progress,
                      batch_size=cfg.eval_batch_size(next(model.parameters()).device))
    summary = run_eval(model, tok, ecfg, shard=cfg.shard)
    if not summary.complete:  # other shards' results are not all in the folder yet
        raise StageIncomplete(f"{summary.missing} results of other shards missing")
    want = set(ecfg.ks)
    rows = [r for r in read_eval_rows(folder) if r[3] in want and r[1] in ecfg.lengths]
    return {"model": name, "folder": str(folder), "ks": list(ecfg.ks), "rows": rows}


# ---------------------------------------------------------------------------------------------
# Stage functions


def claim1_ks(cfg: StudyConfig) -> list[str]:
    c = cfg.budget.claim1
    return [ratio_label(r) for r in c.ratios] + [str(k) for k in c.abs_ks]


def run_claim1(cfg: StudyConfig, models: Models) -> dict:
    c = cfg.budget.claim1
    return _eval(cfg, models, "base", Path(cfg.out) / "claim1" / "eval", cfg.claim1_tasks,
                 c.lengths, claim1_ks(cfg), c.samples, c.max_new_tokens)


def run_claim2_train(cfg: StudyConfig, models: Models, arm: str, seed: int) -> dict:
    from topkattn.config import TopKConfig
    from topkattn.train.sft import TrainConfig, train

    c = cfg.budget.claim2
    models.release()  # train loads its own copy
    topk = (TopKConfig(k=None, phases=("decode", "prefill")) if arm == "dense" else
            TopKConfig(k=None, k_ratio=c.train_rho, phases=("decode", "prefill")))
    out = finetune_dir(cfg, f"{arm}-s{seed}")
    save_every = max(1, c.steps // 4) if c.steps >= 8 else 0
    tcfg = TrainConfig(
        data=f"synthetic:{','.join(c.train_tasks)}@{c.train_length}x{c.train_samples}",
        out=str(out), model=cfg.model, topk=topk, max_length=c.train_length + 32,
        batch_size=c.batch_size, grad_accum=c.grad_accum, lr=c.lr,
        warmup_steps=min(c.warmup_steps, c.steps), max_steps=c.steps, save_every=save_every,
        keep_checkpoints=1, seed=seed, device=cfg.device)
    done = _finished_training(out, tcfg)
    if done is None:  # train resumes from its own checkpoints after a kill
        res = train(tcfg, progress=cfg.progress)
        done = {"steps": res.steps, "first_loss": res.losses[0] if res.losses else None,
                "final_loss": res.final_loss, "seconds": round(res.seconds, 1)}
    import shutil

    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # the final model is saved
    return {"model_dir": str(out), "arm": arm, "seed": seed, **done, "topk": topk.to_json()}


def _finished_training(out: Path, tcfg) -> dict | None:
    """The summary of a training run that already finished in ``out`` with the same settings
    (killed after training, before its stage file was written), else None."""
    path = out / "train_summary.json"
    if not path.is_file() or not any(out.glob("*.safetensors")):
        return None
    try:
        summ = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    skip = ("out", "device")
    want = {k: v for k, v in json.loads(json.dumps(tcfg.to_dict())).items() if k not in skip}
    have = {k: v for k, v in (summ.get("config") or {}).items() if k not in skip}
    if have != want or summ.get("steps") != tcfg.max_steps:
        return None
    return {"steps": summ["steps"], "first_loss": summ.get("first_loss"),
            "final_loss": summ.get("final_loss"), "seconds": summ.get("seconds")}


def run_claim2_eval(cfg: StudyConfig, models: Models, name: str) -> dict:
    c = cfg.budget.claim2
    return _eval(cfg, models, name, Path(cfg.out) / "claim2" / "eval" / name, c.eval_tasks,
                 c.eval_lengths, [ratio_label(r) for r in c.eval_ratios], c.samples,
                 c.max_new_tokens)


def claim3_specs(cfg: StudyConfig) -> list[str]:
    """The selectors and the precision:p dial (p < 1 with and without protect; p = 1 is
    ``exact`` when that is among the selectors)."""
    c = cfg.budget.claim3
    specs = list(c.selectors)
    for p in c.p_values:
        if p >= 1.0 and "exact" in specs:
            continue
        specs.append(f"precision:{p:g}")
    specs += [f"precision:{p:g},protect={c.protect}" for p in c.p_values if p < 1.0]
    return list(dict.fromkeys(specs))


def run_claim3(cfg: StudyConfig, models: Models, length: int) -> dict:
    """Fidelity and downstream accuracy of every setting, per sample (`per_sample`: JSONL,
    resumable, shardable)."""
    from topkattn.analysis.fidelity import measure_fidelity, run_downstream
    from topkattn.config import TopKConfig
    from topkattn.tasks import get_task

    c = cfg.budget.claim3
    specs = claim3_specs(cfg)
    topk = TopKConfig(k=None, k_ratio=c.rho)
    model, tok = models.get("base")
    task = get_task(c.task)
    samples = task.samples(tok, length, c.samples, cfg.seed,
                           max_length=getattr(model.config, "max_position_embeddings", None))

    def one(s) -> dict:
        fid = measure_fidelity(model, tok, [s.prompt], topk, specs,
                               max_new_tokens=c.fidelity_steps, progress=False)
        rows = run_downstream(model, tok, task, [s], topk, specs,
                              max_new_tokens=c.max_new_tokens, progress=False)
        return {"sample_id": s.id, "length": length,
                "fidelity": {lab: {"precision": fid[lab]["precision"],
                                   "mass_recall": fid[lab]["mass_recall"],
                                   "out_err": fid[lab]["out_err"]} for lab in specs},
                "scores": {r.selector: r.accuracy for r in rows}}

    recs = per_sample(cfg, Path(cfg.out) / "claim3", f"samples-{length}", samples, one,
                      f"claim 3 fidelity + accuracy, {length} tokens")
    return {"length": length, "task": c.task, "rho": c.rho, "specs": specs, "samples": recs}


def sample_files(folder: Path, stem: str) -> list[Path]:
    """The per-sample files of one stage in ``folder``: ``<stem>.jsonl`` and every shard's
    ``<stem>.shard-<i>-of-<n>.jsonl``."""
    return sorted(folder.glob(f"{stem}.jsonl")) + sorted(folder.glob(f"{stem}.shard-*-of-*.jsonl"))


def per_sample(cfg: StudyConfig, folder: Path, stem: str, samples, work: Callable[[object], dict],
               what: str) -> list[dict]:
    """``work(sample)`` (a JSON-ready dict with ``sample_id``) for each of ``samples`` that
    ``cfg.shard`` owns and no file of the stage holds yet, one line each, flushed, in
    ``folder/<stem>.jsonl`` (sharded: ``<stem>.shard-<i>-of-<n>.jsonl``). Returns every
    sample's record in sample order; raises `StageIncomplete` when other shards' samples are
    still missing. A kill loses at most the sample in progress."""
    from rich.progress import Progress

    folder.mkdir(parents=True, exist_ok=True)
    part = cfg.shard
    path = folder / (f"{stem}.jsonl" if not part.sharded else
                     f"{stem}.shard-{part.index}-of-{part.count}.jsonl")
    done = {r["sample_id"]: r for f in sample_files(folder, stem) for r in _read_jsonl(f)}
    mine = [s for i, s in enumerate(samples) if part.owns(i)]
    label = f" (shard {part.label})" if part.sharded else ""
    with path.open("a", encoding="utf-8") as f, Progress(disable=not cfg.progress) as bar:
        job = bar.add_task(what + label, total=len(mine),
                           completed=sum(1 for s in mine if s.id in done))
        for s in mine:
            if s.id in done:
                continue
            rec = work(s)
            f.write(json.dumps(rec) + "\n")
            f.flush()
            done[s.id] = rec
            bar.advance(job)
    want = [s.id for s in samples]
    if part.sharded:  # the other shards' lines written since this one started
        done.update({r["sample_id"]: r for f in sample_files(folder, stem)
                     for r in _read_jsonl(f)})
        missing = sum(1 for i in want if i not in done)
        if missing:
            raise StageIncomplete(f"{missing} samples of other shards missing")
    return [done[i] for i in want if i in done]


def _read_jsonl(path: Path) -> list[dict]:
    out = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line of a killed run
    return out


def run_claim4(cfg: StudyConfig, models: Models, name: str) -> dict:
    """Per prompt and decode step: per-layer dense entropy, top-k entropy and mass
    (`per_sample`: one JSONL line per prompt, resumable, shardable)."""
    import torch

    from topkattn.analysis.entropy import capture_entropy
    from topkattn.tasks import get_task

    c = cfg.budget.claim4
    model, tok = models.get(name)
    task = get_task(c.task)
    samples = task.samples(tok, c.length, c.prompts, cfg.seed,
                           max_length=getattr(model.config, "max_position_embeddings", None))
    dev = next(model.parameters()).device

    def one(s) -> dict:
        with capture_entropy(model, list(c.ks)) as acc:
            ids = tok(s.prompt, return_tensors="pt", add_special_tokens=False)
            ids = {k: v.to(dev) for k, v in ids.items()}
            out = model(**ids, use_cache=True)
            past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            mask = ids["attention_mask"]
            steps, prev = [], _snapshot(acc)
            for _ in range(c.decode_steps):
                mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
                out = model(input_ids=nxt, attention_mask=mask, past_key_values=past,
                            use_cache=True)
                past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
                now = _snapshot(acc)
                steps.append(_delta(prev, now, c.ks))
                prev = now
        return {"sample_id": s.id, "steps": steps}

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            prompts = per_sample(cfg, Path(cfg.out) / "claim4", name, samples, one,
                                 f"claim 4 entropy {name}")
    finally:
        if was_training:
            model.train()
    return {"model": name, "task": c.task, "length": c.length, "ks": list(c.ks),
            "prompts": prompts}


def _snapshot(acc) -> dict:
    """Copies of the accumulator's running sums: {layer: (entropy [H], count, {k: (H, mass)})}."""
    return {L: (slot["entropy"].clone(), slot["count"],
                {k: (t["entropy"].clone(), t["mass"].clone()) for k, t in slot["topk"].items()})
            for L, slot in acc.sums.items()}


def _delta(prev: dict, now: dict, ks) -> dict:
    """One decode step's per-layer means over heads: entropy, topk entropy, mass per k."""
    layers = sorted(now)
    ent, tk, ms = [], {k: [] for k in ks}, {k: [] for k in ks}
    for L in layers:
        e1, n1, t1 = now[L]
        e0, n0, t0 = prev.get(L, (e1 * 0, 0, {k: (v[0] * 0, v[1] * 0) for k, v in t1.items()}))
        dn = max(1, n1 - n0)
        ent.append(float((e1 - e0).mean()) / dn)
        for k in ks:
            tk[k].append(float((t1[k][0] - t0[k][0]).mean()) / dn)
            ms[k].append(float((t1[k][1] - t0[k][1]).mean()) / dn)
    return {"entropy": ent, "topk_entropy": tk, "mass": ms}


# ---------------------------------------------------------------------------------------------
# The plan


def plan(cfg: StudyConfig, models: Models) -> list[Stage]:
    """The stages of ``cfg.claims`` in run order (base-model stages first, then per
    fine-tune: train, evaluate, entropy)."""
    st: list[Stage] = []
    if 1 in cfg.claims:
        st.append(Stage("claim1-eval", cfg.key("claim1"), lambda: run_claim1(cfg, models),
                        ("base",), shardable=True))
    if 3 in cfg.claims:
        for L in cfg.budget.claim3.lengths:
            st.append(Stage(f"claim3-L{L}", cfg.key("claim3"),
                            lambda L=L: run_claim3(cfg, models, L), ("base",),
                            shardable=True))
    if 2 in cfg.claims:
        st.append(Stage("claim2-eval-base", cfg.key("eval"),
                        lambda: run_claim2_eval(cfg, models, "base"), ("base",),
                        shardable=True))
    if 4 in cfg.claims:
        st.append(Stage("claim4-base", cfg.key("claim4"),
                        lambda: run_claim4(cfg, models, "base"), ("base",),
                        shardable=True))
    if cfg.needs_finetunes:
        for seed in cfg.budget.claim2.seeds:
            for arm in ARMS:
                name = f"{arm}-s{seed}"
                st.append(Stage(f"claim2-train-{name}", cfg.key("train"),
                                lambda a=arm, s=seed: run_claim2_train(cfg, models, a, s)))
                if 2 in cfg.claims:
                    st.append(Stage(f"claim2-eval-{name}", cfg.key("train", "eval"),
                                    lambda n=name: run_claim2_eval(cfg, models, n), (name,),
                                    shardable=True))
                if 4 in cfg.claims:
                    st.append(Stage(f"claim4-{name}", cfg.key("train", "claim4"),
                                    lambda n=name: run_claim4(cfg, models, n), (name,),
                                    shardable=True))
    return st


# ---------------------------------------------------------------------------------------------
# Analyses (stage results -> statistics)


def _index(rows: list[list]) -> dict[tuple, dict[str, float]]:
    """(task, length, sample_id) -> {k: score}."""
    out: dict[tuple, dict[str, float]] = {}
    for task, length, sid, k, score in rows:
        out.setdefault((task, int(length), sid), {})[k] = float(score)
    return out


def _k_info(label: str) -> tuple[float | None, int | None]:
    from topkattn.config import parse_k

    k, rho = parse_k(label)
    return rho, k


def analyze_claim1(result: dict, cfg_rules, seed: int = 0) -> dict:
    """Per cell and pooled paired statistics of Top-k vs full attention.

    ``result``: the ``claim1-eval`` stage result (``rows``, ``ks``). A cell (task, length)
    is informative when full attention scores >= ``rules.informative_full`` there; the pooled
    difference per k covers the informative cells, with a 95% and a Bonferroni-adjusted
    interval (over the ratios <= ``rules.max_rho``), stratified by cell.
    """
    rules = cfg_rules
    idx = _index(result["rows"])
    ks = [k for k in result["ks"] if k != "full"]
    cells_of: dict[tuple, list] = {}
    for key in idx:
        cells_of.setdefault(key[:2], []).append(key)
    tested = [k for k in ks if (_k_info(k)[0] or 2) <= rules.max_rho + 1e-12]
    m = max(1, len(tested))
    level_adj = 1 - rules.alpha / m
    cells = []
    informative: set[tuple] = set()
    for cell, keys in cells_of.items():
        full = [idx[s]["full"] for s in keys if "full" in idx[s]]
        fa = S.accuracy_ci(full)
        if fa["n"] and fa["accuracy"] >= rules.informative_full:
            informative.add(cell)
        for k in ks:
            pairs = [(idx[s][k], idx[s]["full"]) for s in keys if k in idx[s] and "full" in idx[s]]
            if not pairs:
                continue
            x, y = [p[0] for p in pairs], [p[1] for p in pairs]
            pb = S.paired_bootstrap(x, y, n_boot=rules.n_boot, level=1 - rules.alpha, seed=seed)
            cells.append({"task": cell[0], "length": cell[1], "k": k, "n": len(pairs),
                          "topk": S.accuracy_ci(x), "full": S.accuracy_ci(y),
                          "diff": pb["diff"], "ci": pb["ci"], "mcnemar": S.mcnemar(x, y),
                          "informative": cell in informative})
    pooled = {}
    for k in ks:
        rho, kabs = _k_info(k)
        # cells in a fixed order: a set's order follows string hashes, which differ between
        # processes, and the stratified bootstrap's draws follow the order of the samples
        keys = [s for cell in sorted(informative) for s in cells_of[cell]
                if k in idx[s] and "full" in idx[s]]
        x = [idx[s][k] for s in keys]
        y = [idx[s]["full"] for s in keys]
        strata = [s[:2] for s in keys]
        pb = S.paired_bootstrap(x, y, strata=strata, n_boot=rules.n_boot,
                                level=1 - rules.alpha, seed=seed)
        pa = S.paired_bootstrap(x, y, strata=strata, n_boot=rules.n_boot, level=level_adj,
                                seed=seed)
        pooled[k] = {"rho": rho, "k": kabs, "n": len(keys), "cells": len({s[:2] for s in keys}),
                     "topk": S.accuracy_ci(x), "full": S.accuracy_ci(y), "diff": pb["diff"],
                     "ci": pb["ci"], "ci_adj": pa["ci"], "level_adj": level_adj,
                     "mcnemar": S.mcnemar(x, y)}
    return {"cells": cells, "pooled": pooled,
            "informative_cells": sorted([list(c) for c in informative]),
            "all_cells": sorted([list(c) for c in cells_of])}


def _finetune_results(stages: dict[str, dict], prefix: str) -> dict[str, dict]:
    """{model name: stage result} of the stages named ``prefix<name>``."""
    return {n[len(prefix):]: rec["result"] for n, rec in stages.items() if n.startswith(prefix)}


def analyze_claim2(stages: dict[str, dict], rules, train_length: int, seed: int = 0) -> dict:
    """Top-k-SFT vs dense-SFT under Top-k decoding, paired on samples, seeds averaged.

    ``stages``: ``{stage name: record}`` holding ``claim2-eval-<model>`` (and
    ``claim2-train-<model>``) records. The primary difference pools every Top-k ratio,
    task and length: per (ratio, sample) the seed-mean score of the Top-k fine-tunes minus
    that of the dense ones, bootstrapped over samples (clusters: a sample's ratios together;
    strata: (task, length)).
    """
    evals = _finetune_results(stages, "claim2-eval-")
    trains = _finetune_results(stages, "claim2-train-")
    seeds = sorted({int(n.split("-s")[1]) for n in evals if n != "base"
                    and f"dense-s{n.split('-s')[1]}" in evals
                    and f"topk-s{n.split('-s')[1]}" in evals})
    idx = {name: _index(r["rows"]) for name, r in evals.items()}
    ks = next((r["ks"] for r in evals.values()), [])
    sparse = [k for k in ks if k != "full"]
    out: dict = {"seeds": seeds, "train_length": train_length, "ks": ks,
                 "training": {n: {k: t.get(k) for k in ("first_loss", "final_loss", "steps",
                                                        "seconds")}
                              for n, t in trains.items()}}
    # accuracy of each model group per (k, length) and pooled
    groups = {"base": ["base"], "dense_sft": [f"dense-s{s}" for s in seeds],
              "topk_sft": [f"topk-s{s}" for s in seeds]}
    table = []
    for g, names in groups.items():
        names = [n for n in names if n in idx]
        if not names:
            continue
        for k in ks:
            lengths = sorted({key[1] for n in names for key in idx[n]})
            for L in lengths + ["all"]:
                sc = [v[k] for n in names for key, v in idx[n].items()
                      if k in v and (L == "all" or key[1] == L)]
                if sc:
                    table.append({"group": g, "k": k, "length": L, **S.accuracy_ci(sc)})
    out["accuracy"] = table
    if "base" in idx:  # what Top-k decoding costs the base model
        base = idx["base"]
        cost = {}
        for k in sparse:
            keys = [s for s, v in base.items() if k in v and "full" in v]
            pb = S.paired_bootstrap([base[s]["full"] for s in keys], [base[s][k] for s in keys],
                                    strata=[s[:2] for s in keys], n_boot=rules.n_boot,
                                    level=1 - rules.alpha, seed=seed)
            cost[k] = {"diff": pb["diff"], "ci": pb["ci"], "n": pb["n"]}
        out["base_cost"] = cost
    if not seeds:
        out["primary"] = None
        return out

    def paired(keep: Callable[[tuple, str], bool]) -> dict:
        units, x, y = [], [], []
        common = set.intersection(*(set(idx[f"{a}-s{s}"]) for s in seeds for a in ARMS))
        for key in sorted(common):
            for k in sparse:
                if not keep(key, k):
                    continue
                t = [idx[f"topk-s{s}"][key].get(k) for s in seeds]
                d = [idx[f"dense-s{s}"][key].get(k) for s in seeds]
                if None in t or None in d:
                    continue
                units.append((key, k))
                x.append(sum(t) / len(t))
                y.append(sum(d) / len(d))
        pb = S.paired_bootstrap(x, y, clusters=[u[0] for u in units],
                                strata=[u[0][:2] for u in units], n_boot=rules.n_boot,
                                level=1 - rules.alpha, seed=seed)
        return {"n": pb["n"], "diff": pb["diff"], "ci": pb["ci"], "topk_sft": pb["mean_x"],
                "dense_sft": pb["mean_y"],
                "samples": len({u[0] for u in units})}

    out["primary"] = paired(lambda key, k: True)
    out["by_k"] = {k: paired(lambda key, kk, k=k: kk == k) for k in sparse}
    out["inside"] = paired(lambda key, k: key[1] <= train_length)
    out["beyond"] = paired(lambda key, k: key[1] > train_length)
    out["by_length"] = {str(L): paired(lambda key, k, L=L: key[1] == L)
                        for L in sorted({key[1] for key in idx.get("base", {})}
                                        | {key[1] for key in idx[f"dense-s{seeds[0]}"]})}
    mc = {}
    for s in seeds:
        keys = sorted(set(idx[f"topk-s{s}"]) & set(idx[f"dense-s{s}"]))
        x = [idx[f"topk-s{s}"][key][k] for key in keys for k in sparse
             if k in idx[f"topk-s{s}"][key] and k in idx[f"dense-s{s}"][key]]
        y = [idx[f"dense-s{s}"][key][k] for key in keys for k in sparse
             if k in idx[f"topk-s{s}"][key] and k in idx[f"dense-s{s}"][key]]
        mc[str(s)] = S.mcnemar(x, y) | {"diff": (sum(x) - sum(y)) / max(1, len(x))}
    out["per_seed"] = mc
    return out


def _num(v) -> float:
    """A stored number (None, from a non-finite value in strict JSON, is nan)."""
    return float("nan") if v is None else float(v)


def analyze_claim3(results: list[dict], rules, seed: int = 0) -> dict:
    """Correlation of accuracy with precision and with mass recall over the settings.

    ``results``: the ``claim3-L<length>`` stage results. Per length, each setting's mean
    precision, mass recall and accuracy over the samples; the statistic is the mean over
    lengths of the correlation across settings; intervals resample samples within lengths.
    """
    results = [r for r in results if r.get("samples")]
    if not results:
        return {"primary": None, "lengths": []}
    specs = [s for s in results[0]["specs"]]
    P, M, A, lens = [], [], [], []
    for li, r in enumerate(results):
        for smp in r["samples"]:
            P.append([_num(smp["fidelity"][s]["precision"]) for s in specs])
            M.append([_num(smp["fidelity"][s]["mass_recall"]) for s in specs])
            A.append([_num(smp["scores"][s]) for s in specs])
            lens.append(li)
    P, M, A, lens = np.array(P), np.array(M), np.array(A), np.array(lens)
    full = {}
    for li, r in enumerate(results):
        sc = [smp["scores"].get("full") for smp in r["samples"] if "full" in smp["scores"]]
        full[str(r["length"])] = S.accuracy_ci(sc)

    def corr_of(units: np.ndarray, X: np.ndarray, kind: str) -> float:
        vals = []
        for li in range(len(results)):
            u = units[lens[units] == li]
            if u.size == 0:
                continue
            c = S.correlation(X[u].mean(0), A[u].mean(0))[kind]
            if math.isfinite(c):
                vals.append(c)
        return float(np.mean(vals)) if vals else float("nan")

    allu = np.arange(len(lens))
    corr = {}
    for xname, X in (("precision", P), ("mass_recall", M)):
        for kind in ("spearman", "pearson"):
            est = corr_of(allu, X, kind)
            ci = S.bootstrap_statistic(lambda u, X=X, kind=kind: corr_of(u, X, kind), len(lens),
                                       strata=list(lens), n_boot=rules.n_boot,
                                       level=1 - rules.alpha, seed=seed)
            corr[f"{kind}_{xname}"] = {"value": est, "ci": list(ci)}
    per_length = []
    for li, r in enumerate(results):
        u = allu[lens == li]
        per_length.append({
            "length": r["length"], "n": int(u.size),
            "settings": [{"spec": s, "precision": float(P[u, j].mean()),
                          "mass_recall": float(M[u, j].mean()),
                          **S.accuracy_ci(A[u, j].tolist())} for j, s in enumerate(specs)],
            "correlation": {f"{kind}_{x}": S.correlation((P if x == "precision" else M)[u].mean(0),
                                                         A[u].mean(0))[kind]
                            for x in ("precision", "mass_recall")
                            for kind in ("spearman", "pearson")}})
    primary = {"spearman": corr["spearman_precision"]["value"],
               "ci": corr["spearman_precision"]["ci"], "n_settings": len(specs),
               "n_lengths": len(results), "samples": int(len(lens))}
    return {"primary": primary, "correlation": corr, "lengths": per_length, "full": full,
            "specs": specs, "rho": results[0].get("rho"), "task": results[0].get("task")}


def _step_values(res: dict, what: str, k: str | None = None) -> dict[tuple, float]:
    """(sample_id, step) -> mean over layers of ``what`` (entropy / topk_entropy / mass)."""
    out = {}
    for p in res["prompts"]:
        for j, st in enumerate(p["steps"]):
            v = st[what] if k is None else st[what][k]
            out[(p["sample_id"], j)] = float(np.mean(v))
    return out


def _layer_values(res: dict, what: str, k: str | None = None) -> np.ndarray:
    """[prompts, layers]: per prompt the mean over its steps of each layer's value."""
    rows = []
    for p in res["prompts"]:
        arr = np.array([st[what] if k is None else st[what][k] for st in p["steps"]])
        rows.append(arr.mean(0))
    return np.array(rows)


def _t_interval(x: np.ndarray, level: float) -> list[float]:
    from scipy.stats import t

    n = x.shape[0]
    m = x.mean(0)
    if n < 2:
        return [np.full_like(m, np.nan).tolist(), np.full_like(m, np.nan).tolist()]
    half = t.ppf(0.5 + level / 2, n - 1) * x.std(0, ddof=1) / math.sqrt(n)
    return [(m - half).tolist(), (m + half).tolist()]


def analyze_claim4(stages: dict[str, dict], rules, seed: int = 0) -> dict:
    """Entropy of base, dense-SFT and Top-k-SFT; the paired difference of the two fine-tunes.

    Per model group (seeds averaged): per layer the mean over prompts of the dense entropy
    and of each top-k entropy / mass, with t intervals over prompts. Primary: per (prompt,
    step) the mean over layers of dense-SFT's dense entropy minus Top-k-SFT's, bootstrapped
    over prompts (all steps of a prompt together), plus the Wilcoxon test of prompt means.
    """
    res = _finetune_results(stages, "claim4-")
    seeds = sorted({int(n.split("-s")[1]) for n in res if n != "base"
                    and f"dense-s{n.split('-s')[1]}" in res
                    and f"topk-s{n.split('-s')[1]}" in res})
    groups = {"base": ["base"], "dense_sft": [f"dense-s{s}" for s in seeds],
              "topk_sft": [f"topk-s{s}" for s in seeds]}
    ks = next((r["ks"] for r in res.values()), [])
    level = 1 - rules.alpha
    summary = {}
    for g, names in groups.items():
        names = [n for n in names if n in res]
        if not names:
            continue
        ent = np.mean([_layer_values(res[n], "entropy") for n in names], axis=0)
        entry = {"models": names, "prompts": int(ent.shape[0]),
                 "per_layer": ent.mean(0).tolist(), "per_layer_ci": _t_interval(ent, level),
                 "mean": float(ent.mean()),
                 "mean_ci": [float(v) for v in np.array(_t_interval(ent.mean(1)[:, None],
                                                                    level)).ravel()],
                 "topk": {}}
        for k in ks:
            te = np.mean([_layer_values(res[n], "topk_entropy", k) for n in names], axis=0)
            ms = np.mean([_layer_values(res[n], "mass", k) for n in names], axis=0)
            entry["topk"][k] = {
                "per_layer": te.mean(0).tolist(), "per_layer_ci": _t_interval(te, level),
                "mean": float(te.mean()),
                "mean_ci": [float(v) for v in np.array(_t_interval(te.mean(1)[:, None],
                                                                   level)).ravel()],
                "mass": float(ms.mean()), "mass_per_layer": ms.mean(0).tolist()}
        summary[g] = entry
    out: dict = {"seeds": seeds, "ks": ks, "groups": summary}

    def diff(a: list[str], b: list[str], what: str, k: str | None = None) -> dict:
        va = [_step_values(res[n], what, k) for n in a]
        vb = [_step_values(res[n], what, k) for n in b]
        keys = sorted(set.intersection(*(set(v) for v in va + vb)))
        x = [float(np.mean([v[key] for v in va])) for key in keys]
        y = [float(np.mean([v[key] for v in vb])) for key in keys]
        pb = S.paired_bootstrap(x, y, clusters=[key[0] for key in keys], n_boot=rules.n_boot,
                                level=level, seed=seed)
        prompts = sorted({key[0] for key in keys})
        pm = [float(np.mean([xi - yi for key, xi, yi in zip(keys, x, y) if key[0] == p]))
              for p in prompts]
        return {"n": pb["n"], "prompts": len(prompts), "diff": pb["diff"], "ci": pb["ci"],
                "a": pb["mean_x"], "b": pb["mean_y"], "p_wilcoxon": S.wilcoxon(pm)}

    if seeds:
        d, t = groups["dense_sft"], groups["topk_sft"]
        out["primary"] = diff(d, t, "entropy")
        out["topk_entropy"] = {k: diff(d, t, "topk_entropy", k) for k in ks}
        if "base" in res:
            out["base_minus_topk_sft"] = diff(["base"], t, "entropy")
            out["base_minus_dense_sft"] = diff(["base"], d, "entropy")
        dl = np.mean([_layer_values(res[n], "entropy") for n in d], axis=0)
        tl = np.mean([_layer_values(res[n], "entropy") for n in t], axis=0)
        if dl.shape == tl.shape:
            dd = dl - tl
            out["per_layer_diff"] = {"diff": dd.mean(0).tolist(),
                                     "ci": _t_interval(dd, level)}
    else:
        out["primary"] = None
    return out


def analyze(cfg: StudyConfig, stages: dict[str, dict]) -> dict[int, dict | None]:
    """{claim: analysis} of the claims in ``cfg`` from finished stage records."""
    rules = cfg.budget.rules
    out: dict[int, dict | None] = {c: None for c in (1, 2, 3, 4)}
    missing = {"missing": True}  # a claim of the plan whose stages have not finished
    if 1 in cfg.claims:
        out[1] = (analyze_claim1(stages["claim1-eval"]["result"], rules, cfg.seed)
                  if "claim1-eval" in stages else missing)
    if 2 in cfg.claims:
        out[2] = (analyze_claim2(stages, rules, cfg.budget.claim2.train_length, cfg.seed)
                  if any(n.startswith("claim2-eval-") for n in stages) else missing)
    if 3 in cfg.claims:
        res = [rec["result"] for n, rec in stages.items() if n.startswith("claim3-L")]
        out[3] = (analyze_claim3(sorted(res, key=lambda r: r["length"]), rules, cfg.seed)
                  if res else missing)
    if 4 in cfg.claims:
        out[4] = (analyze_claim4(stages, rules, cfg.seed)
                  if any(n.startswith("claim4-") for n in stages) else missing)
    return out


__all__ = ["ARMS", "Models", "analyze", "analyze_claim1", "analyze_claim2", "analyze_claim3",
           "analyze_claim4", "check_lengths", "claim1_ks", "claim3_specs", "finetune_names",
           "plan", "read_eval_rows", "run_claim1", "run_claim2_eval", "run_claim2_train",
           "per_sample", "run_claim3", "run_claim4", "sample_files"]
