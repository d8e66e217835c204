#!/usr/bin/env bash
# Exact Top-k decoding against full attention and NVIDIA kvpress presses at the same KV budget
# on the embedded model (SmolLM2-135M-Instruct), on CPU: multi-key needles (`niah_multikey`).
#
#   scripts/cpu_kvpress_accuracy.sh [OUT] [SUMMARY_DIR]
#
# OUT (default runs/kvpress_accuracy) holds the run; a rerun resumes it. SUMMARY_DIR (default
# docs/experiments/kvpress_cpu) gets the eval's own summary.json, table.md and accuracy.png,
# plus paired.json / paired.md (accuracy with 95% Wilson intervals, paired McNemar counts,
# accuracy by needle depth, kept KV, the wrong answers with fewer digits than the answer or a
# prefix of it) and rows.jsonl (one short line per sample and method).
# Settings from the environment: TASK (niah_multikey), LEN (2k), SAMPLES (100), K (256: exact
# Top-k's k), PRESSES (snapkv,streaming_llm,tova), RATIO (the presses' compression ratio,
# default 1 - K/2048 = 0.875), SHARDS (2).
#
# Budget: a press prefills the prompt but its last token (n - 1 tokens, n ~ 2040) and keeps
# int((n - 1) * (1 - RATIO)) = 254-255 of them per layer and KV head; the last prompt token is
# then added, so the first answer token attends to 255-256 cached keys, as exact Top-k's
# k = 256 (of all n keys, chosen anew per query head, layer and step). Both add one key per
# generated token (the press's cache grows; Top-k keeps k of a growing cache).
# Requires kvpress: `pip install --no-deps kvpress` and `pip install cachetools fire`.
# SHARDS eval processes of one thread each run at once under `nice -n 19`; each does every
# method for its share of the samples (one dense prefill for full and Top-k, one compressed
# prefill per press).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT=${1:-runs/kvpress_accuracy}
SUMMARY=${2:-docs/experiments/kvpress_cpu}
TASK=${TASK:-niah_multikey}
LEN=${LEN:-2k}
SAMPLES=${SAMPLES:-100}
K=${K:-256}
PRESSES=${PRESSES:-snapkv,streaming_llm,tova}
RATIO=${RATIO:-$(python3 -c "print(f'{1 - $K / 2048:g}')")}
SHARDS=${SHARDS:-2}
NICE=(nice -n 19)
RUN="$OUT/${TASK}_$LEN"
press_args=$(echo "$PRESSES" | tr ',' '\n' | sed "s/.*/kvpress:&@$RATIO/" | paste -sd, -)

for ((i = 0; i < SHARDS; i++)); do
  "${NICE[@]}" topkattn eval --task "$TASK" --lengths "$LEN" --samples "$SAMPLES" --device cpu \
      --threads 1 --quiet --k "$K,full" --press "$press_args" --shard "$i/$SHARDS" \
      --out "$RUN" &
done
wait
# the shards' one table and plot (the last shard writes them; redone here for a resumed run)
"${NICE[@]}" topkattn eval --report-only --out "$RUN" >/dev/null

mkdir -p "$SUMMARY"
cp "$RUN/summary.json" "$RUN/table.md" "$RUN/accuracy.png" "$SUMMARY/"
"${NICE[@]}" python3 - "$RUN" "$TASK" "$LEN" "$K" "$SUMMARY" <<'EOF'
"""Accuracy (95% Wilson intervals), paired McNemar counts against exact Top-k and full
attention, accuracy by needle depth, kept KV of the presses; compact per-row lines."""
import json
import re
import sys
from pathlib import Path
from statistics import mean

from topkattn.evaluation.records import read_folder
from topkattn.evaluation.runner import parse_length
from topkattn.study.stats import mcnemar
from topkattn.tasks.stats import accuracy

run, task, length_text, K, dest = (Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4],
                                   Path(sys.argv[5]))
length = parse_length(length_text)
rows = [r for r in read_folder(run) if r["task"] == task and r["length"] == length]
presses = list(dict.fromkeys(r["k"] for r in rows if r["k"].startswith("kvpress:")))
methods = [("full", "full attention"), (K, f"exact Top-k k={K}")]
methods += [(p, p.removeprefix("kvpress:")) for p in presses]
by = {m: {r["sample_id"]: r for r in rows if r["k"] == m} for m, _ in methods}
common = sorted(set.intersection(*(set(v) for v in by.values())))


def scores(m, ids=common):
    return [by[m][s]["score"] for s in ids]


cells = []
for m, label in methods:
    c = {"method": m, "label": label, **accuracy(scores(m))}
    kept = [by[m][s]["kv_kept"] for s in common if "kv_kept" in by[m][s]]
    if kept:
        c["kv_kept"] = {"mean": mean(kept), "min": min(kept), "max": max(kept)}
    c["n_tokens"] = {"mean": mean(by[m][s]["n_tokens"] for s in common),
                     "min": min(by[m][s]["n_tokens"] for s in common),
                     "max": max(by[m][s]["n_tokens"] for s in common)}
    # the wrong answers: fewer digits than the answer, or a strict prefix of its digits
    wrong = [by[m][s] for s in common if by[m][s]["score"] < 1]
    digits = [("".join(re.findall(r"\d", r["prediction"])), r["answer"]) for r in wrong]
    c["wrong"] = {"n": len(wrong), "short": sum(1 for d, a in digits if len(d) < len(a)),
                  "prefix": sum(1 for d, a in digits if d and a.startswith(d) and d != a)}
    cells.append(c)

# the same prompts under two methods: discordant pairs and the exact McNemar p-value
pairs = [(K, "full")] + [(p, ref) for p in presses for ref in (K, "full")]
paired = [{"a": a, "b": b, **mcnemar(scores(a), scores(b))} for a, b in pairs]

quarters = [(0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.01)]
by_depth = [{"method": m, "depth": [lo, min(hi, 1.0)],
             **accuracy(by[m][s]["score"] for s in common if lo <= by[m][s]["depth"] < hi)}
            for m, _ in methods for lo, hi in quarters]

dest.mkdir(parents=True, exist_ok=True)
(dest / "paired.json").write_text(json.dumps(
    {"task": task, "length": length, "k": int(K), "samples": len(common), "cells": cells,
     "paired": paired, "by_depth": by_depth}, indent=1) + "\n")
with open(dest / "rows.jsonl", "w") as f:
    for s in common:
        for m, _ in methods:
            r = by[m][s]
            f.write(json.dumps({k: r[k] for k in ("sample_id", "k", "n_tokens", "depth",
                                                  "answer", "prediction", "score", "kv_kept")
                                if k in r}) + "\n")

label = dict(methods)
lines = ["| method | accuracy | 95% Wilson | n | mean kept KV at the first answer token | "
         "wrong: fewer digits / a prefix of the answer |", "|---|---:|---|---:|---:|---:|"]
for c in cells:
    kv = (f"{c['kv_kept']['mean'] + 1:.1f}" if "kv_kept" in c
          else f"{K} of {c['n_tokens']['mean']:.0f}" if c["method"] == K
          else f"{c['n_tokens']['mean']:.0f}")
    lines.append(f"| {c['label']} | {c['accuracy']:.2f} | [{c['ci95'][0]:.2f}, "
                 f"{c['ci95'][1]:.2f}] | {c['n']} | {kv} | {c['wrong']['short']} / "
                 f"{c['wrong']['prefix']} of {c['wrong']['n']} |")
lines += ["", "| a | b | n | a right, b wrong | b right, a wrong | exact McNemar p |",
          "|---|---|---:|---:|---:|---:|"]
lines += [f"| {label[p['a']]} | {label[p['b']]} | {p['n']} | {p['a_only']} | {p['b_only']} | "
          f"{p['p_exact']:.2g} |" for p in paired]
lines += ["", "Accuracy by needle depth (0: start of the prompt, 1: its end):", "",
          "| method | " + " | ".join(f"[{a:.2f}, {min(b, 1.0):.2f}{')' if b < 1 else ']'}"
                                   for a, b in quarters) + " |",
          "|---|" + "---|" * len(quarters)]
for m, lab in methods:
    row = [c for c in by_depth if c["method"] == m]
    lines.append(f"| {lab} | " + " | ".join(
        f"{c['accuracy']:.2f} (n={c['n']})" if c["n"] else "-" for c in row) + " |")
(dest / "paired.md").write_text("\n".join(lines) + "\n")
print((dest / "paired.md").read_text())
EOF
