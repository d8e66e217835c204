"""Decode variants on the device: CUDA-graph times of `topk_decode` (k=2048) for scores-pass
settings (block size, tiles per program, pipeline stages, warps) and selection sample sizes
vs SDPA dense, plus a per-kernel profile of the default.

Run on the device machine: PYTHONPATH=src python3 scripts/device_decode_variants.py"""
import itertools

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import topkattn.ops.select.triton_select as ts
import topkattn.ops.topk.triton_decode as td
from topkattn.bench.common import time_graph_ms

KK = 2048
KNOBS = ("DECODE_BLOCK_N", "DECODE_TILES", "DECODE_STAGES", "DECODE_WARPS")
default = {name: getattr(td, name) for name in KNOBS}
default_ns = ts.SELECT_SAMPLE
best = {}
for B, n in [(1, 32768), (1, 131072), (8, 32768), (8, 131072)]:
    q = torch.randn(B, 32, 1, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(B, 8, n, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    sd = time_graph_ms(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
    res = []
    for bn, tiles, stages, warps in itertools.product((64, 128), (1, 4, 8), (1, 3), (4, 8)):
        if tiles == 1 and stages > 1:
            continue
        for name, val in zip(KNOBS, (bn, tiles, stages, warps)):
            setattr(td, name, val)
        t = time_graph_ms(lambda: td.topk_decode(q, k, v, KK, granularity="kv_group"))
        res.append((t, f"bn{bn} t{tiles} s{stages} w{warps}"))
    for name, val in default.items():
        setattr(td, name, val)
    res.sort()
    best[(B, n)] = res[0]
    line = [f"B{B} {n // 1024}k sdpa {sd:.4f}"]
    line += [f"kv {cfg} {t:.4f} ({t / sd:.3f}x)" for t, cfg in res[:4]]
    t = time_graph_ms(lambda: td.topk_decode(q, k, v, KK, granularity="kv_group"))
    line.append(f"kv default {t:.4f} ({t / sd:.3f}x)")
    t = time_graph_ms(lambda: td.topk_decode(q, k, v, KK, granularity="query_head"))
    line.append(f"qh default {t:.4f} ({t / sd:.3f}x)")
    for ns in (1024, 2048, 8192):
        ts.SELECT_SAMPLE = ns
        t = time_graph_ms(lambda: td.topk_decode(q, k, v, KK, granularity="kv_group"))
        line.append(f"kv sample{ns} {t:.4f} ({t / sd:.3f}x)")
    ts.SELECT_SAMPLE = default_ns
    print(" | ".join(line), flush=True)
    if (B, n) in [(8, 131072), (1, 131072)]:
        fn = lambda: td.topk_decode(q, k, v, KK, granularity="kv_group")
        for _ in range(2):
            fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as p:
            for _ in range(5):
                fn()
            torch.cuda.synchronize()
        print(f"== kv_group B{B} {n // 1024}k (x5), default settings")
        print(p.key_averages().table(sort_by="cuda_time_total", row_limit=10, max_name_column_width=36))
    del q, k, v
    torch.cuda.empty_cache()
print("best kv_group setting per shape:", {f"B{b} {n // 1024}k": c for (b, n), (t, c) in best.items()})
