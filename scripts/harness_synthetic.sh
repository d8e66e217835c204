#!/usr/bin/env bash
# The synthetic needle tasks (passkey, multi-key needles) through the lm-evaluation-harness
# model `topkattn` on the embedded model (SmolLM2-135M-Instruct), on CPU, one run per k.
#
#   scripts/harness_synthetic.sh [OUT]
#
# OUT (default runs/harness_synthetic) gets the fixtures of scripts/make_suite_fixtures.py
# (OUT/fix/harness: a JSONL of prompts and a generate_until YAML per task) and lm-eval's
# results per k under OUT/k<k>/. Settings from the environment: PY (a Python with lm-eval,
# default python3; e.g. a venv made with `python -m venv --system-site-packages` and
# `pip install lm-eval==0.4.13`), KS (64,full), SAMPLES (24 per task), LEN (1024 tokens),
# LIMIT (lm-eval --limit, default none), BATCH (1), PHASES (decode: a dense prompt, then Top-k
# decoding, the protocol of `topkattn eval`; `decode,prefill` also sparsifies the prompt, which
# the reference path does slowly on CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
OUT=${1:-runs/harness_synthetic}
PY=${PY:-python3}
KS=${KS:-64,full}
SAMPLES=${SAMPLES:-24}
LEN=${LEN:-1024}
BATCH=${BATCH:-1}
PHASES=${PHASES:-decode}
NICE=(nice -n 15)

if [[ ! -f "$OUT/fix/harness/topk_passkey.yaml" ]]; then
  "${NICE[@]}" "$PY" scripts/make_suite_fixtures.py "$OUT/fix" --harness-samples "$SAMPLES" \
      --harness-length "$LEN"
fi
for k in ${KS//,/ }; do
  "${NICE[@]}" "$PY" -m topkattn.integrations.lm_eval_model run --model topkattn \
      --model_args "pretrained=default,k=$k,phases=\"$PHASES\"" --tasks topk_passkey,topk_niah_multikey \
      --include_path "$OUT/fix/harness" --device cpu --batch_size "$BATCH" --log_samples \
      ${LIMIT:+--limit "$LIMIT"} --output_path "$OUT/k$k"
done
