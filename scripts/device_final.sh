#!/usr/bin/env bash
# One device call: prefill kernel tests under three configurations (bcc, bcc without the PTX
# store, radix), then the benchmarks, the prefill one under the first configuration that passed.
set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1
R=/tmp/rf; mkdir -p $R/bench
cfg_ok=""
for cfg in "bcc 1" "bcc 0" "radix 1"; do
  set -- $cfg
  export TOPKATTN_PREFILL_METHOD=$1 TOPKATTN_PREFILL_ASM=$2
  if timeout 110 python3 -m pytest tests/ops/test_triton_prefill.py -q -x -p no:cacheprovider > $R/tests_$1_$2.txt 2>&1; then
    echo "prefill tests PASS method=$1 asm=$2"; cfg_ok="$1 $2"; break
  else
    echo "prefill tests FAIL method=$1 asm=$2"; grep -E "^E |FAILED|passed|failed" $R/tests_$1_$2.txt | head -8
  fi
done
set -- ${cfg_ok:-radix 1}
export TOPKATTN_PREFILL_METHOD=$1 TOPKATTN_PREFILL_ASM=$2
echo "benchmarks with method=$1 asm=$2"
b() { timeout $1 python3 -m topkattn.bench.run --op $2 ${@:3} --out $R/bench 2>&1 | grep -v "^|---" | tail -22; }
b 100 prefill --ctx 8k,16k --k 2048 --batch 1
b 60 indexer_decode --ctx 32k,128k --k 2048 --batch 1,8
b 60 decode --ctx 32k,128k --k 2048 --batch 1,8
b 40 select --ctx 32k,128k --k 2048 --batch 1,8
b 40 sparse --ctx 128k --k 2048 --batch 8
tar czf $OUT/res.tgz -C $R .
