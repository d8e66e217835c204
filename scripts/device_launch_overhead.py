"""Host cost of one eager decode attention call, part by part, and of a Triton launch through
Triton's Python launcher against a direct call of the compiled kernel's launcher.

Run on the device machine: PYTHONPATH=src python3 scripts/device_launch_overhead.py
(``--triton-launcher``: every launch of ours through Triton's own launcher, for an A/B of
`ops/launch.py`'s direct launch)."""
import contextlib
import inspect
import sys
import time

import torch
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

from topkattn.ops.select.triton_select import select_rows, workspace
from topkattn.ops.topk.triton_decode import decode_scores, topk_decode
from topkattn.ops.topk.triton_dense import range_decode
import topkattn.ops.topk.custom_ops  # noqa: F401  (registers torch.ops.topkattn)
from topkattn.ops import testing
from topkattn.bench.common import host_us

_ab = contextlib.ExitStack()  # held open for the whole script
if "--triton-launcher" in sys.argv:
    _ab.enter_context(testing.inject(force_triton_launcher=True))


@triton.jit(do_not_specialize=["n"])
def _empty(A, B, C, D, E, F, s0, s1, s2, s3, s4, s5, s6, s7, n, G, scale,
           X: tl.constexpr, Y: tl.constexpr, Z: tl.constexpr):
    pass


a = torch.zeros(16, device="cuda")
args = (a, a, a, a, a, a, 1, 16, 32, 48, 64, 80, 96, 112, 1000, 4, 0.5)
kern = _empty[(1,)](*args, X=1, Y=2, Z=3)
print("triton", triton.__version__, "run signature source lines:",
      len(inspect.getsource(JITFunction.run).splitlines()))
print("launcher:", type(kern.run), [x for x in ("function", "packed_metadata", "launch_metadata")
                                    if hasattr(kern, x)])
print(f"empty kernel via _empty[grid](...): {host_us(lambda: _empty[(1,)](*args, X=1, Y=2, Z=3)):.1f} us")
stream = torch.cuda.current_stream().cuda_stream
full = args + (1, 2, 3)
try:
    kern.run(1, 1, 1, stream, kern.function, kern.packed_metadata, None, None, None, *full)
    print(f"empty kernel via compiled.run: {host_us(lambda: kern.run(1, 1, 1, stream, kern.function, kern.packed_metadata, None, None, None, *full)):.1f} us")
except Exception as e:  # noqa: BLE001
    print("direct run failed:", repr(e))
    print(inspect.getsource(JITFunction.run))

B, Hq, Hkv, D, n, k = 1, 32, 8, 128, 32768, 2048
q = torch.randn(B, Hq, 1, D, device="cuda", dtype=torch.bfloat16)
K = torch.randn(B, Hkv, n + 64, D, device="cuda", dtype=torch.bfloat16)[:, :, :n]
V = torch.randn_like(K)
lo = torch.zeros(B, dtype=torch.int32, device="cuda")
hi = torch.full((B,), n, dtype=torch.int32, device="cuda")
S, SG = decode_scores(q, K, scale=0.088, ends=hi, group_sum=True, block_n=128, write_s=False)
work = workspace(B * Hkv, q.device)
print(f"decode_scores:        {host_us(lambda: decode_scores(q, K, scale=0.088, ends=hi, group_sum=True, block_n=128, write_s=False)):.1f} us")
print(f"select_rows:          {host_us(lambda: select_rows(SG.view(B * Hkv, n), k=k, starts=lo, ends=hi, rows_per_seq=Hkv, work=work)):.1f} us")
print(f"topk_decode kv_group: {host_us(lambda: topk_decode(q, K, V, topk=k, scale=0.088, granularity='kv_group', starts=lo, ends=hi)):.1f} us")
print(f"topk_decode op:       {host_us(lambda: torch.ops.topkattn.topk_decode(q, K, V, lo, hi, k, 0.088, 0, 0, True, True)):.1f} us")
print(f"range_decode op:      {host_us(lambda: torch.ops.topkattn.range_decode(q, K, V, lo, hi, 0.088, True)):.1f} us")
print(f"range_decode:         {host_us(lambda: range_decode(q, K, V, starts=lo, ends=hi, scale=0.088)):.1f} us")
from torch.nn.attention import SDPBackend, sdpa_kernel
with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
    print(f"sdpa flash:           {host_us(lambda: torch.nn.functional.scaled_dot_product_attention(q, K, V, enable_gqa=True)):.1f} us")
import cProfile, pstats
pr = cProfile.Profile()
pr.enable()
for _ in range(200):
    topk_decode(q, K, V, topk=k, scale=0.088, granularity='kv_group', starts=lo, ends=hi)
torch.cuda.synchronize()
pr.disable()
pstats.Stats(pr).sort_stats("tottime").print_stats(40)
pstats.Stats(pr).sort_stats("cumulative").print_stats(40)
