"""Prefill Top-k on the device: exactness of the bracket-count-collect threshold search against
the radix path, times of `prefill_thresholds`, the forward and forward+backward vs SDPA (causal,
GQA), fallback row counts, a per-kernel profile of one forward+backward at 8k, and a few tile
configurations of the attention kernels and of the threshold search.

Run on the device machine (< 3 minutes): PYTHONPATH=src python3 scripts/device_prefill_variants.py
Llama-3-8B shapes: B=1, Hq=32, Hkv=8, D=128, bf16, k=2048."""
import math
import time

import torch
import torch.nn.functional as F
import triton
from torch.profiler import ProfilerActivity, profile
from triton.testing import do_bench

import topkattn.ops.topk.triton_prefill as tp
from dataclasses import replace

from topkattn.ops.tuning import DEFAULT, tuned
from topkattn.ops.topk.naive import topk_attention_reference

T0 = time.time()
B, HQ, HKV, D, KK = 1, 32, 8, 128, 2048
dt = torch.bfloat16
SCALE = 1 / math.sqrt(D)
GRANS = ("query_head", "kv_group")


def sdpa(q, k, v):
    try:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    except TypeError:  # torch without enable_gqa
        g = q.shape[1] // k.shape[1]
        return F.scaled_dot_product_attention(q, k.repeat_interleave(g, 1),
                                              v.repeat_interleave(g, 1), is_causal=True)


def bench(fn, grad=None):
    return do_bench(fn, warmup=10, rep=40, grad_to_none=grad)


def rel_rms(a, b):
    a, b = a.float(), b.float()
    return ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt()).item()


def check_thresholds(q, k, gran, tag):
    """T/P of "bcc" vs "radix" on a head subset (rows are independent)."""
    group = gran == "kv_group"
    nkv = 2
    qs, ks = q[:, : nkv * (HQ // HKV)].contiguous(), k[:, :nkv].contiguous()
    if not group:
        qs = q[:, :4].contiguous()
    T1, P1, st = tp.prefill_thresholds(qs, ks, topk=KK, causal=True, scale=SCALE, group=group, return_status=True)
    T2, P2 = tp.prefill_thresholds(qs, ks, topk=KK, causal=True, scale=SCALE, group=group, method="radix")
    bad = (T1 != T2) | (P1 != P2)
    n = int(bad.sum())
    print(f"  [{tag}] T/P bcc vs radix on {T1.numel()} rows: {n} mismatches; status "
          f"{torch.bincount(st.flatten(), minlength=3).tolist()} (inactive, band, fallback)")
    for r, m in bad.nonzero()[:5].tolist():
        print(f"    row {r} m {m}: T {int(T1[r, m]):#x} vs {int(T2[r, m]):#x}, "
              f"P {int(P1[r, m])} vs {int(P2[r, m])}, status {int(st[r, m])}")


def check_reference(q, k, v, gran):
    """Output on the last 512 query rows of 2 heads vs the dense reference."""
    G = HQ // HKV
    qs, ks, vs = q[:, : 2 * G, -512:], k[:, :2], v[:, :2]
    out = tp.topk_prefill(qs, ks, vs, topk=KK, granularity=gran)
    ref = topk_attention_reference(qs, ks, vs, KK, granularity=gran)
    return rel_rms(out, ref)


def run_case(L, gran, res):
    torch.manual_seed(0)
    q = torch.randn(B, HQ, L, D, device="cuda", dtype=dt)
    k = torch.randn(B, HKV, L, D, device="cuda", dtype=dt)
    v = torch.randn(B, HKV, L, D, device="cuda", dtype=dt)
    do = torch.randn_like(q)
    group = gran == "kv_group"
    tag = f"{L // 1024}k {gran}"
    check_thresholds(q, k, gran, tag)
    print(f"  [{tag}] out vs reference (last 512 rows, 2 KV heads): rel rms "
          f"{check_reference(q, k, v, gran):.2e}", flush=True)
    _, _, st = tp.prefill_thresholds(q, k, topk=KK, causal=True, scale=SCALE, group=group, return_status=True)
    cnt = torch.bincount(st.flatten(), minlength=3).tolist()
    print(f"  [{tag}] rows: {cnt[0]} inactive, {cnt[1]} band path, {cnt[2]} fallback "
          f"({cnt[2] / max(1, cnt[1] + cnt[2]):.2e} of active)")
    t_th = bench(lambda: tp.prefill_thresholds(q, k, topk=KK, causal=True, scale=SCALE, group=group))
    t_rx = float("nan")
    if L <= 8192:  # the former path, for reference
        t_rx = bench(lambda: tp.prefill_thresholds(q, k, topk=KK, causal=True, scale=SCALE, group=group,
                                                   method="radix"))
    t_f = bench(lambda: tp.topk_prefill(q, k, v, topk=KK, granularity=gran))
    sd_f = bench(lambda: sdpa(q, k, v))
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))

    def fb():
        tp.topk_prefill(qg, kg, vg, topk=KK, granularity=gran).backward(do)

    def sfb():
        sdpa(qg, kg, vg).backward(do)

    t_fb = bench(fb, [qg, kg, vg])
    sd_fb = bench(sfb, [qg, kg, vg])
    print(f"  [{tag}] thresholds {t_th:.2f} ms (radix {t_rx:.2f}) | fwd {t_f:.2f} vs sdpa "
          f"{sd_f:.2f} ({t_f / sd_f:.2f}x) | fwd+bwd {t_fb:.2f} vs sdpa {sd_fb:.2f} "
          f"({t_fb / sd_fb:.2f}x)", flush=True)
    res[(L, gran)] = (q, k, v, do)
    return q, k, v, do


def profile_fb(q, k, v, do, gran):
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    fn = lambda: tp.topk_prefill(qg, kg, vg, topk=KK, granularity=gran).backward(do)
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        fn()
        torch.cuda.synchronize()
    print(f"== profile: one forward+backward, 8k {gran}")
    print(p.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=40))


def attn_kernel_times(q, k, v, do, gran, bm, bn, nw, stages):
    """Times of the forward and of the two backward kernels alone, thresholds precomputed."""
    group = gran == "kv_group"
    Hq, Lq, Hkv, Lk = q.shape[1], q.shape[2], k.shape[1], k.shape[2]
    G = Hq // Hkv
    st, en = tp.seq_bounds(None, None, B=B, Lk=Lk, device=q.device)
    TB, PB = tp.prefill_thresholds(q, k, topk=KK, causal=True, scale=SCALE, group=group)
    o = torch.empty_like(q)
    lse = torch.empty(B, Hq, Lq, dtype=torch.float32, device=q.device)
    ck = dict(CAUSAL=True, GROUP=group, BM=bm, BN=bn, D=D, IEEE=False, UPCAST=False, num_warps=nw)
    if stages:
        ck["num_stages"] = stages
    strides = tp.qkv_strides(q, k, v)

    def fwd():
        tp._fwd_kernel[(B * Hq, triton.cdiv(Lq, bm))](
            q, k, v, TB, PB, st, en, o, lse, *strides, Hq, G, Lq, Lk, 0, 0, SCALE, **ck)

    fwd()
    delta = (o.float() * do.float()).sum(-1)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

    def dq_k():
        tp._bwd_dq_kernel[(B * Hq, triton.cdiv(Lq, bm))](
            q, k, v, TB, PB, st, en, do, lse, delta, dq, *strides, Hq, G, Lq, Lk, 0, 0, SCALE, **ck)

    def dkdv_k():
        tp._bwd_dkdv_kernel[(B * Hkv, triton.cdiv(Lk, bn))](
            q, k, v, TB, PB, st, en, do, lse, delta, dk, dv, *strides, Hq, Hkv, G, Lq, Lk, 0, 0,
            SCALE, **ck)

    return bench(fwd), bench(dq_k), bench(dkdv_k)


def main():
    print(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__)
    pf = DEFAULT.prefill
    print(f"config: tiles {tp.prefill_tiles(torch.empty(1, 1, 1, D, device='cuda'), False)}, CAP "
          f"{pf.cap}, bin words {pf.bin_words}, sample blocks {pf.sample_blocks}")
    res = {}
    for L in (8192, 16384):
        for gran in GRANS:
            run_case(L, gran, res)
            if time.time() - T0 > 100:
                print("time budget: skipping the rest of the cases")
                break
    q, k, v, do = res[(8192, "query_head")]
    profile_fb(q, k, v, do, "query_head")
    print(f"== attention kernels alone, 8k (ms: fwd, bwd dq, bwd dkdv) [{time.time() - T0:.0f}s]")
    for gran in GRANS:
        if (8192, gran) not in res:
            continue
        q, k, v, do = res[(8192, gran)]
        cfgs = [(64, 64, 4, None), (64, 64, 8, None), (128, 64, 8, None), (64, 32, 4, None),
                (64, 64, 4, 2), (128, 32, 8, None)]
        for cfg in cfgs if gran == "query_head" else cfgs[:3]:
            if time.time() - T0 > 150:
                print("time budget: stopping the variants")
                return
            try:
                tf, tdq, tdkdv = attn_kernel_times(q, k, v, do, gran, *cfg)
                print(f"  {gran:10s} BM{cfg[0]} BN{cfg[1]} w{cfg[2]} stages {cfg[3]}: "
                      f"fwd {tf:.2f}, dq {tdq:.2f}, dkdv {tdkdv:.2f}, sum {tf + tdq + tdkdv:.2f}",
                      flush=True)
            except Exception as e:  # noqa: BLE001  (e.g. out of shared memory)
                print(f"  {gran} {cfg}: failed: {type(e).__name__}: {str(e)[:120]}")
    print(f"== threshold search variants, 8k query_head (ms) [{time.time() - T0:.0f}s]")
    q, k, v, do = res[(8192, "query_head")]
    for cap, words, frac in [(512, 3, 0.4), (1024, 2, 0.25), (256, 4, 0.4), (512, 4, 0.3)]:
        if time.time() - T0 > 170:
            break
        with tuned(prefill=replace(DEFAULT.prefill, cap=cap, bin_words=words, band_frac=frac)):
            _, _, st = tp.prefill_thresholds(q, k, topk=KK, causal=True, scale=SCALE,
                                             return_status=True)
            t = bench(lambda: tp.prefill_thresholds(q, k, topk=KK, causal=True, scale=SCALE))
        print(f"  CAP {cap} words {words} band frac {frac}: {t:.2f} ms, fallback rows "
              f"{int((st == 2).sum())}", flush=True)
    print(f"done in {time.time() - T0:.0f}s")


if __name__ == "__main__":
    main()
