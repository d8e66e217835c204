"""Selection on the device: correctness against torch.topk and CUDA-graph times of the current
`select_rows`, its block/warp variants, the previous design (scripts/_select_old.py when
present) and torch.topk; then per-kernel profiles of selection and decode.

Run on the device machine: PYTHONPATH=src python3 scripts/device_select_variants.py"""
import importlib.util
import os
import sys

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import topkattn.ops.select.triton_select as ts
import topkattn.ops.topk.triton_decode as td
from topkattn.bench.common import time_graph_ms

old = None
p = os.path.join(os.path.dirname(__file__), "_select_old.py")
if os.path.exists(p):
    spec = importlib.util.spec_from_file_location("_select_old", p)
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)


def us(fn):
    t = time_graph_ms(fn)
    return float("nan") if t is None else 1000 * t


def ts_ref(s, k):
    from topkattn.ops.select import topk_select_reference
    return topk_select_reference(s, k)


def same_set(idx, s, k):
    ref = torch.topk(s.float(), k, dim=-1).indices.sort(-1).values
    return torch.equal(idx.long().sort(-1).values, ref)


def prof(name, fn, n=5):
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as pr:
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
    print(f"== {name} (x{n})")
    print(pr.key_averages().table(sort_by="cuda_time_total", row_limit=10, max_name_column_width=40), flush=True)


QUICK = os.environ.get("QUICK") == "1"
shapes = [(32, 131072, 2048), (64, 131072, 2048), (8, 131072, 2048), (32, 32768, 2048),
          (256, 32768, 2048), (32, 131072, 8192), (32, 1 << 20, 2048)]
for R, n, k in [shapes[i] for i in (0, 1, 2, 5)] if QUICK else shapes:
    for dist in ("randn",) if QUICK else ("randn", "randn*8", "ties"):
        if dist == "ties":
            s = torch.randint(0, 64, (R, n), device="cuda").float()
        else:
            s = torch.randn(R, n, device="cuda") * (8.0 if dist == "randn*8" else 1.0)
        line = [f"bins{ts.NBINS.value} R{R} n{n} k{k} {dist}"]
        ok = same_set(ts.select_rows(s, k), s, k) if dist != "ties" else torch.equal(
            ts.select_rows(s, k).sort(-1).values, ts_ref(s, k))
        line.append(f"ok={ok}")
        line.append(f"torch.topk {us(lambda: torch.topk(s, k, dim=-1)):.1f}us")
        if old is not None and dist == "randn" and not QUICK:
            line.append(f"old {us(lambda: old.select_rows(s, k)):.1f}us")
        line.append(f"new {us(lambda: ts.select_rows(s, k)):.1f}us")
        if dist == "randn" and n <= 131072:
            for name, attr, val in (("tiers_off", "FINISH_TIERS", False), ("t2048_on", "FINISH_TIER_2048", True), ("pdl_off", "USE_PDL", False), ("early_off", "PDL_EARLY", False), ("sample4", "SELECT_SAMPLE", 4),
                                    ("sample16", "SELECT_SAMPLE", 16), ("scanw1", "SCAN_WARPS", 1),
                                    ("scanw4", "SCAN_WARPS", 4), ("scan1024", "SCAN_BLOCK", 1024),
                                    ("first4", "FINISH_FIRST_DIGIT_BITS", None),
                                    ("first8", "FINISH_FIRST_DIGIT_BITS", 8)):
                keep = getattr(ts, attr)
                setattr(ts, attr, val)
                ok = same_set(ts.select_rows(s, k), s, k)
                line.append(f"{name} {us(lambda: ts.select_rows(s, k)):.1f}{'' if ok else ' WRONG'}")
                setattr(ts, attr, keep)
            for fb, fw in ((4096, 8), (2048, 8)):
                line.append(f"fin{fb}w{fw} {us(lambda: ts.select_rows(s, k, block=fb, num_warps=fw)):.1f}")
        print(" | ".join(line), flush=True)
        del s
s = torch.randn(32, 131072, device="cuda")
prof(f"select (bins {ts.NBINS.value}) 32x128k k=2048", lambda: ts.select_rows(s, 2048))
del s
if QUICK and os.environ.get("DECODE") != "1":
    sys.exit(0)
defaults = (td.DECODE_TILES, td.DECODE_SCORES_WARPS, td.DECODE_SCORES_STAGES, td.DECODE_BLOCK_N)
variants = [(4, 4, 3, 128)]
for B, n in [(1, 32768), (1, 131072), (8, 32768), (8, 131072)]:
    q = torch.randn(B, 32, 1, 128, device="cuda", dtype=torch.bfloat16)
    kc = torch.randn(B, 8, n, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(kc)
    sd = time_graph_ms(lambda: F.scaled_dot_product_attention(q, kc, v, enable_gqa=True))
    line = [f"decode B{B} {n // 1024}k sdpa {sd:.4f}"]
    ref = td.topk_decode(q, kc, v, 2048, granularity="kv_group").float()
    for var in variants:
        td.DECODE_TILES, td.DECODE_SCORES_WARPS, td.DECODE_SCORES_STAGES, td.DECODE_BLOCK_N = var
        err = (td.topk_decode(q, kc, v, 2048, granularity="kv_group").float() - ref).abs().max().item()
        t = time_graph_ms(lambda: td.topk_decode(q, kc, v, 2048, granularity="kv_group"))
        line.append(f"kv t{var[0]}w{var[1]}s{var[2]}bn{var[3]} {t:.4f} ({t / sd:.3f}x, err {err:.0e})")
    td.DECODE_TILES, td.DECODE_SCORES_WARPS, td.DECODE_SCORES_STAGES, td.DECODE_BLOCK_N = defaults
    td.DECODE_FUSE_HIST = True
    t = time_graph_ms(lambda: td.topk_decode(q, kc, v, 2048, granularity="kv_group"))
    line.append(f"kv fused {t:.4f} ({t / sd:.3f}x)")
    td.DECODE_FUSE_HIST = False
    ts.USE_PDL = False
    t = time_graph_ms(lambda: td.topk_decode(q, kc, v, 2048, granularity="kv_group"))
    line.append(f"kv no-pdl {t:.4f} ({t / sd:.3f}x)")
    ts.USE_PDL = True
    ts.PDL_EARLY = False
    t = time_graph_ms(lambda: td.topk_decode(q, kc, v, 2048, granularity="kv_group"))
    line.append(f"kv no-early {t:.4f} ({t / sd:.3f}x)")
    ts.PDL_EARLY = True
    td.DECODE_TILES = 1
    t = time_graph_ms(lambda: td.topk_decode(q, kc, v, 2048))
    line.append(f"query_head t1 {t:.4f} ({t / sd:.3f}x)")
    td.DECODE_TILES = defaults[0]
    t = time_graph_ms(lambda: td.topk_decode(q, kc, v, 2048))
    line.append(f"query_head {t:.4f} ({t / sd:.3f}x)")
    print(" | ".join(line), flush=True)
    if B == 8 and n == 131072:
        prof("decode kv_group B8 128k", lambda: td.topk_decode(q, kc, v, 2048, granularity="kv_group"))
        prof("decode query_head B8 128k", lambda: td.topk_decode(q, kc, v, 2048))
    del q, kc, v
    torch.cuda.empty_cache()
