"""Tile sweep of the Lightning Indexer's index-score kernel (`ops/topk/triton_index.py`) at
the generate benchmark's shape: B x 128k fp32 indexer keys of 64 dims, 4 heads; each variant
timed in a CUDA graph, checked against the reference, with its share of the copy bandwidth.

Run on the device machine: PYTHONPATH=src python3 scripts/device_index_tiles.py"""
import torch

from topkattn.bench.common import copy_bandwidth_gbs, time_graph_ms
from topkattn.ops.topk.triton_index import index_scores, index_scores_reference

bw = copy_bandwidth_gbs()
print(f"copy bandwidth {bw:.0f} GB/s")
for B in (1, 4):
    cap, H, d = 131072, 4, 64
    q, w = torch.randn(B, H, d, device="cuda") * 0.125, torch.rand(B, H, device="cuda")
    keys = torch.randn(B, cap, d, device="cuda")
    lo = torch.zeros(B, dtype=torch.int32, device="cuda")
    hi = torch.full((B,), cap, dtype=torch.int32, device="cuda")
    want = index_scores_reference(q, w, keys)
    for block in (64, 128, 256, 512):
        for warps in (2, 4, 8):
            try:
                got = index_scores(q, w, keys, starts=lo, ends=hi, block=block, warps=warps)
                err = (got - want).abs().max().item()
                ms = time_graph_ms(lambda: index_scores(q, w, keys, starts=lo, ends=hi, block=block, warps=warps))
                gbs = keys.numel() * 4 / (ms * 1e-3) / 1e9
                print(f"B{B} block={block:3d} warps={warps}: {ms * 1e3:6.1f} us "
                      f"{gbs:5.0f} GB/s ({gbs / bw:4.0%} of copy) max err {err:.1e}", flush=True)
            except Exception as e:  # noqa: BLE001
                print(f"B{B} block={block} warps={warps}: {type(e).__name__} {str(e)[:100]}")
