"""Where the time of one sparsified decode step goes, inside a model.

Random-weight Llama-3-8B-shaped model (few layers), static cache filled by a dense prefill of
random tokens, then per mode (dense key ranges, exact Top-k kv_group / query_head):
per-kernel GPU time of eager decode steps (torch profiler), and the attention op timed alone in
a CUDA graph on the model's own layer-0 K/V against random K/V of the same shape.

Run on the device machine: PYTHONPATH=src python3 scripts/device_generate_profile.py [OUT]"""
import json
import sys

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import StaticCache

from topkattn import TopKConfig, sparsify
from topkattn.bench.common import time_graph_ms
from topkattn.bench.generate import _fill, _prefill, llama3_8b_random
from topkattn.ops.topk.custom_ops import range_decode_op, topk_decode_op

LAYERS, K, STEPS = 4, 2048, 4
out = {}
model = llama3_8b_random(LAYERS, 131072 + 64)
for ctx in (32768, 131072):
    kv, _ = _prefill(model, ctx)
    for B in (1, 4):
        for name, cfg in [("dense-ranges", TopKConfig(k=None)),
                          ("kv_group", TopKConfig(k=K, granularity="kv_group")),
                          ("query_head", TopKConfig(k=K, granularity="query_head"))]:
            cache = StaticCache(config=model.config, max_cache_len=ctx + 64)
            tok = torch.zeros(B, 1, dtype=torch.long, device="cuda")
            with torch.no_grad(), sparsify(model, cfg):
                _fill(cache, kv, B)
                for i in range(3 + STEPS):
                    pos = torch.full((B, 1), ctx + i, device="cuda")
                    if i == 3:
                        torch.cuda.synchronize()
                        prof = profile(activities=[ProfilerActivity.CUDA])
                        prof.__enter__()
                    model(input_ids=tok, past_key_values=cache, position_ids=pos, use_cache=True)
                torch.cuda.synchronize()
                prof.__exit__(None, None, None)
            ev = sorted(((e.device_time_total / STEPS, e.count // STEPS, e.key)
                         for e in prof.key_averages() if e.device_time_total > 0), reverse=True)
            total = sum(us for us, _, _ in ev)
            key = f"B{B} {ctx // 1024}k {name}"
            out[key] = {"total_us_per_step": total, "kernels": ev[:14]}
            print(f"\n== {key}: GPU {total:.0f} us per step ({LAYERS} layers)", flush=True)
            for us, c, k in ev[:14]:
                print(f"  {us:9.1f} us  x{c:<4d} {k[:90]}")
            # the op alone: this model's layer-0 cache vs random K/V of the same shape
            kk = cache.layers[0].keys
            vv = cache.layers[0].values
            q = torch.randn(B, 32, 1, 128, device="cuda", dtype=torch.bfloat16) * kk.float().std().bfloat16()
            lo = torch.zeros(B, dtype=torch.int32, device="cuda")
            hi = torch.full((B,), ctx, dtype=torch.int32, device="cuda")
            kr, vr = torch.randn_like(kk), torch.randn_like(vv)
            # tiny: the scale of a model with random norm weights (scores ~1e-4)
            for label, (a, b) in [("model kv", (kk, vv)), ("random kv", (kr, vr)),
                                  ("tiny kv", (kk * 0.01, vv))]:
                if name == "dense-ranges":
                    fn = lambda: range_decode_op(q, a, b, lo, hi, 128 ** -0.5)
                else:
                    fn = lambda: topk_decode_op(q, a, b, lo, hi, K, 128 ** -0.5, 0, 0, name == "kv_group")
                ms = time_graph_ms(fn)
                out[key][label + " graph ms"] = ms
                print(f"  op alone in a graph, {label}: {1000 * ms:.1f} us")
            with profile(activities=[ProfilerActivity.CUDA]) as p2:
                fn = lambda: topk_decode_op(q, kk, vv, lo, hi, K, 128 ** -0.5, 0, 0, name == "kv_group") \
                    if name != "dense-ranges" else range_decode_op(q, kk, vv, lo, hi, 128 ** -0.5)
                for _ in range(3):
                    fn()
                torch.cuda.synchronize()
            ev2 = sorted(((e.device_time_total / 3, e.key) for e in p2.key_averages() if e.device_time_total > 0), reverse=True)
            print("  op alone on model kv, eager kernels: " + ", ".join(f"{k[:30]} {us:.1f}" for us, k in ev2[:6]))
            del cache, kr, vr
            torch.cuda.empty_cache()
    del kv
if len(sys.argv) > 1:
    with open(sys.argv[1], "w") as f:
        json.dump(out, f, indent=1)
