"""Host time of eager (DynamicCache) decode steps of a sparsified model, by function (cProfile):
random-weight Llama-3-8B-shaped model with few layers, 32k context, Top-k kv_group k=2048 and,
for comparison, full attention through the same attention function (TopKConfig(k=None)).

Run on the device machine: PYTHONPATH=src python3 scripts/device_eager_profile.py"""
import cProfile
import pstats
import time

import torch
from transformers import DynamicCache

from topkattn import TopKConfig, sparsify
from topkattn.bench.generate import _fill, _prefill, llama3_8b_random

LAYERS, CTX, STEPS = 4, 32768, 10
model = llama3_8b_random(LAYERS, CTX + 64)
kv, _ = _prefill(model, CTX)
for name, cfg in [("topk kv_group", TopKConfig(k=2048, granularity="kv_group")),
                  ("dense k=None", TopKConfig(k=None))]:
    cache = DynamicCache()
    tok = torch.zeros(1, 1, dtype=torch.long, device="cuda")
    with torch.no_grad(), sparsify(model, cfg):
        _fill(cache, kv, 1)

        def step(i):
            pos = torch.full((1, 1), CTX + i, device="cuda")
            model(input_ids=tok, past_key_values=cache, position_ids=pos, use_cache=True)

        for i in range(3):
            step(i)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for i in range(3, 3 + STEPS):
            step(i)
        torch.cuda.synchronize()
        ms = (time.perf_counter() - t) * 1e3 / STEPS
        pr = cProfile.Profile()
        pr.enable()
        for i in range(3 + STEPS, 3 + 2 * STEPS):
            step(i)
        torch.cuda.synchronize()
        pr.disable()
    print(f"\n== {name}: {ms:.2f} ms per eager step ({LAYERS} layers)", flush=True)
    pstats.Stats(pr).sort_stats("tottime").print_stats(28)
