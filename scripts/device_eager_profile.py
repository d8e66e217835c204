"""Host time of eager (DynamicCache) decode steps of a sparsified model: per step for dense SDPA
(flash preferred, no `sparsify`), full attention through our attention function
(TopKConfig(k=None)) and exact Top-k kv_group k=2048; by function (cProfile) for the last two;
and the host time of one layer's attention call alone for each (random-weight
Llama-3-8B-shaped model with few layers, 32k context, batch 1).

Run on the device machine: PYTHONPATH=src python3 scripts/device_eager_profile.py"""
import contextlib
import cProfile
import pstats
import time

import torch
from transformers import DynamicCache

from topkattn import TopKConfig, sparsify
from topkattn.bench.common import host_us
from topkattn.bench.generate import _fill, _prefill, llama3_8b_random
from topkattn.integrations.hf import _sdpa_priority, topk_attention_forward

LAYERS, CTX, STEPS = 4, 32768, 10
model = llama3_8b_random(LAYERS, CTX + 64)
kv, _ = _prefill(model, CTX)
for name, cfg in [("dense flash (no sparsify)", None),
                  ("topk kv_group", TopKConfig(k=2048, granularity="kv_group")),
                  ("dense k=None", TopKConfig(k=None))]:
    cache = DynamicCache()
    tok = torch.zeros(1, 1, dtype=torch.long, device="cuda")
    outer = sparsify(model, cfg) if cfg is not None else _sdpa_priority()
    with torch.no_grad(), outer:
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
    if cfg is not None:
        pstats.Stats(pr).sort_stats("tottime").print_stats(40)
        pstats.Stats(pr).sort_stats("cumtime").print_stats("topkattn", 30)

# one layer's attention call alone (host us per call, GPU queue never full)
from topkattn.integrations import key_ranges as kr  # noqa: E402


attn = model.model.layers[0].self_attn
q = torch.randn(1, 32, 1, 128, device="cuda", dtype=torch.bfloat16)
k, v = kv[0]
ranges = kr.topk_mask(1, 1, CTX, q_offset=CTX - 1, device="cuda")
for name, cfg in [("topk kv_group", TopKConfig(k=2048, granularity="kv_group")),
                  ("dense k=None", TopKConfig(k=None))]:
    with sparsify(model, cfg):
        print(f"{name}: topk_attention_forward {host_us(lambda: topk_attention_forward(attn, q, k, v, ranges)):.1f} us")
with _sdpa_priority():
    print(f"sdpa flash: {host_us(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)):.1f} us")
print(f"topk_mask: {host_us(lambda: kr.topk_mask(1, 1, CTX, q_offset=CTX - 1, device='cuda')):.1f} us")
with contextlib.suppress(Exception):
    from transformers.masking_utils import sdpa_mask
    print(f"sdpa_mask: {host_us(lambda: sdpa_mask(batch_size=1, q_length=1, kv_length=CTX, q_offset=CTX - 1, device='cuda')):.1f} us")
