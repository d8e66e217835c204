"""Per-kernel GPU times (torch.profiler) of selection, decode and prefill at benchmark shapes.

Run on the device machine: PYTHONPATH=src python3 scripts/device_profile.py"""
import torch
from torch.profiler import ProfilerActivity, profile

from topkattn.ops.select import topk_select
from topkattn.ops.topk.triton_decode import topk_decode
from topkattn.ops.topk.triton_prefill import topk_prefill


def prof(name, fn, n=5):
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
    print(f"== {name} (x{n})")
    print(p.key_averages().table(sort_by="cuda_time_total", row_limit=8, max_name_column_width=40))


s = torch.randn(32, 131072, device="cuda")
prof("select 32x128k k=2048", lambda: topk_select(s, 2048))
q = torch.randn(8, 32, 1, 128, device="cuda", dtype=torch.bfloat16)
k = torch.randn(8, 8, 131072, 128, device="cuda", dtype=torch.bfloat16)
v = torch.randn_like(k)
prof("decode B8 128k k=2048 kv_group", lambda: topk_decode(q, k, v, 2048, granularity="kv_group"))
prof("decode B8 128k k=2048 query_head", lambda: topk_decode(q, k, v, 2048))
del k, v
q = torch.randn(1, 32, 8192, 128, device="cuda", dtype=torch.bfloat16)
k = torch.randn(1, 8, 8192, 128, device="cuda", dtype=torch.bfloat16)
with torch.no_grad():
    prof("prefill fwd 8k k=2048", lambda: topk_prefill(q, k, k, 2048), n=2)
