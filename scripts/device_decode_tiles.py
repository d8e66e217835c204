"""Tile sweep of the two memory-bound decode passes at Llama-3-8B shapes (bf16), CUDA graphs:
the Top-k scores pass (`triton_decode._scores_kernel`, kv_group) and full attention over key
ranges (`triton_dense._range_decode_kernel`), against the time to read the bytes at the
measured copy bandwidth.

Run on the device machine: PYTHONPATH=src python3 scripts/device_decode_tiles.py"""
import itertools

import torch

import topkattn.ops.topk.triton_decode as td
import topkattn.ops.topk.triton_dense as tdn
from topkattn.bench.common import copy_bandwidth_gbs, decode_inputs, time_graph_ms
from topkattn.ops.tuning import DecodeTuning, DenseTuning, tuned

bw = copy_bandwidth_gbs()
print(f"copy bandwidth {bw:.0f} GB/s")
cells = [(1, 32768), (1, 131072), (4, 131072)]
inputs = {c: decode_inputs(*c) for c in cells}
ends = {c: torch.full((c[0],), c[1], dtype=torch.int32, device="cuda") for c in cells}
starts = {c: torch.zeros(c[0], dtype=torch.int32, device="cuda") for c in cells}


def run(label, fn, nbytes):
    row = []
    for c in cells:
        ms = time_graph_ms(lambda: fn(c), warmup=10, rep=40)
        floor = nbytes(c) / (bw * 1e9) * 1e3
        row.append(f"B{c[0]} {c[1] // 1024}k {1000 * ms:6.1f} us ({floor / ms:4.2f} of bw)")
    print(f"{label:34s} " + " | ".join(row), flush=True)


kbytes = lambda c: inputs[c][1].numel() * 2
for bn, tiles, warps, stages in itertools.product((64, 128, 256), (1, 2, 4), (4, 8), (3,)):
    if bn * tiles > 2048:
        continue
    knobs = DecodeTuning(block_n=bn, tiles=tiles, scores_warps=warps, scores_stages=stages)
    try:
        with tuned(decode=knobs):
            run(f"scores bn{bn} t{tiles} w{warps} s{stages}",
                lambda c: td.decode_scores(inputs[c][0], inputs[c][1], scale=0.088, ends=ends[c],
                                           group_sum=True, block_n=bn, write_s=False), kbytes)
    except Exception as e:  # noqa: BLE001
        print(f"scores bn{bn} t{tiles} w{warps} s{stages}: {type(e).__name__} {str(e)[:80]}")
for bn, warps, stages, waves in itertools.product((64, 128), (4, 8), (2, 3), (2, 4)):
    try:
        with tuned(dense=DenseTuning(block_n=bn, warps=warps, stages=stages, waves=waves)):
            run(f"range bn{bn} w{warps} s{stages} waves{waves}",
                lambda c: tdn.range_decode(inputs[c][0], inputs[c][1], inputs[c][2],
                                           starts=starts[c], ends=ends[c]),
                lambda c: 2 * kbytes(c))
    except Exception as e:  # noqa: BLE001
        print(f"range bn{bn} w{warps} s{stages} waves{waves}: {type(e).__name__} {str(e)[:80]}")
