#!/usr/bin/env bash
# One device call: every kernel test on CUDA (prefill with the bcc threshold search), the
# band/fallback row counts of the prefill threshold search at 8k, then the benchmarks (prefill
# with radix too when bcc failed its tests).
set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1
R=/tmp/rf; mkdir -p $R/bench
export TOPKATTN_PREFILL_METHOD=bcc
if timeout 200 python3 -m pytest tests/ops -q -x -p no:cacheprovider > $R/tests.txt 2>&1; then
  echo "kernel tests PASS (bcc)"; else echo "kernel tests FAIL or timeout (bcc)"; export TOPKATTN_PREFILL_METHOD=radix; fi
grep -E "^E |FAILED|passed|failed" $R/tests.txt | head -6; tail -c 300 $R/tests.txt
timeout 60 python3 - <<'PY'
import torch, topkattn.ops.topk.triton_prefill as tp
q = torch.randn(1, 32, 8192, 128, device="cuda", dtype=torch.bfloat16)
k = torch.randn(1, 8, 8192, 128, device="cuda", dtype=torch.bfloat16)
for group in (False, True):
    a = tp.prefill_thresholds(q, k, 2048, True, 128 ** -0.5, 0, 0, group, method="bcc", return_status=True)
    b = tp.prefill_thresholds(q, k, 2048, True, 128 ** -0.5, 0, 0, group, method="radix")
    st = a[2]
    print("group", group, "status counts", torch.bincount(st.flatten().long()).tolist(),
          "T mismatches", (a[0] != b[0]).sum().item(), "P mismatches", (a[1] != b[1]).sum().item())
PY
echo "benchmarks with method=$TOPKATTN_PREFILL_METHOD"
b() { timeout $1 python3 -m topkattn.bench.run --op $2 ${@:3} --out $R/bench 2>&1 | grep -v "^|---" | tail -12; }
b 100 prefill --ctx 8k,16k --k 2048 --batch 1
b 60 decode --ctx 32k,128k --k 2048 --batch 1,8
tar czf $OUT/res.tgz -C $R .
