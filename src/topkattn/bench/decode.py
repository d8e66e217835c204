"""Benchmark: fused exact Top-k decode vs SDPA dense decode (Llama-3-8B attention, bf16).

FlexAttention is not timed for decode: a one-row query gives it nothing to skip (its block
mask has one query block) and compiling per shape is slow, so dense SDPA (flash/efficient
backends with GQA) is the baseline; the naive PyTorch path (fp32 scores, torch.topk, gather,
SDPA) is timed for reference."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from topkattn.bench.common import decode_inputs, env_info, time_graph_ms, time_ms, write_results


def _naive(q, k, v, kk):
    B, Hq, _, D = q.shape
    G = Hq // k.shape[1]
    kr = k.repeat_interleave(G, 1) if G > 1 else k
    s = (q.float() @ kr.float().transpose(-1, -2)).squeeze(2) / D**0.5  # [B, Hq, n]
    idx = s.topk(kk, -1).indices  # [B, Hq, kk]
    vr = v.repeat_interleave(G, 1) if G > 1 else v
    ks = kr.gather(2, idx[..., None].expand(-1, -1, -1, D))
    vs = vr.gather(2, idx[..., None].expand(-1, -1, -1, D))
    return F.scaled_dot_product_attention(q, ks, vs)


def run(ctxs: list[int], ks: list[int], batches: list[int], out_dir: str, naive: bool = True) -> list[dict]:
    from topkattn.ops.topk.triton_decode import topk_decode

    rows = []
    for B in batches:
        for n in ctxs:
            q, k, v = decode_inputs(B, n)
            sdpa_fn = lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
            sdpa = time_ms(sdpa_fn)
            sdpa_g = time_graph_ms(sdpa_fn)
            for kk in ks:
                if kk > n:
                    continue
                qh = time_ms(lambda: topk_decode(q, k, v, topk=kk))
                kg = time_ms(lambda: topk_decode(q, k, v, topk=kk, granularity="kv_group"))
                qh_g = time_graph_ms(lambda: topk_decode(q, k, v, topk=kk))
                kg_g = time_graph_ms(lambda: topk_decode(q, k, v, topk=kk, granularity="kv_group"))
                nv = time_ms(lambda: _naive(q, k, v, kk)) if naive and B * n <= 8 * 131072 else None
                rows.append({"B": B, "ctx": n, "k": kk, "sdpa_ms": sdpa, "ours_qhead_ms": qh,
                             "ours_kvgroup_ms": kg, "naive_ms": nv,
                             "ratio_qhead_vs_sdpa": qh / sdpa, "ratio_kvgroup_vs_sdpa": kg / sdpa,
                             "sdpa_graph_ms": sdpa_g, "qhead_graph_ms": qh_g, "kvgroup_graph_ms": kg_g,
                             "graph_ratio_qhead": qh_g / sdpa_g if qh_g and sdpa_g else None,
                             "graph_ratio_kvgroup": kg_g / sdpa_g if kg_g and sdpa_g else None,
                             "case": f"B{B} {n // 1024}k k={kk}"})
            del q, k, v
            torch.cuda.empty_cache()
    write_results("decode", rows, ["B", "ctx", "k", "sdpa_ms", "ours_qhead_ms", "ours_kvgroup_ms", "naive_ms",
                                   "ratio_qhead_vs_sdpa", "ratio_kvgroup_vs_sdpa", "sdpa_graph_ms",
                                   "qhead_graph_ms", "kvgroup_graph_ms", "graph_ratio_qhead", "graph_ratio_kvgroup"], out_dir, env_info(),
                  plot=("case", "top-k decode vs SDPA dense (ms)", ["sdpa_ms", "ours_qhead_ms", "ours_kvgroup_ms"]))
    return rows
