"""Small seeded fixtures in the official LongBench v2 / HELMET file formats, and an
lm-evaluation-harness task over the synthetic needle tasks.

    PYTHONPATH=src python3 scripts/make_suite_fixtures.py OUT [--seed 0] [--longbench 30]
        [--helmet 30] [--harness-samples 40] [--harness-length 1024]

Writes under OUT:

- ``longbench_v2/data.json``: LongBench v2's schema (``_id``, ``domain``, ``sub_domain``,
  ``difficulty``, ``length``, ``question``, ``choice_A``..``choice_D``, ``answer``,
  ``context``). Each context is filler prose (the synthetic tasks' `filler_sentence`) holding
  the project code the question asks for; ``hard`` questions also place the three wrong
  choices in the text, as codes of other projects; ``length`` short/medium/long is about
  400/650/900 tokens of context (prompts of about 0.5k-1k tokens).
- ``helmet/data/json_kv/test_k50_dep6.jsonl``: HELMET's JSON KV records (``context`` =
  ``"JSON data:\\n" + json.dumps({uuid: uuid})``, ``question``, ``answer``, ``num_kvs``,
  ``demos``), 10 pairs (prompts under 1k tokens) in place of HELMET's 50.
- ``helmet/data/kilt/nq-dev-multikilt_1000_k20_dep6.jsonl`` and its demo file
  ``nq-train-multikilt_1000_k3_dep6.jsonl``: HELMET's RAG records (``id``, ``question``,
  ``answers``, ``ctxs`` of ``{title, text}``), 9 invented one-fact documents per question (the
  gold one at a seeded position), which the model cannot answer from memory.
- ``harness/``: ``topk_passkey.jsonl``, ``topk_niah_multikey.jsonl`` (``prompt``: the
  synthetic task's full prompt, chat template and answer prefix included; ``target``: the
  number) and one ``generate_until`` YAML per file, scored by lm-eval's ``exact_match`` on the
  first number of the output (a ``regex`` filter). Prompts are counted with the embedded
  model's tokenizer.

A fixture checks the pipeline on the official schemas (prompt, truncation, extraction,
metric); it is not the benchmark's data and its accuracy is not the benchmark's.

``--summarize RUN... [--longbench-file FILE] [--harness DIR...]`` instead writes
``OUT/summary.json`` and ``OUT/summary.md`` of ``topkattn eval`` run folders: accuracy per
task, length and k with 95% Wilson intervals, LongBench v2's breakdown (0-shot and CoT) by
difficulty and length bucket with the answers extracted, and, with ``--harness``, the
accuracy per task and k of lm-eval output folders of the ``topkattn`` model (as written by
``scripts/harness_synthetic.sh``).
"""

from __future__ import annotations

import argparse
import json
import random
import uuid
from pathlib import Path

from topkattn.errors import InputError
from topkattn.tasks.synthetic import MultiKeyNiahTask, PasskeyTask, filler_sentence

LENGTH_SENTENCES = {"short": 25, "medium": 42, "long": 60}  # about 15 tokens a sentence
_NAMES = ["Aldor", "Brisk", "Cobalt", "Dunmore", "Elspeth", "Fenwick", "Galloway", "Harrow",
          "Ivel", "Jarrow", "Kestrel", "Larkspur", "Mallory", "Norwood", "Orrin", "Pellam",
          "Quillon", "Rowan", "Sorrel", "Tamsin", "Ulver", "Vantor", "Wexley", "Yarrow"]
_TOWNS = ["Velmora", "Ostrava Minor", "Kellin Ford", "Drumlow", "Saltreach", "Brennick",
          "Tarnholt", "Quenby", "Amberlee", "Hollin Vale", "Corrib Cross", "Ashcombe",
          "Marrowby", "Elderglen", "Pinwick", "Ravensmoor", "Scarrow", "Thistlebank",
          "Wendle", "Yelverton", "Gorsefield", "Lindqvist Bay", "Nettlecombe", "Fairhollow"]
_RIVERS = ["Asken", "Bremble", "Corvel", "Dask", "Ember", "Fennow", "Glaive", "Hollis",
           "Isker", "Jorun", "Kelp", "Lune", "Marra", "Nessel", "Orme", "Pell", "Quarrow",
           "Rill", "Sable", "Tamar", "Ursk", "Vey", "Wend", "Yare"]


def _code(rng: random.Random) -> str:
    return str(rng.randrange(10000, 100000))


def _prose(rng: random.Random, n: int, facts: list[str]) -> str:
    """``n`` filler sentences with ``facts`` inserted at random positions."""
    sents = [filler_sentence(rng) for _ in range(n)]
    for f in facts:
        sents.insert(rng.randrange(len(sents) + 1), f)
    return " ".join(sents)


def longbench_v2_records(n: int, seed: int) -> list[dict]:
    """``n`` LongBench v2 records: easy/hard alternate, short/medium/long cycle."""
    out = []
    for i in range(n):
        rng = random.Random(f"longbench_v2/{seed}/{i}")
        difficulty = ("easy", "hard")[i % 2]
        bucket = ("short", "medium", "long")[(i // 2) % 3]
        codes: list[str] = []
        while len(codes) < 4:
            c = _code(rng)
            if c not in codes:
                codes.append(c)
        names = rng.sample(_NAMES, 4)
        facts = [f"The archive code of the {names[0]} project is {codes[0]}."]
        if difficulty == "hard":  # the wrong choices are in the text too, for other projects
            facts += [f"The archive code of the {nm} project is {c}."
                      for nm, c in zip(names[1:], codes[1:])]
        order = list(range(4))
        rng.shuffle(order)
        rec = {"_id": f"fixture-{seed}-{i:03d}", "domain": "Single-Document QA",
               "sub_domain": "Synthetic records", "difficulty": difficulty, "length": bucket,
               "question": f"What is the archive code of the {names[0]} project?"}
        for letter, j in zip("ABCD", order):
            rec[f"choice_{letter}"] = codes[j]
        rec["answer"] = "ABCD"[order.index(0)]
        rec["context"] = _prose(rng, LENGTH_SENTENCES[bucket], facts)
        out.append(rec)
    return out


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def helmet_json_kv_records(n: int, pairs: int, seed: int) -> list[dict]:
    """HELMET JSON KV records: ``pairs`` uuid pairs, the asked key at a seeded position."""
    out = []
    for i in range(n):
        rng = random.Random(f"helmet_json_kv/{seed}/{i}")
        kv = {_uuid(rng): _uuid(rng) for _ in range(pairs)}
        keys = list(kv)
        pos = round(i * (pairs - 1) / max(1, n - 1))  # depths swept over the samples
        demos = [[_uuid(rng), _uuid(rng)] for _ in range(3)]
        out.append({"id": i, "context": "JSON data:\n" + json.dumps(kv),
                    "question": keys[pos], "answer": kv[keys[pos]], "num_kvs": pairs,
                    "depth": round(pos / max(1, pairs - 1), 4), "demos": demos})
    return out


def helmet_rag_records(n: int, docs: int, seed: int, prefix: str) -> list[dict]:
    """HELMET KILT-style RAG records: which river a town lies on, ``docs`` documents each."""
    out = []
    for i in range(n):
        rng = random.Random(f"helmet_rag/{prefix}/{seed}/{i}")
        towns = rng.sample(_TOWNS, min(docs, len(_TOWNS)))
        rivers = [rng.choice(_RIVERS) for _ in towns]
        ctxs = [{"title": t, "text": f"{t} is a small market town. {filler_sentence(rng)} "
                                     f"{t} lies on the river {r}. {filler_sentence(rng)}"}
                for t, r in zip(towns, rivers)]
        gold = rng.randrange(len(ctxs))
        out.append({"id": f"{prefix}{i}", "question": f"which river does {towns[gold]} lie on?",
                    "answers": [rivers[gold], f"the {rivers[gold]}"], "ctxs": ctxs})
    return out


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


HARNESS_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: '{{{{prompt}}}}'
doc_to_target: '{{{{target}}}}'
generation_kwargs:
  until: ["<|im_end|>", "\\n"]
  max_gen_toks: 12
  do_sample: false
filter_list:
  - name: first_number
    filter:
      - function: regex
        regex_pattern: '(\\d+)'
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


def harness_tasks(out: Path, n: int, length: int, seed: int) -> list[str]:
    """JSONL + YAML per synthetic task; returns the harness task names."""
    from topkattn.models import load_model

    _, tok = load_model("default", device="cpu")
    names = []
    for task in (PasskeyTask(), MultiKeyNiahTask()):
        name = f"topk_{task.name}"
        rows = [{"id": s.id, "prompt": s.prompt, "target": s.answer, "n_tokens": s.n_tokens,
                 "depth": s.depth} for s in task.samples(tok, length, n, seed)]
        data = _jsonl(out / f"{name}.jsonl", rows)
        (out / f"{name}.yaml").write_text(HARNESS_YAML.format(task=name, data=data.resolve()))
        names.append(name)
    return names


def _fmt(a: dict) -> str:
    """``0.29 [0.15, 0.49] (7/24)`` of a `topkattn.tasks.stats.accuracy` dict."""
    if not a["n"]:
        return "-"
    return (f"{a['accuracy']:.2f} [{a['ci95'][0]:.2f}, {a['ci95'][1]:.2f}] "
            f"({a['correct']:g}/{a['n']})")


def _k_order(k: str) -> tuple:
    """Sort key of k settings: numbers ascending (ratios as written), ``full`` last."""
    try:
        return (k == "full", float(k.rstrip("%")), k)
    except ValueError:
        return (k == "full", float("inf"), k)


def _eval_rows(run: Path) -> list[dict]:
    """Every result line of a ``topkattn eval`` folder (``results.jsonl`` and its shards)."""
    files = sorted(run.glob("results*.jsonl"))
    if not files:
        raise InputError(f"{run}: no results*.jsonl; expected a topkattn eval --out folder")
    return [json.loads(ln) for f in files for ln in f.read_text().splitlines() if ln.strip()]


def _harness_cells(run: Path) -> list[dict]:
    """Per (task, k) accuracy of an lm-eval output folder of the ``topkattn`` model: the
    per-sample ``exact_match`` of ``samples_<task>_*.jsonl``, k from ``results_*.json``'s
    ``config.model_args``; the task is named without its ``topk_`` prefix."""
    from topkattn.tasks.stats import accuracy

    cells = []
    for res_file in sorted(run.rglob("results_*.json")):
        cfg = json.loads(res_file.read_text()).get("config", {})
        args = cfg.get("model_args", "")
        if isinstance(args, str):
            args = dict(kv.split("=", 1) for kv in args.split(",") if "=" in kv)
        k = str(args.get("k", "64")).strip('"')
        stamp = res_file.stem.removeprefix("results_")
        for sf in sorted(res_file.parent.glob(f"samples_*_{stamp}.jsonl")):
            task = sf.stem.removeprefix("samples_").removesuffix(f"_{stamp}")
            scores = [json.loads(ln)["exact_match"] for ln in sf.read_text().splitlines()
                      if ln.strip()]
            cells.append({"task": task.removeprefix("topk_"), "harness_task": task, "k": k,
                          **accuracy(scores)})
    if not cells:
        raise InputError(f"{run}: no results_*.json with samples_*.jsonl; expected an "
                         "lm-eval --output_path folder written with --log_samples")
    return cells


def summarize(runs: list[Path], longbench: Path | None, out: Path,
              harness: list[Path] | None = None) -> dict:
    """Accuracy per (task, length, k) with 95% Wilson intervals of eval run folders, the
    LongBench v2 breakdown by difficulty and length bucket of each ``longbench_v2`` /
    ``longbench_v2_cot`` run and k (`LongBenchV2Task.breakdown`, as the task's file is
    ``longbench``) with the answers extracted (``None``: no answer), and, with ``harness``,
    the lm-eval runs' accuracy per (task, k); JSON + markdown to ``out``, JSON returned."""
    from collections import Counter

    from topkattn.tasks.longbench_v2 import LongBenchV2Task, extract_answer
    from topkattn.tasks.stats import accuracy

    res: dict = {"cells": [], "longbench_v2": {}, "harness": []}
    md = ["| task | length | k | accuracy [95% CI] (correct/n) |", "|---|---:|---|---|"]
    for run in runs:
        groups: dict[tuple, list[dict]] = {}
        for r in _eval_rows(run):
            groups.setdefault((r["task"], r["length"], str(r["k"])), []).append(r)
        for (task, length, k), g in sorted(groups.items(),
                                           key=lambda x: (x[0][0], x[0][1], _k_order(x[0][2]))):
            a = accuracy(r["score"] for r in g)
            res["cells"].append({"task": task, "length": length, "k": k, **a})
            md.append(f"| {task} | {length} | {k} | {_fmt(a)} |")
            if task.startswith("longbench_v2") and longbench is not None:
                lb = LongBenchV2Task(path=str(longbench), cot=task.endswith("_cot"))
                b = lb.breakdown(g)
                b["answers"] = dict(sorted(Counter(
                    str(extract_answer(lb.prefix + r["prediction"])) for r in g).items()))
                res["longbench_v2"].setdefault(task, {})[k] = b
    for task, per_k in res["longbench_v2"].items():
        for k, b in per_k.items():
            md += ["", f"{task} fixture, k={k}: answers extracted {b['answers']}", "",
                   "| group | accuracy [95% CI] (correct/n) |", "|---|---|",
                   f"| overall | {_fmt(b['overall'])} |"]
            md += [f"| {name} | {_fmt(b[part][name])} |" for part in ("difficulty", "length")
                   for name in b[part]]
    if harness:
        md += ["", "lm-evaluation-harness, model `topkattn`:", "",
               "| task | k | exact_match [95% CI] (correct/n) |", "|---|---|---|"]
        for run in harness:
            res["harness"] += _harness_cells(run)
        res["harness"].sort(key=lambda c: (c["task"], _k_order(c["k"])))
        md += [f"| {c['harness_task']} | {c['k']} | {_fmt(c)} |" for c in res["harness"]]
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / "summary.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--longbench", type=int, default=24, help="LongBench v2 questions")
    ap.add_argument("--helmet", type=int, default=20, help="records per HELMET file")
    ap.add_argument("--harness-samples", type=int, default=24, help="0: no harness task")
    ap.add_argument("--harness-length", type=int, default=1024)
    ap.add_argument("--summarize", nargs="+", type=Path, metavar="RUN",
                    help="instead: summarise these eval run folders into OUT")
    ap.add_argument("--longbench-file", type=Path, help="with --summarize: the LongBench v2 file")
    ap.add_argument("--harness", nargs="+", type=Path, metavar="DIR", default=[],
                    help="with --summarize: lm-eval output folders of the topkattn model too")
    a = ap.parse_args(argv)
    if a.summarize:
        try:
            summarize(a.summarize, a.longbench_file, a.out, a.harness)
        except InputError as e:
            raise SystemExit(f"error: {e}") from None
        return
    lb = a.out / "longbench_v2" / "data.json"
    lb.parent.mkdir(parents=True, exist_ok=True)
    lb.write_text(json.dumps(longbench_v2_records(a.longbench, a.seed), indent=1))
    data = a.out / "helmet" / "data"
    _jsonl(data / "json_kv" / "test_k50_dep6.jsonl", helmet_json_kv_records(a.helmet, 10, a.seed))
    _jsonl(data / "kilt" / "nq-dev-multikilt_1000_k20_dep6.jsonl",
           helmet_rag_records(a.helmet, 9, a.seed, "q"))
    _jsonl(data / "kilt" / "nq-train-multikilt_1000_k3_dep6.jsonl",
           helmet_rag_records(8, 3, a.seed, "demo"))
    print(f"wrote {lb} and {data}")
    if a.harness_samples > 0:
        names = harness_tasks(a.out / "harness", a.harness_samples, a.harness_length, a.seed)
        print(f"wrote harness tasks {', '.join(names)} under {a.out / 'harness'}")


if __name__ == "__main__":
    main()
