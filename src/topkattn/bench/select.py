"""Benchmark: Triton radix top-k selection vs torch.topk on fp32 score rows.

Rows = batch x 32 query heads (Llama-3-8B), n = context length."""

from __future__ import annotations

import torch

from topkattn.bench.common import env_info, time_graph_ms, time_ms, write_results


def run(ctxs: list[int], ks: list[int], batches: list[int], out_dir: str) -> list[dict]:
    from topkattn.ops.select import topk_select

    rows = []
    for B in batches:
        R = B * 32
        for n in ctxs:
            s = torch.randn(R, n, device="cuda")
            for k in ks:
                if k > n:
                    continue
                ours = time_ms(lambda: topk_select(s, k))
                ref = time_ms(lambda: torch.topk(s, k, dim=-1))
                g = time_graph_ms(lambda: topk_select(s, k))
                rows.append({"rows": R, "n": n, "k": k, "ours_us": ours * 1e3, "torch_topk_us": ref * 1e3,
                             "ours_graph_us": g * 1e3 if g else None,
                             "speedup_vs_torch": ref / ours,
                             "target_us": 30.0 if (R, n, k) == (32, 131072, 2048) else None,
                             "case": f"{R}x{n} k={k}"})
            del s
    write_results("select", rows, ["rows", "n", "k", "ours_us", "ours_graph_us", "torch_topk_us", "speedup_vs_torch", "target_us"],
                  out_dir, env_info(), plot=("case", "top-k selection (us)", ["ours_us", "torch_topk_us"]))
    return rows
