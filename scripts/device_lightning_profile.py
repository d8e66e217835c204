"""Per-kernel GPU time of decode steps with the Lightning Indexer's range path, against exact
Top-k kv_group, inside a random-weight Llama-3-8B-shaped model (few layers, StaticCache, batch
4, 128k context filled with random keys), eager steps under the torch profiler.

Run on the device machine: PYTHONPATH=src python3 scripts/device_lightning_profile.py"""
import warnings

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import StaticCache

from topkattn import TopKConfig, sparsify
from topkattn.bench.generate import _fill, _prefill, llama3_8b_random
from topkattn.selectors.lightning import LightningSelector

warnings.simplefilter("ignore")
LAYERS, K, STEPS, CTX, B = 4, 2048, 4, 131072, 4
model = llama3_8b_random(LAYERS, CTX + 64)
kv, _ = _prefill(model, CTX)
for name, cfg in [("lightning", TopKConfig(k=K, selector=LightningSelector())),
                  ("kv_group", TopKConfig(k=K, granularity="kv_group"))]:
    cache = StaticCache(config=model.config, max_cache_len=CTX + 64)
    tok = torch.zeros(B, 1, dtype=torch.long, device="cuda")
    with torch.no_grad(), sparsify(model, cfg):
        _fill(cache, kv, B)
        for i in range(3 + STEPS):
            pos = torch.full((B, 1), CTX + i, device="cuda")
            if i == 3:
                torch.cuda.synchronize()
                prof = profile(activities=[ProfilerActivity.CUDA])
                prof.__enter__()
            model(input_ids=tok, past_key_values=cache, position_ids=pos, use_cache=True)
        torch.cuda.synchronize()
        prof.__exit__(None, None, None)
    print(f"== {name}: per-kernel CUDA time over {STEPS} steps x {LAYERS} layers")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=60))
