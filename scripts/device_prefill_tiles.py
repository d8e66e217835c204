"""Tiles of the prefill attention kernels chosen apart from the threshold search's tile.

The threshold search and the attention kernels must see bit-identical scores (the mask compares
the attention kernels' scores against thresholds found from the search's). This script checks,
per candidate tile (BM, BN, num_warps), that a kernel computing the scores with that tile gives
the same bits as the search's default tile, and times the forward, dq and dk/dv kernels alone
(thresholds precomputed) for each candidate; outputs are compared with the default tile's.

Run on the device (about 2 minutes): PYTHONPATH=src python3 scripts/device_prefill_tiles.py
Llama-3-8B shapes: B=1, Hq=32, Hkv=8, D=128, bf16, k=2048, 8k tokens."""
import math
import sys

import torch
import triton
from triton.testing import do_bench

import topkattn.ops.topk.triton_prefill as tp
from dataclasses import replace

from topkattn.ops.tuning import DEFAULT, tuned

B, HQ, HKV, D, KK = 1, 32, 8, 128, 2048
SCALE = 1 / math.sqrt(D)


def scores(q, k, group, bm, bn, nw):
    return tp.selection_scores(q, k, scale=SCALE, group=group, tile=tp.PrefillTile(bm, bn, nw))


def bench(fn):
    return do_bench(fn, warmup=10, rep=50)


def main():
    print(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__)
    torch.manual_seed(0)
    L = 8192
    q = torch.randn(B, HQ, L, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(B, HKV, L, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(B, HKV, L, D, device="cuda", dtype=torch.bfloat16)
    do = torch.randn_like(q)
    tiles = [(128, 64, 8), (64, 64, 8), (64, 128, 8), (128, 128, 8), (128, 32, 8), (32, 64, 4),
             (64, 32, 4), (128, 64, 4)]
    print("== scores bit-identical to the search tile (64, 64, 4)? (2k tokens, 8 heads)")
    for group in (False, True):
        qs, ks = q[:, :8, :2048].contiguous(), k[:, :2, :2048].contiguous()
        ref = scores(qs, ks, group, 64, 64, 4)
        for t in tiles:
            s = scores(qs, ks, group, *t)
            diff = int((s.view(torch.int32) != ref.view(torch.int32)).sum())
            print(f"  group={group} tile {t}: {diff} of {s.numel()} scores differ", flush=True)
    for gran in ("query_head", "kv_group"):
        group = gran == "kv_group"
        G = HQ // HKV
        st, en = tp.seq_bounds(None, None, B=B, Lk=L, device=q.device)
        TB, PB = tp.prefill_thresholds(q, k, topk=KK, causal=True, scale=SCALE, group=group)
        strides = tp.qkv_strides(q, k, v)
        o0 = torch.empty_like(q)
        lse = torch.empty(B, HQ, L, dtype=torch.float32, device=q.device)

        def ck(bm, bn, nw, stages):
            c = dict(CAUSAL=True, GROUP=group, BM=bm, BN=bn, D=D, IEEE=False, UPCAST=False,
                     num_warps=nw)
            if stages:
                c["num_stages"] = stages
            return c

        def fwd(o, bm, bn, nw, stages):
            tp._fwd_kernel[(B * HQ, triton.cdiv(L, bm))](
                q, k, v, TB, PB, st, en, o, lse, *strides, HQ, G, L, L, 0, 0, SCALE,
                **ck(bm, bn, nw, stages))

        fwd(o0, 64, 64, 4, None)
        lse0 = lse.clone()
        delta = (o0.float() * do.float()).sum(-1)

        def dq_k(dq, bm, bn, nw, stages):
            tp._bwd_dq_kernel[(B * HQ, triton.cdiv(L, bm))](
                q, k, v, TB, PB, st, en, do, lse0, delta, dq, *strides, HQ, G, L, L, 0, 0, SCALE,
                **ck(bm, bn, nw, stages))

        def dkdv_k(dk, dv, bm, bn, nw, stages):
            tp._bwd_dkdv_kernel[(B * HKV, triton.cdiv(L, bn))](
                q, k, v, TB, PB, st, en, do, lse0, delta, dk, dv, *strides, HQ, HKV, G, L, L, 0,
                0, SCALE, **ck(bm, bn, nw, stages))

        dq0, dk0, dv0 = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        dq_k(dq0, 64, 64, 4, 2)
        dkdv_k(dk0, dv0, 64, 64, 4, 2)
        print(f"== {gran} 8k: kernel times (ms), outputs vs the default tile (max abs diff)")
        for cfg in [(64, 64, 4, None), (128, 64, 8, None), (128, 64, 8, 2), (64, 64, 8, None),
                    (128, 128, 8, 2), (128, 32, 8, None), (128, 64, 4, None)]:
            o = torch.empty_like(q)
            try:
                fwd(o, *cfg)
                t = bench(lambda: fwd(o, *cfg))
                print(f"  fwd  {cfg}: {t:.3f} ms, o diff {(o.float() - o0.float()).abs().max():.2e}",
                      flush=True)
            except Exception as e:  # noqa: BLE001
                print(f"  fwd  {cfg}: failed {type(e).__name__}: {str(e)[:100]}")
        for cfg in [(64, 64, 4, 2), (64, 64, 4, 3), (128, 64, 8, 2), (128, 64, 8, 3),
                    (64, 64, 8, 2), (128, 32, 8, 2), (128, 64, 4, 2)]:
            dq = torch.empty_like(q)
            try:
                dq_k(dq, *cfg)
                t = bench(lambda: dq_k(dq, *cfg))
                print(f"  dq   {cfg}: {t:.3f} ms, dq diff "
                      f"{(dq.float() - dq0.float()).abs().max():.2e}", flush=True)
            except Exception as e:  # noqa: BLE001
                print(f"  dq   {cfg}: failed {type(e).__name__}: {str(e)[:100]}")
        for cfg in [(64, 64, 4, 2), (64, 64, 8, 2), (64, 64, 8, 3), (64, 128, 8, 2),
                    (128, 64, 8, 2), (32, 64, 4, 2), (64, 32, 4, 2), (128, 128, 8, 2)]:
            dk, dv = torch.empty_like(k), torch.empty_like(v)
            try:
                dkdv_k(dk, dv, *cfg)
                t = bench(lambda: dkdv_k(dk, dv, *cfg))
                print(f"  dkdv {cfg}: {t:.3f} ms, dk diff "
                      f"{(dk.float() - dk0.float()).abs().max():.2e}, dv diff "
                      f"{(dv.float() - dv0.float()).abs().max():.2e}", flush=True)
            except Exception as e:  # noqa: BLE001
                print(f"  dkdv {cfg}: failed {type(e).__name__}: {str(e)[:100]}")
        sys.stdout.flush()


def search_and_whole(L=8192):
    """Threshold search per search tile / collect waves (T, P checked against the default), and
    the whole forward+backward with this module's per-kernel tiles vs one uniform 64x64 tile."""
    torch.manual_seed(0)
    q = torch.randn(B, HQ, L, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(B, HKV, L, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(B, HKV, L, D, device="cuda", dtype=torch.bfloat16)
    do = torch.randn_like(q)
    base = DEFAULT.prefill.tiles_query_head
    T0, P0 = tp.prefill_thresholds(q, k, topk=KK, causal=True, scale=SCALE)
    print(f"== threshold search, {L // 1024}k query_head (ms)")
    for t, waves in [((64, 64, 4, None), 2), ((64, 64, 4, None), 1), ((64, 64, 4, None), 3),
                     ((64, 64, 4, None), 4), ((128, 64, 8, None), 2), ((128, 64, 8, None), 1),
                     ((64, 128, 8, None), 2), ((64, 32, 4, None), 2), ((64, 64, 4, 2), 2),
                     ((128, 64, 8, 2), 2)]:
        knobs = replace(DEFAULT.prefill, collect_waves=waves,
                        tiles_query_head=replace(base, search=tp.PrefillTile(*t)))
        try:
            with tuned(prefill=knobs):
                T, P, st = tp.prefill_thresholds(q, k, topk=KK, causal=True, scale=SCALE,
                                                 return_status=True)
                same = torch.equal(T, T0) and torch.equal(P, P0)
                ms = bench(lambda: tp.prefill_thresholds(q, k, topk=KK, causal=True, scale=SCALE))
            print(f"  search {t} waves {waves}: {ms:.3f} ms, T/P same: {same}, fallback rows "
                  f"{int((st == 2).sum())}", flush=True)
        except Exception as e:  # noqa: BLE001
            print(f"  search {t} waves {waves}: failed {type(e).__name__}: {str(e)[:100]}")
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))

    def fb():
        tp.topk_prefill(qg, kg, vg, topk=KK).backward(do)

    for name, tiles in [("per-kernel tiles", base), ("uniform 64x64", tp.uniform_tiles(64, bwd_stages=2))]:
        with tuned(prefill=replace(DEFAULT.prefill, tiles_query_head=tiles)):
            ms = do_bench(fb, warmup=10, rep=50, grad_to_none=[qg, kg, vg])
        print(f"  fwd+bwd {L // 1024}k, {name}: {ms:.3f} ms", flush=True)


if __name__ == "__main__":
    if "--search" in sys.argv:
        search_and_whole()
    else:
        main()
