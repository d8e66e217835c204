#!/usr/bin/env bash
# Native Top-k training experiment: base vs dense SFT vs Top-k SFT on one GPU.
#
#   PYTHONPATH=src bash scripts/device_train_experiment.sh /tmp/model.gguf
#
# 1. converts the GGUF (embedded SmolLM2-135M-Instruct) once into an HF folder ($WORK/models/base)
# 2. writes ONE synthetic training set (training seeds, disjoint from eval) -> $WORK/data/train.jsonl
# 3. dense SFT (--k full) and Top-k SFT (--k $K_TRAIN) with the identical recipe, data and steps
# 4. evaluates base / dense-SFT / topk-SFT with full attention and Top-k decoding at several k on
#    held-out seeds (topkattn eval)
# 5. attention-entropy comparisons (topkattn entropy --compare): base vs topk-SFT, dense vs topk
# 6. $OUT/summary.md collects it all; $OUT/timings.tsv has each stage's seconds and exit code.
# Models (~0.5 GB each) and data stay in $WORK; $OUT gets only results (small files): training
# summaries/logs, eval tables/JSONL/plots, entropy JSON/markdown/PNGs, stage logs.
#
# Every knob is an environment variable (defaults sized for ~8 minutes on one H100):
#   OUT, WORK, STEPS (or auto with TRAIN_BUDGET_S), BS, GA, LR, WARMUP, TRAIN_TASKS, TRAIN_LEN, TRAIN_N, K_TRAIN, BACKEND,
#   EVAL_TASKS, EVAL_LENGTHS, EVAL_K, EVAL_N, EVAL_SEED, ENT_TASK, ENT_LEN, ENT_N, ENT_STEPS,
#   ENT_K, DEVICE (cpu for a smoke run), PYTHON.
# A stage that fails is recorded and the script goes on, so partial results survive.
# $WORK caches the converted model, data and trained models: a rerun skips what is there
# (delete $WORK to start over with other settings).
# CPU smoke run (minutes):  OUT=/tmp/smoke DEVICE=cpu STEPS_MIN=1 STEPS_MAX=2 BS=1 GA=2 \
#   TRAIN_LEN=256 TRAIN_N=2 EVAL_LENGTHS=256 EVAL_K=8,full EVAL_N=2 ENT_LEN=256 ENT_N=1 \
#   ENT_STEPS=2 PYTHONPATH=src bash scripts/device_train_experiment.sh /tmp/model.gguf
set -uo pipefail

GGUF=${1:?usage: PYTHONPATH=src bash scripts/device_train_experiment.sh /path/to/model.gguf}
OUT=${OUT:-runs/device_train}
WORK=${WORK:-/tmp/topkattn_train_work}
PY=${PYTHON:-python3}
STEPS=${STEPS:-auto}           # optimizer steps, same for dense and Top-k SFT; auto = fit
TRAIN_BUDGET_S=${TRAIN_BUDGET_S:-120}  # ... the Top-k run into this many seconds,
STEPS_MIN=${STEPS_MIN:-20}             # clamped to [STEPS_MIN, STEPS_MAX]
STEPS_MAX=${STEPS_MAX:-400}
BS=${BS:-1}                    # 1 = no padding: the Triton prefill fwd+bwd kernel applies on CUDA
GA=${GA:-8}                    # sequences per step = BS x GA
LR=${LR:-5e-5}
WARMUP=${WARMUP:-10}
TRAIN_TASKS=${TRAIN_TASKS:-niah_multikey,vartrack,passkey}
TRAIN_LEN=${TRAIN_LEN:-2048}
TRAIN_N=${TRAIN_N:-300}        # training samples per task
K_TRAIN=${K_TRAIN:-0.03}       # Top-k SFT: 3% of the visible context (~61 keys at 2k)
BACKEND=${BACKEND:-auto}       # auto (Triton on CUDA when it fits) or reference
EVAL_TASKS=${EVAL_TASKS:-niah_multikey,vartrack}
EVAL_LENGTHS=${EVAL_LENGTHS:-2k,4k}
EVAL_K=${EVAL_K:-16,64,3%,full}
EVAL_N=${EVAL_N:-12}
EVAL_SEED=${EVAL_SEED:-0}
ENT_TASK=${ENT_TASK:-niah_multikey}
ENT_LEN=${ENT_LEN:-2k}
ENT_N=${ENT_N:-6}
ENT_STEPS=${ENT_STEPS:-12}     # enough tokens for a 7-digit answer (accuracy column)
ENT_K=${ENT_K:-16,64,3%}
DEVICE=${DEVICE:-}
DEV_FLAG=()
[ -n "$DEVICE" ] && DEV_FLAG=(--device "$DEVICE")

mkdir -p "$OUT"/{train,eval,entropy,logs} "$WORK"/{models,data}
TIMES="$OUT/timings.tsv"
printf 'stage\tseconds\texit\n' > "$TIMES"
T0=$(date +%s)

topkattn() { "$PY" -c 'import sys; from topkattn.cli import main; sys.argv[0] = "topkattn"; main()' "$@"; }

stage() {  # stage NAME cmd... : run, log to $OUT/logs/NAME.log, record time and exit code
  local name=$1; shift
  local t=$(date +%s)
  echo "== [$(( t - T0 ))s] $name: $*"
  "$@" > "$OUT/logs/$name.log" 2>&1
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" "$(( $(date +%s) - t ))" "$rc" >> "$TIMES"
  if [ $rc -ne 0 ]; then echo "   FAILED ($rc); last lines:"; tail -n 15 "$OUT/logs/$name.log"; fi
  return 0
}

# 0. environment
stage env "$PY" -c '
import torch, transformers, sys
print("python", sys.version.split()[0], "torch", torch.__version__, "transformers", transformers.__version__)
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
for m in ("triton", "peft", "gguf", "typer", "rich", "matplotlib"):
    try:
        mod = __import__(m); print(m, getattr(mod, "__version__", "?"))
    except Exception as e:
        print(m, "MISSING", e)
'
cat "$OUT/logs/env.log"

# 1. the base model as an HF folder (GGUF dequantised once; every later load is fast)
BASE="$WORK/models/base"
if [ ! -f "$BASE/config.json" ]; then
  stage convert "$PY" - "$GGUF" "$BASE" <<'EOF'
import sys, torch
from topkattn.models import load_model
from topkattn.train.sft import _strip_gguf
m, t = load_model(sys.argv[1], dtype=torch.float32, device="cpu")
_strip_gguf(m)
m.save_pretrained(sys.argv[2]); t.save_pretrained(sys.argv[2])
print("saved", sys.argv[2], sum(p.numel() for p in m.parameters()), "params")
EOF
fi

# 2. one training set for both runs (training seeds: no sample shared with eval seeds)
DATA="$WORK/data/train.jsonl"
if [ ! -s "$DATA" ]; then
  stage data "$PY" - "$BASE" "$DATA" "$TRAIN_TASKS" "$TRAIN_LEN" "$TRAIN_N" <<'EOF'
import sys, random
from transformers import AutoTokenizer
from topkattn.train.data import SyntheticSpec, synthetic_records, write_jsonl
base, path, tasks, length, n = sys.argv[1:6]
tok = AutoTokenizer.from_pretrained(base)
recs = synthetic_records(tok, SyntheticSpec(tuple(tasks.split(",")), int(length), int(n)), seed=0)
random.Random(0).shuffle(recs)
write_jsonl(recs, path)
print(len(recs), "records ->", path)
EOF
fi

# 3. dense SFT and Top-k SFT, identical recipe (rerunning resumes from checkpoints)
if [ "$STEPS" = auto ]; then
  # calibrate: 4 Top-k steps, then as many steps as fit TRAIN_BUDGET_S (compile time included)
  CAL="$WORK/models/calibrate"
  rm -rf "$CAL"
  stage calibrate topkattn train --model "$BASE" --k "$K_TRAIN" --backend "$BACKEND" --out "$CAL" \
    --data "$DATA" --max-length $(( TRAIN_LEN + 64 )) --steps 4 --batch-size "$BS" --grad-accum "$GA" \
    --lr "$LR" --warmup-steps 1 --save-every 0 --quiet "${DEV_FLAG[@]}"
  STEPS=$("$PY" - "$CAL/train_log.jsonl" "$BS" "$GA" "$TRAIN_LEN" "$TRAIN_BUDGET_S" "$STEPS_MIN" "$STEPS_MAX" <<'EOF2'
import json, sys
try:
    rows = [json.loads(l) for l in open(sys.argv[1])]
    tps = rows[-1]["tokens_per_s"]
    per_step = int(sys.argv[2]) * int(sys.argv[3]) * int(sys.argv[4]) / tps
    print(max(int(sys.argv[6]), min(int(sys.argv[7]), int(float(sys.argv[5]) / per_step))))
except Exception:
    print(max(int(sys.argv[6]), min(int(sys.argv[7]), 60)))
EOF2
)
  echo "   calibrated: STEPS=$STEPS (budget ${TRAIN_BUDGET_S}s for Top-k SFT)"
  printf 'steps_chosen\t%s\t0\n' "$STEPS" >> "$TIMES"
  rm -rf "$CAL"
fi
[ "$WARMUP" -gt "$STEPS" ] && WARMUP=$STEPS
COMMON=(--data "$DATA" --max-length $(( TRAIN_LEN + 64 )) --steps "$STEPS" --batch-size "$BS"
        --grad-accum "$GA" --lr "$LR" --warmup-steps "$WARMUP" --save-every 50 --seed 0
        --quiet "${DEV_FLAG[@]}")
DENSE="$WORK/models/sft-dense"
TOPK="$WORK/models/sft-topk"
[ -f "$DENSE/model.safetensors" ] || stage train_dense topkattn train --model "$BASE" --k full --out "$DENSE" "${COMMON[@]}"
[ -f "$TOPK/model.safetensors" ] || stage train_topk topkattn train --model "$BASE" --k "$K_TRAIN" --backend "$BACKEND" --out "$TOPK" "${COMMON[@]}"
rm -rf "$DENSE/checkpoints" "$TOPK/checkpoints"   # final models stay in $WORK
for name in sft-dense sft-topk; do
  mkdir -p "$OUT/train/$name"
  cp "$WORK/models/$name"/train_{summary.json,log.jsonl,config.json} "$OUT/train/$name/" 2>/dev/null
done
head -c 3000 "$DATA" > "$OUT/train/data_head.jsonl"

# 4. evaluation on held-out seeds: full attention and Top-k decoding at several k
for name in base sft-dense sft-topk; do
  M="$WORK/models/$name"
  [ -f "$M/config.json" ] || continue
  stage "eval_${name}" topkattn eval --model "$M" --task "$EVAL_TASKS" --lengths "$EVAL_LENGTHS" \
    --k "$EVAL_K" --samples "$EVAL_N" --seed "$EVAL_SEED" --out "$OUT/eval/$name" --quiet "${DEV_FLAG[@]}"
done

# 5. attention entropy: before/after Top-k SFT, and dense SFT vs Top-k SFT
ENT=(--task "$ENT_TASK" --length "$ENT_LEN" --samples "$ENT_N" --steps "$ENT_STEPS" --k "$ENT_K" "${DEV_FLAG[@]}")
[ -f "$TOPK/config.json" ] && stage entropy_base_vs_topk topkattn entropy --model "$BASE" --label base \
  --compare "$TOPK" --compare-label sft-topk --out "$OUT/entropy/base_vs_topk" "${ENT[@]}"
[ -f "$DENSE/config.json" ] && [ -f "$TOPK/config.json" ] && stage entropy_dense_vs_topk topkattn entropy \
  --model "$DENSE" --label sft-dense --compare "$TOPK" --compare-label sft-topk \
  --out "$OUT/entropy/dense_vs_topk" "${ENT[@]}"

# 6. summary
"$PY" - "$OUT" <<'EOF' > "$OUT/summary.md" 2> "$OUT/logs/summary.log"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print("# Native Top-k training experiment\n")
print("## Training\n\n| run | steps | first loss | final loss | tokens/s | seconds |\n|---|---|---|---|---|---|")
for name in ("sft-dense", "sft-topk"):
    f = out / "train" / name / "train_summary.json"
    if f.exists():
        s = json.loads(f.read_text())
        print(f"| {name} (k={s['config']['k']}) | {s['steps']} | {s['first_loss']:.4f} | "
              f"{s['final_loss']:.4f} | {s['tokens_per_s']:,.0f} | {s['seconds']} |")
print("\n## Evaluation (held-out seeds)\n")
for f in sorted((out / "eval").rglob("table.md")):
    print(f"### {f.parent.relative_to(out / 'eval')}\n\n{f.read_text()}\n")
print("## Attention entropy\n")
for f in sorted((out / "entropy").rglob("entropy.md")):
    print(f"### {f.parent.name}\n\n{f.read_text().split(chr(10), 2)[-1]}\n")
print("## Stage timings (seconds, exit code)\n\n```\n" + (out / "timings.tsv").read_text() + "```")
EOF
printf 'total\t%s\t0\n' "$(( $(date +%s) - T0 ))" >> "$TIMES"
echo "== done in $(( $(date +%s) - T0 ))s; summary: $OUT/summary.md"
cat "$TIMES"
