#!/usr/bin/env bash
# One `topkattn study` spread over several processes on one machine (one GPU is enough: the
# embedded model's evaluations are host-bound, so processes sharing the GPU run side by side).
#
#   OUT=runs/study BUDGET=full bash scripts/study_parallel.sh [extra study options]
#
# Processes, all on the same --out (finished stages are reused, so rerunning resumes):
#   claim 1:        N1 shards of claim1-eval           (--stages claim1-eval --shard i/N1)
#   claim 3:        N3 shards of both claim3 lengths   (--stages 'claim3-*' --shard i/N3)
#   base model:     claim2-eval-base; N4 shards of claim4-base
#   each fine-tune: its training, claim 2 evaluation and claim 4 entropy ('*-<arm>-s<seed>')
# Then one `--report-only` writes study.md / study.json / the plots from every finished stage.
# Environment: OUT, MODEL (default), BUDGET (full), DEVICE (cuda), BATCH (16: samples per
# forward of claims 1 and 2), N1 (3), N3 (6), N4 (2), SEEDS (0 1: must match the budget's or
# --train-seeds), LIMIT (seconds each process may run before it is stopped; 0: no limit; a
# stopped process keeps its finished samples), TOPKATTN (the command, default topkattn).
set -muo pipefail  # -m: background processes take SIGINT (the stop of LIMIT)
OUT=${OUT:-runs/study}; MODEL=${MODEL:-default}; BUDGET=${BUDGET:-full}
DEVICE=${DEVICE:-cuda}; BATCH=${BATCH:-16}; N1=${N1:-3}; N3=${N3:-6}; N4=${N4:-2}
SEEDS=${SEEDS:-0 1}
LIMIT=${LIMIT:-0}; TOPKATTN=${TOPKATTN:-topkattn}
mkdir -p "$OUT/logs"
common=(study --model "$MODEL" --out "$OUT" --budget "$BUDGET" --device "$DEVICE"
        --batch-size "$BATCH" --quiet "$@")
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TOKENIZERS_PARALLELISM=false
pids=()
launch() {  # name, study options...
  local name=$1; shift
  if [ "$LIMIT" -gt 0 ]; then
    timeout --signal=INT --kill-after=30 "$LIMIT" $TOPKATTN "${common[@]}" "$@" \
      >"$OUT/logs/$name.log" 2>&1 &
  else
    $TOPKATTN "${common[@]}" "$@" >"$OUT/logs/$name.log" 2>&1 &
  fi
  pids+=($!)
}
for ((i = 0; i < N1; i++)); do launch "claim1-$i" --stages claim1-eval --shard "$i/$N1"; done
for ((i = 0; i < N3; i++)); do launch "claim3-$i" --stages 'claim3-*' --shard "$i/$N3"; done
launch base --stages claim2-eval-base
for ((i = 0; i < N4; i++)); do launch "claim4-base-$i" --stages claim4-base --shard "$i/$N4"; done
for s in $SEEDS; do
  for arm in dense topk; do launch "$arm-s$s" --stages "*-$arm-s$s"; done
done
t0=$(date +%s); failed=0
for p in "${pids[@]}"; do wait "$p" || failed=$((failed + 1)); done
echo "study_parallel: ${#pids[@]} processes in $(( $(date +%s) - t0 )) s, $failed stopped or failed (logs: $OUT/logs)"
$TOPKATTN "${common[@]}" --report-only
