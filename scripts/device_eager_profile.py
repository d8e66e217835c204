"""Where the host time of an eager decode step goes, per component and per Python function, for
dense SDPA (flash backend) and sparsified exact Top-k with decode graphs, on the random
Llama-3-8B-shaped model of `topkattn bench --op generate` with a cache of random keys and values.

    PYTHONPATH=src:. python scripts/device_eager_profile.py [layers] [context] [rounds]

Per mode it prints the median host time of a step (until the forward returns) and the wall
time (after a synchronisation), the host microseconds per layer call of the attention
function, of the cache update and of the mask function (timed wrappers), and then the top
functions of a cProfile of a few steps by their own time (cProfile slows Python calls down,
so its figures are shares, not times).
"""

import contextlib
import cProfile
import io
import pstats
import statistics
import sys
import time
from collections import defaultdict

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from topkattn import TopKConfig, sparsify
from topkattn.bench.generate import llama3_8b_random
from topkattn.integrations import growing_cache, hf, key_ranges
from topkattn.integrations.hf import _sdpa_priority

SPENT: dict[str, float] = defaultdict(float)
CALLS: dict[str, int] = defaultdict(int)


def timed(name, fn):
    def wrapper(*a, **kw):
        t = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            SPENT[name] += time.perf_counter() - t
            CALLS[name] += 1
    return wrapper


def install_timers():
    hf.topk_attention_forward = timed("attention (topk)", hf.topk_attention_forward)
    key_ranges.topk_mask = timed("mask (topk)", key_ranges.topk_mask)
    growing_cache._update = timed("cache update (growing)", growing_cache._update)
    DynamicLayer.update = timed("cache update (transformers)", DynamicLayer.update)
    growing_cache._ORIGINAL_UPDATE = DynamicLayer.update
    ALL_ATTENTION_FUNCTIONS["sdpa"] = timed("attention (sdpa)", ALL_ATTENTION_FUNCTIONS["sdpa"])


def filled_cache(model, ctx):
    cache = DynamicCache()
    for i in range(model.config.num_hidden_layers):
        k = torch.randn(1, 8, ctx, 128, device="cuda", dtype=torch.bfloat16)
        cache.update(k, torch.randn_like(k), i)
    return cache


def step(model, cache, tok, pos):
    return model(input_ids=tok, past_key_values=cache, position_ids=pos)


def measure(model, ctx, make, n=40, profile_steps=8):
    cache = filled_cache(model, ctx)
    tok = torch.zeros(1, 1, dtype=torch.long, device="cuda")
    host, wall = [], []
    with torch.no_grad(), make():
        for i in range(n):
            pos = torch.full((1, 1), ctx + i, device="cuda")
            if i == n // 2:
                SPENT.clear()
                CALLS.clear()
            torch.cuda.synchronize()
            t = time.perf_counter()
            step(model, cache, tok, pos)
            h = time.perf_counter()
            torch.cuda.synchronize()
            host.append((h - t) * 1e3)
            wall.append((time.perf_counter() - t) * 1e3)
        parts = {k: (SPENT[k] / CALLS[k] * 1e6, CALLS[k] / (n - n // 2)) for k in SPENT}
        prof = cProfile.Profile()
        for i in range(profile_steps):
            pos = torch.full((1, 1), ctx + n + i, device="cuda")
            torch.cuda.synchronize()
            prof.enable()
            step(model, cache, tok, pos)
            prof.disable()
        torch.cuda.synchronize()
    return statistics.median(host[n // 2:]), statistics.median(wall[n // 2:]), parts, prof


def main():
    layers = int(sys.argv[1]) if len(sys.argv) > 1 else 32
    ctx = int(sys.argv[2]) if len(sys.argv) > 2 else 32768
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    model = llama3_8b_random(layers, ctx + 256)
    install_timers()
    modes = (("dense-flash", _sdpa_priority),
             ("topk graphs", lambda: sparsify(model, TopKConfig(k=2048, granularity="kv_group"))),
             ("ranges graphs", lambda: sparsify(model, TopKConfig(k=None))))
    for r in range(rounds):
        for name, make in modes:
            h, w, parts, prof = measure(model, ctx, make)
            print(f"round {r} ctx {ctx // 1024}k {name:14s} host {h:6.2f} ms  wall {w:6.2f} ms",
                  flush=True)
            for k, (us, per_step) in sorted(parts.items()):
                print(f"    {k:28s} {us:7.1f} us/call  {per_step:5.1f} calls/step")
            if r == rounds - 1:
                s = io.StringIO()
                pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(28)
                print(s.getvalue()[-6000:], flush=True)
            torch.cuda.empty_cache()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
