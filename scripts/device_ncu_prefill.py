"""Prefill threshold search calls to profile with ncu on the device (Llama-3-8B shapes, 8k,
query_head, k=2048): one warm-up and two profiled `prefill_thresholds` calls.

    ncu --clock-control none --kernel-name regex:'_collect_kernel|_count_kernel' --launch-skip 2 \\
        --launch-count 2 --set full --import-source yes -o /tmp/pre -f \\
        python3 scripts/device_ncu_prefill.py
    ncu -i /tmp/pre.ncu-rep --page details --csv > $OUT/details.csv
"""
import math

import torch

import topkattn.ops.topk.triton_prefill as tp

L = 8192
torch.manual_seed(0)
q = torch.randn(1, 32, L, 128, device="cuda", dtype=torch.bfloat16)
k = torch.randn(1, 8, L, 128, device="cuda", dtype=torch.bfloat16)
for _ in range(3):
    tp.prefill_thresholds(q, k, topk=2048, causal=True, scale=1 / math.sqrt(128))
torch.cuda.synchronize()
