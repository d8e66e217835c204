"""Per-kernel times (torch profiler) and CUDA-graph times of exact Top-k decode (kv_group and
query_head, k=2048) at B1 32k, B1 128k and B8 32k, Llama-3-8B shapes, against SDPA.

Run on the device machine: PYTHONPATH=src python3 scripts/device_decode_profile.py"""
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import topkattn.ops.topk.triton_decode as td
from topkattn.bench.common import time_graph_ms

for B, n in [(1, 32768), (1, 131072), (8, 32768)]:
    q = torch.randn(B, 32, 1, 128, device="cuda", dtype=torch.bfloat16)
    kc = torch.randn(B, 8, n, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(kc)
    sd = time_graph_ms(lambda: F.scaled_dot_product_attention(q, kc, v, enable_gqa=True))
    for gran in ("kv_group", "query_head"):
        fn = lambda: td.topk_decode(q, kc, v, topk=2048, granularity=gran)
        t = time_graph_ms(fn)
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as pr:
            for _ in range(5):
                fn()
            torch.cuda.synchronize()
        ev = pr.key_averages()
        parts = sorted(((e.device_time_total / 5, e.key) for e in ev if e.device_time_total > 0), reverse=True)
        kern = ", ".join(f"{name[:28]} {us:.1f}" for us, name in parts[:8])
        print(f"B{B} {n // 1024}k {gran}: graph {1000 * t:.1f} us vs sdpa {1000 * sd:.1f} us "
              f"({t / sd:.3f}x) | kernels (us, eager): {kern}", flush=True)
    del q, kc, v
    torch.cuda.empty_cache()
