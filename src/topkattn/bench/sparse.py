"""Benchmark: sparse attention by indices (decode, one query per sequence) vs the time to read
the selected K and V rows at the copy bandwidth measured in the same run, and vs SDPA dense."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from topkattn.bench.common import (LLAMA3_8B, decode_inputs, copy_bandwidth_gbs, env_info, time_graph_ms,
                                   time_ms, write_results)


def run(ctxs: list[int], ks: list[int], batches: list[int], out_dir: str) -> list[dict]:
    from topkattn.ops.topk.triton_sparse import sparse_attention

    Hq, Hkv, D = LLAMA3_8B["Hq"], LLAMA3_8B["Hkv"], LLAMA3_8B["D"]
    bw = copy_bandwidth_gbs()
    rows = []
    for B in batches:
        for n in ctxs:
            q, k, v = decode_inputs(B, n)
            sdpa = time_ms(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
            for kk in ks:
                if kk > n:
                    continue
                for heads, H in (("kv", Hkv), ("q", Hq)):
                    idx = torch.rand(B * H, n, device="cuda").topk(kk, -1).indices.int().view(B, H, 1, kk)
                    t = time_ms(lambda: sparse_attention(q, k, v, idx, assume_unique=True))
                    tg = time_graph_ms(lambda: sparse_attention(q, k, v, idx, assume_unique=True))
                    nbytes = B * H * kk * D * 2 * 2 + idx.numel() * 4  # K and V rows + indices
                    ideal = nbytes / (bw * 1e9) * 1e3
                    rows.append({"B": B, "ctx": n, "k": kk, "idx_heads": heads, "ours_ms": t,
                                 "ideal_read_ms": ideal, "ratio_vs_ideal": t / ideal,
                                 "graph_ms": tg, "graph_ratio_vs_ideal": tg / ideal if tg else None, "sdpa_ms": sdpa,
                                 "ratio_vs_sdpa": t / sdpa, "case": f"B{B} {n // 1024}k k={kk} {heads}"})
            del q, k, v
            torch.cuda.empty_cache()
    meta = env_info() | {"copy_bandwidth_gbs": bw}
    write_results("sparse", rows, ["B", "ctx", "k", "idx_heads", "ours_ms", "ideal_read_ms", "ratio_vs_ideal", "graph_ms",
                                   "graph_ratio_vs_ideal",
                                   "sdpa_ms", "ratio_vs_sdpa"], out_dir, meta,
                  plot=("case", "sparse attention by indices (ms)", ["ours_ms", "ideal_read_ms", "sdpa_ms"]))
    return rows
