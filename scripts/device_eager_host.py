"""Where an eager decode step's time goes: host (until the forward returns) against wall clock
(after a synchronisation), per mode and context, on the random Llama-3-8B-shaped model of
`topkattn bench --op generate`, with a cache of random keys and values (no prefill), how many
layer calls replayed a decode graph, and how much of a step Python's garbage collector took.

    PYTHONPATH=src:. python scripts/device_eager_host.py [--layers 32] [--rounds 6]
        [--ctx 32768,131072] [--batch 1] [--steps 12] [--gc on,off] [--out FILE.json]

The host time of an eager step varies from run to run on the device machine (by up to 2x on
the H200 machine, 2026-12-03), so the modes run interleaved in short blocks, ``rounds`` times
over, on one cache per cell (cropped back to the context after each block), and the summary
gives each mode's ratio to the fastest dense mode *of the same round*: the median over rounds
and its range. ``--gc`` lists the collector settings to interleave too: ``on`` (Python's
default), ``off`` (disabled during the timed steps).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import time

import torch
from transformers import DynamicCache

from topkattn import TopKConfig, sparsify
from topkattn.bench.generate import llama3_8b_random
from topkattn.integrations import decode_graphs
from topkattn.integrations.hf import _sdpa_priority
from topkattn.selectors.lightning import LightningSelector

REPLAYS = [0]
_run = decode_graphs.run


def counted(*a, **kw):
    out = _run(*a, **kw)
    REPLAYS[0] += out is not None
    return out


decode_graphs.run = counted


class GcTimer:
    """Seconds Python's collector ran, and how many collections, while installed."""

    def __init__(self):
        self.seconds, self.collections, self._t = 0.0, 0, None

    def __call__(self, phase, info):
        if phase == "start":
            self._t = time.perf_counter()
        elif self._t is not None:
            self.seconds += time.perf_counter() - self._t
            self.collections += 1
            self._t = None


def random_cache(layers: int, B: int, ctx: int) -> DynamicCache:
    cache = DynamicCache()
    for i in range(layers):
        k = torch.randn(B, 8, ctx, 128, device="cuda", dtype=torch.bfloat16)
        cache.update(k, torch.randn_like(k), i)
    return cache


def block(model, cache, ctx, B, ctxm, steps, warmup, gc_mode):
    """``steps`` decode steps after ``warmup`` on ``cache`` (cropped back to ``ctx`` after):
    median host ms, median wall ms, GC ms per step, collections per step."""
    tok = torch.zeros(B, 1, dtype=torch.long, device="cuda")
    host, wall = [], []
    timer = GcTimer()
    with torch.no_grad(), ctxm:
        for i in range(warmup + steps):
            pos = torch.full((B, 1), ctx + i, device="cuda")
            torch.cuda.synchronize()
            if i == warmup:
                gc.callbacks.append(timer)
                if gc_mode == "off":
                    gc.disable()
            t = time.perf_counter()
            model(input_ids=tok, past_key_values=cache, position_ids=pos)
            h = time.perf_counter()
            torch.cuda.synchronize()
            w = time.perf_counter()
            if i >= warmup:
                host.append((h - t) * 1e3)
                wall.append((w - t) * 1e3)
        gc.callbacks.remove(timer)
        gc.enable()
    cache.crop(ctx - cache.get_seq_length())  # drop the decoded tokens (a negative count)
    return (statistics.median(host), statistics.median(wall), timer.seconds * 1e3 / steps,
            timer.collections / steps)


def modes(model):
    return {
        "dense-flash": lambda: _sdpa_priority(),
        "dense-default": contextlib.nullcontext,
        "topk graphs": lambda: sparsify(model, TopKConfig(k=2048, granularity="kv_group")),
        "topk plain": lambda: sparsify(model, TopKConfig(k=2048, granularity="kv_group",
                                                         decode_graphs=False)),
        "ranges graphs": lambda: sparsify(model, TopKConfig(k=None)),
        "lightning graphs": lambda: sparsify(model, TopKConfig(k=2048, selector=LightningSelector())),
        "lightning plain": lambda: sparsify(model, TopKConfig(k=2048, selector=LightningSelector(),
                                                              decode_graphs=False)),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--ctx", default="32768,131072")
    p.add_argument("--batch", default="1")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--gc", default="on", help="comma list of on, off")
    p.add_argument("--modes", default="dense-flash,dense-default,topk graphs,ranges graphs",
                   help="comma list of " + ", ".join(modes(None)))
    p.add_argument("--out", default=None)
    a = p.parse_args()
    ctxs = [int(c) for c in a.ctx.split(",")]
    batches = [int(b) for b in a.batch.split(",")]
    names = a.modes.split(",")
    table = modes(None)  # names only; rebuilt on the model below
    unknown = [n for n in names if n not in table]
    if unknown:
        p.error(f"unknown modes {unknown}; allowed: {', '.join(table)}")
    gcs = a.gc.split(",")
    if not set(gcs) <= {"on", "off"}:
        p.error(f"--gc takes on and off, got {a.gc!r}")
    model = llama3_8b_random(a.layers, max(ctxs) + a.warmup + a.steps + 64)
    table = modes(model)
    rows = []
    for ctx in ctxs:
        for B in batches:
            cache = random_cache(a.layers, B, ctx)
            for r in range(a.rounds):
                for g in gcs:
                    for name in names:
                        REPLAYS[0] = 0
                        h, w, gc_ms, colls = block(model, cache, ctx, B, table[name](), a.steps,
                                                   a.warmup, g)
                        rows.append(dict(ctx=ctx, batch=B, round=r, gc=g, mode=name, host_ms=h,
                                         wall_ms=w, gc_ms=gc_ms, gc_per_step=colls,
                                         replays=REPLAYS[0] / (a.steps + a.warmup)))
                        print(f"B{B} {ctx // 1024}k r{r} gc {g:3s} {name:14s} host {h:6.1f} ms  "
                              f"wall {w:6.1f} ms  gc {gc_ms:5.2f} ms ({colls:.2f}/step)  "
                              f"replays/step {REPLAYS[0] / (a.steps + a.warmup):.1f}", flush=True)
            del cache
            torch.cuda.empty_cache()
    print("\nratio to the fastest dense mode of the same round and collector setting (wall): "
          "median [min, max] over rounds")
    for ctx, B, g in [(c, b, g) for c in ctxs for b in batches for g in gcs]:
        cell = [x for x in rows if x["ctx"] == ctx and x["batch"] == B and x["gc"] == g]
        for name in names:
            ratios = []
            for r in range(a.rounds):
                rnd = {x["mode"]: x["wall_ms"] for x in cell if x["round"] == r}
                best = min(v for k, v in rnd.items() if k.startswith("dense-"))
                ratios.append(rnd[name] / best)
            walls = [x["wall_ms"] for x in cell if x["mode"] == name]
            print(f"B{B} {ctx // 1024}k gc {g:3s} {name:14s} {statistics.median(ratios):5.2f}x "
                  f"[{min(ratios):.2f}, {max(ratios):.2f}]  wall median "
                  f"{statistics.median(walls):6.1f} ms")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(dict(args=vars(a), device=torch.cuda.get_device_name(), rows=rows), f,
                      indent=1)


if __name__ == "__main__":
    main()
