"""Where an eager decode step's time goes: host (until the forward returns) against wall clock
(after a synchronisation), per mode and context, on the random Llama-3-8B-shaped model of
`topkattn bench --op generate`, with a cache of random keys and values (no prefill), and how
many layer calls replayed a decode graph.

    PYTHONPATH=src:. python scripts/device_eager_host.py [layers] [rounds] [contexts, e.g. 32768,131072] [batches, e.g. 1,4]

The modes run interleaved, ``rounds`` times over, because the host time of an eager step
varies from run to run on the device (by up to 2x on the H200 machine, 2026-12-03).
"""

import contextlib
import statistics
import sys
import time

import torch
from transformers import DynamicCache

from topkattn import TopKConfig, sparsify
from topkattn.bench.generate import llama3_8b_random
from topkattn.integrations import decode_graphs
from topkattn.integrations.hf import _sdpa_priority

REPLAYS = [0]
_run = decode_graphs.run


def counted(*a, **kw):
    out = _run(*a, **kw)
    REPLAYS[0] += out is not None
    return out


decode_graphs.run = counted


def steps(model, ctx, B, ctxm, n=24):
    cache = DynamicCache()
    for i in range(model.config.num_hidden_layers):
        k = torch.randn(B, 8, ctx, 128, device="cuda", dtype=torch.bfloat16)
        cache.update(k, torch.randn_like(k), i)
    tok = torch.zeros(B, 1, dtype=torch.long, device="cuda")
    host, wall = [], []
    with torch.no_grad(), ctxm:
        for i in range(n):
            pos = torch.full((B, 1), ctx + i, device="cuda")
            torch.cuda.synchronize()
            t = time.perf_counter()
            out = model(input_ids=tok, past_key_values=cache, position_ids=pos)
            h = time.perf_counter()
            torch.cuda.synchronize()
            w = time.perf_counter()
            host.append((h - t) * 1e3)
            wall.append((w - t) * 1e3)
    return statistics.median(host[8:]), statistics.median(wall[8:])


def main():
    layers = int(sys.argv[1]) if len(sys.argv) > 1 else 32
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    ctxs = [int(c) for c in sys.argv[3].split(",")] if len(sys.argv) > 3 else [32768, 131072]
    batches = [int(b) for b in sys.argv[4].split(",")] if len(sys.argv) > 4 else [1]
    model = llama3_8b_random(layers, max(ctxs) + 64)
    for ctx, B in [(c, b) for _ in range(rounds) for c in ctxs for b in batches]:
        for name, make in (("dense-flash", lambda: _sdpa_priority()),
                           ("dense-default", contextlib.nullcontext),
                           ("topk graphs", lambda: sparsify(model, TopKConfig(k=2048, granularity="kv_group"))),
                           ("topk plain", lambda: sparsify(model, TopKConfig(k=2048, granularity="kv_group", decode_graphs=False))),
                           ("ranges graphs", lambda: sparsify(model, TopKConfig(k=None)))):
            REPLAYS[0] = 0
            h, w = steps(model, ctx, B, make())
            print(f"B{B} ctx {ctx // 1024}k {name:14s} host {h:6.1f} ms  wall {w:6.1f} ms  replays {REPLAYS[0]}",
                  flush=True)
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
