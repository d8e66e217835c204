"""Benchmark: Top-k prefill/training attention fwd and fwd+bwd vs dense causal SDPA and
FlexAttention (compiled), Llama-3-8B attention shapes, batch 1; also peak memory."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from topkattn.bench.common import LLAMA3_8B, env_info, time_ms, write_results


def _fwd_bwd(fn, q, k, v, do):
    def step():
        q.grad = k.grad = v.grad = None
        fn(q, k, v).backward(do)
    return step


def run(ctxs: list[int], ks: list[int], batches: list[int], out_dir: str) -> list[dict]:
    from topkattn.ops.topk.triton_prefill import topk_prefill

    Hq, Hkv, D, dt = LLAMA3_8B["Hq"], LLAMA3_8B["Hkv"], LLAMA3_8B["D"], LLAMA3_8B["dtype"]
    flex = None
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        flex_c = torch.compile(flex_attention)
        flex = True
    except Exception:  # pragma: no cover
        flex = None
    rows = []
    for B in batches:
        for L in ctxs:
            mk = lambda H: torch.randn(B, H, L, D, device="cuda", dtype=dt).requires_grad_()
            q, k, v = mk(Hq), mk(Hkv), mk(Hkv)
            do = torch.randn(B, Hq, L, D, device="cuda", dtype=dt)
            sdpa = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            with torch.no_grad():
                sdpa_f = time_ms(lambda: sdpa(q, k, v))
            sdpa_fb = time_ms(_fwd_bwd(sdpa, q, k, v, do))
            flex_f = flex_fb = None
            if flex:
                try:
                    bm = create_block_mask(lambda b, h, i, j: i >= j, None, None, L, L, device="cuda")
                    fx = lambda q, k, v: flex_c(q, k, v, block_mask=bm, enable_gqa=True)
                    with torch.no_grad():
                        flex_f = time_ms(lambda: fx(q, k, v))
                    flex_fb = time_ms(_fwd_bwd(fx, q, k, v, do))
                except Exception as e:  # pragma: no cover
                    print(f"flex failed at L={L}: {e}")
            for kk in ks:
                if kk > L:
                    continue
                ours = lambda q, k, v: topk_prefill(q, k, v, topk=kk)
                with torch.no_grad():
                    f = time_ms(lambda: ours(q, k, v))
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                fb = time_ms(_fwd_bwd(ours, q, k, v, do), warmup=5, rep=20)
                peak = (torch.cuda.max_memory_allocated() - base) / 2**20
                rows.append({"B": B, "L": L, "k": kk, "ours_fwd_ms": f, "ours_fwdbwd_ms": fb,
                             "sdpa_fwd_ms": sdpa_f, "sdpa_fwdbwd_ms": sdpa_fb, "flex_fwd_ms": flex_f,
                             "flex_fwdbwd_ms": flex_fb, "ratio_fwdbwd_vs_sdpa": fb / sdpa_fb,
                             "ratio_fwdbwd_vs_flex": fb / flex_fb if flex_fb else None,
                             "ours_extra_peak_MiB": peak, "case": f"B{B} {L // 1024}k k={kk}"})
            del q, k, v, do
            torch.cuda.empty_cache()
    write_results("prefill", rows, ["B", "L", "k", "ours_fwd_ms", "sdpa_fwd_ms", "flex_fwd_ms", "ours_fwdbwd_ms",
                                    "sdpa_fwdbwd_ms", "flex_fwdbwd_ms", "ratio_fwdbwd_vs_sdpa",
                                    "ratio_fwdbwd_vs_flex", "ours_extra_peak_MiB"], out_dir, env_info(),
                  plot=("case", "top-k prefill fwd+bwd (ms)", ["ours_fwdbwd_ms", "sdpa_fwdbwd_ms", "flex_fwdbwd_ms"]))
    return rows
