"""Where an eager (DynamicCache) decode step of a sparsified model spends its time: per mode,
the wall time of a step, the GPU time of its kernels, and the host time by operator (torch
profiler, CPU and CUDA activities), for dense SDPA (flash preferred, no `sparsify`), full
attention over key ranges (TopKConfig(k=None)) and exact Top-k kv_group k=2048 (random-weight
Llama-3-8B-shaped model with few layers, batch 1).

Run on the device machine: PYTHONPATH=src python3 scripts/device_eager_timeline.py [layers] [ctx]"""
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from topkattn import TopKConfig, sparsify
from topkattn.bench.generate import _fill, _prefill, llama3_8b_random
from topkattn.integrations.hf import _sdpa_priority
from transformers import DynamicCache

LAYERS = int(sys.argv[1]) if len(sys.argv) > 1 else 4
CTX = int(sys.argv[2]) if len(sys.argv) > 2 else 32768
STEPS = 10
model = llama3_8b_random(LAYERS, CTX + 256)
kv, _ = _prefill(model, CTX)
for name, cfg in [("dense flash (no sparsify)", None),
                  ("dense k=None", TopKConfig(k=None)),
                  ("topk kv_group", TopKConfig(k=2048, granularity="kv_group"))]:
    cache = DynamicCache()
    tok = torch.zeros(1, 1, dtype=torch.long, device="cuda")
    outer = sparsify(model, cfg) if cfg is not None else _sdpa_priority()
    with torch.no_grad(), outer:
        _fill(cache, kv, 1)
        i = 0

        def step():
            global i
            pos = torch.full((1, 1), CTX + i, device="cuda")
            i += 1
            model(input_ids=tok, past_key_values=cache, position_ids=pos, use_cache=True)

        for _ in range(3):
            step()
        torch.cuda.synchronize()
        walls = []
        for _ in range(STEPS):
            t = time.perf_counter()
            step()
            torch.cuda.synchronize()
            walls.append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter()
        for _ in range(STEPS):
            step()
        torch.cuda.synchronize()
        queued = (time.perf_counter() - t) * 1e3 / STEPS
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(STEPS):
                step()
            torch.cuda.synchronize()
    ev = prof.key_averages()
    gpu_us = sum(e.self_device_time_total for e in ev) / STEPS
    walls.sort()
    print(f"\n== {name}: {walls[len(walls) // 2]:.2f} ms per synchronised step, {queued:.2f} ms "
          f"per step when queued, kernels {gpu_us / 1e3:.2f} ms per step ({LAYERS} layers, {CTX})",
          flush=True)
    print(ev.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))
    print(ev.table(sort_by="self_device_time_total", row_limit=12, max_name_column_width=60))
