#!/usr/bin/env bash
# One device call: GPU-marked kernel tests, then every benchmark (each step time-limited and
# logged under $OUT). Usage on the device machine, from the repo root:
#   bash scripts/device_bench.sh [ops]      (ops default: select,decode,sparse,prefill;
#   also indexer_decode)
set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1
FINAL=${OUT:-runs/device}
OUT=/tmp/topkattn_res  # at most 8 files come back: everything is packed into res.tgz
mkdir -p "$OUT/bench" "$FINAL"
pack() { tar czf "$FINAL/res.tgz" -C "$OUT" . ; }
OPS=${1:-select,decode,sparse,prefill}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/env.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/env.txt"
if [[ "${SKIP_TESTS:-0}" != 1 ]]; then
  # every kernel test runs on CUDA when it is there (tests/ops/compare.py:dev), gpu-marked ones too
  # pytest-xdist, where installed, spreads Triton's compilation over the cores
  par=$(python3 -c "import xdist" 2>/dev/null && echo "-n 10" || echo "-x")
  timeout ${TEST_TIMEOUT:-300} python3 -m pytest tests/ops -q $par -p no:cacheprovider 2>&1 | tail -25 | tee "$OUT/gpu_tests.txt"
  pack
fi
for op in ${OPS//,/ }; do
  case $op in
    select)  args="--ctx 32k,128k,1m --k 256,2048,8192 --batch 1,8" ;;
    decode)  args="--ctx 8k,32k,128k --k 256,2048,8192 --batch 1,8" ;;
    sparse)  args="--ctx 32k,128k --k 2048 --batch 1,8" ;;
    prefill) args="--ctx 8k,16k --k 2048 --batch 1" ;;
    indexer_decode) args="--ctx 32k,128k --k 2048 --batch 1,8" ;;
  esac
  # per-op override, e.g. ARGS_decode="--ctx 32k,128k --k 2048 --batch 1,8"
  ov="ARGS_$op"; args=${!ov:-$args}
  timeout ${BENCH_TIMEOUT:-300} python3 -m topkattn.bench.run --op $op $args --out "$OUT/bench" 2>&1 | tail -40 | tee "$OUT/bench_$op.log"
  pack
done
