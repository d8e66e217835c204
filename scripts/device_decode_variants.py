"""Decode variants on the device: CUDA-graph times of `topk_decode` (k=2048) for several
scores-kernel block sizes vs SDPA dense, plus a per-kernel profile of the default.

Run on the device machine: PYTHONPATH=src python3 scripts/device_decode_variants.py"""
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import topkattn.ops.select.triton_select as ts
import topkattn.ops.topk.triton_decode as td
from topkattn.bench.common import time_graph_ms

KK = 2048
default_bn = td.DECODE_BLOCK_N
default_w = td.DECODE_SPARSE_WAVES
default_it = ts.SELECT_ITERS
for B, n in [(1, 32768), (1, 131072), (8, 32768), (8, 131072)]:
    q = torch.randn(B, 32, 1, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(B, 8, n, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    sd = time_graph_ms(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
    line = [f"B{B} {n // 1024}k sdpa {sd:.4f}"]
    for gran in ("kv_group", "query_head"):
        for bn in (64, 128):
            td.DECODE_BLOCK_N = bn
            t = time_graph_ms(lambda: td.topk_decode(q, k, v, KK, granularity=gran))
            line.append(f"{gran[:2]} bn{bn} {t:.4f} ({t / sd:.3f}x)")
    td.DECODE_BLOCK_N = default_bn
    td.DECODE_FUSE_HIST = False
    for gran in ("kv_group", "query_head"):
        t = time_graph_ms(lambda: td.topk_decode(q, k, v, KK, granularity=gran))
        line.append(f"{gran[:2]} unfused-hist {t:.4f} ({t / sd:.3f}x)")
    td.DECODE_FUSE_HIST = True
    for it in (1, 2, 8):
        ts.SELECT_ITERS = it
        t = time_graph_ms(lambda: td.topk_decode(q, k, v, KK, granularity="kv_group"))
        line.append(f"kv sel-iters{it} {t:.4f} ({t / sd:.3f}x)")
    ts.SELECT_ITERS = default_it
    for w in (4, 8):
        td.DECODE_SPARSE_WAVES = w
        t = time_graph_ms(lambda: td.topk_decode(q, k, v, KK, granularity="kv_group"))
        line.append(f"kv waves{w} {t:.4f} ({t / sd:.3f}x)")
    td.DECODE_SPARSE_WAVES = default_w
    print(" | ".join(line), flush=True)
    if (B, n) in [(8, 131072), (1, 32768)]:
        fn = lambda: td.topk_decode(q, k, v, KK, granularity="kv_group")
        for _ in range(2):
            fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as p:
            for _ in range(5):
                fn()
            torch.cuda.synchronize()
        print(f"== kv_group B{B} {n // 1024}k (x5)")
        print(p.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=36))
    del q, k, v
    torch.cuda.empty_cache()
