#!/usr/bin/env bash
# Ltri-LLM (`--selector ltri`) against exact Top-k and full attention on the embedded model
# (SmolLM2-135M-Instruct), on CPU: passkey and multi-key needles, the same token budget K
# for ltri's retrieved tokens and exact Top-k's k, then ltri's fidelity against exact Top-k.
#
#   scripts/cpu_ltri_accuracy.sh [OUT] [SUMMARY_DIR]
#
# OUT (default runs/ltri_accuracy) holds the runs; a rerun resumes them. SUMMARY_DIR (default
# docs/experiments/ltri_accuracy_cpu) gets summary.json, table.md and accuracy.png.
# Settings from the environment: LEN (2k), SAMPLES (100 per task), K (256: ltri and exact),
# EXACT_KS (128,$K: exact Top-k's k), FID_SAMPLES (8) and FID_STEPS (8) of the fidelity runs
# (one per task), DEVICE (cpu; cuda runs the same commands on a GPU), SUMMARY_ONLY (set: no
# runs, only the summary of the runs already in OUT, e.g. runs made on another machine).
# Three eval processes of one thread each run at once (exact Top-k, and ltri in two shards:
# ltri prefills every sample twice, densely for the shared prefix and once more for its
# span detection), all under `nice -n 15`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT=${1:-runs/ltri_accuracy}
SUMMARY=${2:-docs/experiments/ltri_accuracy_cpu}
LEN=${LEN:-2k}
SAMPLES=${SAMPLES:-100}
K=${K:-256}
EXACT_KS=${EXACT_KS:-128,$K}
NICE=(nice -n 15)
DEVICE=${DEVICE:-cpu}
common=(--task passkey,niah_multikey --lengths "$LEN" --samples "$SAMPLES" --device "$DEVICE"
        --threads 1 --quiet)

if [[ -z "${SUMMARY_ONLY:-}" ]]; then

"${NICE[@]}" topkattn eval "${common[@]}" --k "$EXACT_KS,full" --out "$OUT/exact_$LEN" &
for i in 0 1; do
  "${NICE[@]}" topkattn eval "${common[@]}" --k "$K" --selector ltri --shard "$i/2" \
      --out "$OUT/ltri_$LEN" &
done
wait
for task in passkey niah_multikey; do
  "${NICE[@]}" topkattn fidelity --selector exact,ltri,quest,window --task "$task" \
      --length "$LEN" --samples "${FID_SAMPLES:-8}" --steps "${FID_STEPS:-8}" --k "$K" \
      --out "$OUT/fidelity_${LEN}_$task" --device "$DEVICE" --quiet &
done
wait
fi

"${NICE[@]}" python3 - "$OUT" "$LEN" "$K" "$SUMMARY" <<'EOF'
"""Table of accuracy (95% Wilson intervals), paired ltri / exact counts, fidelity, plot."""
import json
import sys
from pathlib import Path

from scipy.stats import binomtest

from topkattn.analysis.plots import interval_yerr, pyplot, save_figure
from topkattn.evaluation.records import read_folder
from topkattn.evaluation.runner import parse_length
from topkattn.tasks.stats import accuracy

out, length_text, K, dest = Path(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4])
length = parse_length(length_text)
exact = [r for r in read_folder(out / f"exact_{length_text}") if r["length"] == length]
ltri = [r for r in read_folder(out / f"ltri_{length_text}") if r["length"] == length]
tasks = ["passkey", "niah_multikey"]
exact_ks = sorted({r["k"] for r in exact if r["k"] != "full"}, key=int)
methods = [("full", "full attention", exact, "full")]
methods += [(f"exact_{k}", f"exact Top-k k={k}", exact, k) for k in exact_ks]
methods += [(f"ltri_{K}", f"ltri, budget {K}", ltri, K)]


def scores(rows, task, k):
    return {r["sample_id"]: r["score"] for r in rows if r["task"] == task and r["k"] == k}


cells, paired = [], []
for task in tasks:
    for key, label, rows, k in methods:
        a = accuracy(scores(rows, task, k).values())
        cells.append({"task": task, "method": key, "label": label, **a})
    # the same prompts under ltri and exact Top-k at the same budget: discordant pairs
    e, l = scores(exact, task, K), scores(ltri, task, K)
    common = sorted(set(e) & set(l))
    only_e = sum(1 for s in common if e[s] >= 1 > l[s])
    only_l = sum(1 for s in common if l[s] >= 1 > e[s])
    p = binomtest(only_e, only_e + only_l).pvalue if only_e + only_l else 1.0
    # full attention twice (each run decodes it): the same answers?
    f1, f2 = scores(exact, task, "full"), scores(ltri, task, "full")
    same = sum(1 for s in set(f1) & set(f2) if f1[s] == f2[s])
    paired.append({"task": task, "n": len(common), "exact_right_ltri_wrong": only_e,
                   "ltri_right_exact_wrong": only_l, "mcnemar_exact_p": p,
                   "full_runs_agree": same, "full_runs_n": len(set(f1) & set(f2))})

# accuracy by needle depth (quarters of the prompt), ltri and exact Top-k at the budget
quarters = [(0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.01)]
by_depth = [{"task": task, "method": key, "depth": [a, min(b, 1.0)],
             **accuracy(r["score"] for r in rows if r["task"] == task and r["k"] == k
                        and a <= r["depth"] < b)}
            for task in tasks for key, _, rows, k in methods[:1] + methods[-2:]
            for a, b in quarters]

fidelity = []
for task in tasks:
    fid_path = out / f"fidelity_{length_text}_{task}" / "fidelity.json"
    if not fid_path.exists():
        continue
    fid = json.loads(fid_path.read_text())
    fidelity.append({"task": fid["task"], "length": fid["length"], "k": fid["k"],
                     "samples": fid["config"]["samples"], "steps": fid["config"]["steps"],
                     "selectors": {lab: {m: v[m] for m in ("precision", "mass_recall",
                                                            "out_err")}
                                   for lab, v in fid["selectors"].items()}})

dest.mkdir(parents=True, exist_ok=True)
(dest / "summary.json").write_text(json.dumps(
    {"length": length, "budget": int(K), "cells": cells, "paired": paired,
     "by_depth": by_depth, "fidelity": fidelity}, indent=1) + "\n")

lines = ["| task | length | " + " | ".join(lab for _, lab, _, _ in methods) + " |",
         "|---|---:|" + "---|" * len(methods)]
for task in tasks:
    row = [c for c in cells if c["task"] == task]
    lines.append(f"| {task} | {length} | " + " | ".join(
        f"{c['accuracy']:.2f} [{c['ci95'][0]:.2f}, {c['ci95'][1]:.2f}] (n={c['n']})"
        for c in row) + " |")
lines += ["", f"| task | n | exact k={K} right, ltri wrong | ltri right, exact wrong | "
          "exact McNemar p |", "|---|---:|---:|---:|---:|"]
lines += [f"| {p['task']} | {p['n']} | {p['exact_right_ltri_wrong']} | "
          f"{p['ltri_right_exact_wrong']} | {p['mcnemar_exact_p']:.2g} |" for p in paired]
lines += ["", "Accuracy by needle depth (0: start of the prompt, 1: its end):", "",
          "| task | method | " + " | ".join(f"[{a:.2f}, {min(b, 1.0):.2f}{')' if b < 1 else ']'}"
                                          for a, b in quarters) + " |",
          "|---|---|" + "---|" * len(quarters)]
for task in tasks:
    for key, label, _, _ in methods[:1] + methods[-2:]:
        row = [c for c in by_depth if c["task"] == task and c["method"] == key]
        lines.append(f"| {task} | {label} | " + " | ".join(
            f"{c['accuracy']:.2f} (n={c['n']})" for c in row) + " |")
if fidelity:
    f0 = fidelity[0]
    lines += ["", f"Fidelity against exact Top-k at k={f0['k']}, {f0['length']} tokens, "
              f"{f0['samples']} prompts x {f0['steps']} decode steps per task (mean over "
              "layers and query heads):", "",
              "| task | selector | precision | mass recall | output rel. L2 |",
              "|---|---|---:|---:|---:|"]
    lines += [f"| {f['task']} | {lab} | {v['precision']:.3f} | {v['mass_recall']:.3f} | "
              f"{v['out_err']:.3f} |" for f in fidelity for lab, v in f["selectors"].items()]
(dest / "table.md").write_text("\n".join(lines) + "\n")

plt = pyplot()
fig, ax = plt.subplots(figsize=(8.5, 3.8))
width = 0.8 / len(methods)
for j, (key, label, _, _) in enumerate(methods):
    row = [next(c for c in cells if c["task"] == t and c["method"] == key) for t in tasks]
    ys = [c["accuracy"] or 0.0 for c in row]
    x = [i + (j - (len(methods) - 1) / 2) * width for i in range(len(tasks))]
    ax.bar(x, ys, width, label=label,
           yerr=interval_yerr(ys, [c["ci95"] for c in row]), capsize=3)
ax.set_xticks(range(len(tasks)))
ax.set_xticklabels([f"{t} ({length} tokens)" for t in tasks])
ax.set_ylim(0, 1.05)
ax.set_ylabel("accuracy (95% Wilson interval)")
n = min(c["n"] for c in cells)
ax.set_title(f"SmolLM2-135M-Instruct on CPU, n={n} prompts per bar")
ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
save_figure(fig, dest / "accuracy.png")
print((dest / "table.md").read_text())
EOF
