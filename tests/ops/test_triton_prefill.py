"""Top-k prefill/training attention (forward and gradients) vs the reference (interpreter)."""

import pytest
import torch

from tests.ops.compare import TOL, dev
from tests.ops.compare import rel_rms as _rel_rms
from topkattn.ops.topk import topk_attention
from topkattn.ops.topk.naive import topk_attention_reference
from topkattn.ops.topk.triton_prefill import topk_prefill

GRAD_TOL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}


def rel_rms(a, b):
    return _rel_rms(a, b, floor=1e-6)  # k=1: reference gradients of q, k are exactly 0


CASES = [
    # B, Hq, Hkv, Lq, Lk, D, topk, dtype, sink, local, causal
    (1, 2, 1, 37, 37, 16, 5, torch.float32, 0, 0, True),
    (2, 4, 2, 20, 45, 32, 7, torch.float32, 1, 2, True),
    (1, 2, 2, 33, 33, 16, 1, torch.bfloat16, 0, 0, True),
    (1, 2, 1, 19, 30, 16, 50, torch.float16, 0, 0, False),  # k >= n
    (1, 2, 1, 40, 40, 16, 8, torch.float32, 2, 3, False),
]


@pytest.mark.parametrize("case", CASES)
def test_prefill_forward_and_grads(case):
    B, Hq, Hkv, Lq, Lk, D, kk, dt, sink, local, causal = case
    torch.manual_seed(Lq * Lk)
    q = torch.randn(B, Hq, Lq, D, device=dev()).to(dt).requires_grad_()
    k = torch.randn(B, Hkv, Lk, D, device=dev()).to(dt).requires_grad_()
    v = torch.randn(B, Hkv, Lk, D, device=dev()).to(dt).requires_grad_()
    out, lse = topk_prefill(q, k, v, kk, causal=causal, sink=sink, local=local, return_lse=True)
    ref, rlse = topk_attention_reference(q, k, v, kk, causal=causal, sink=sink, local=local,
                                         return_lse=True)
    assert rel_rms(out, ref) < TOL[dt]
    assert (lse - rlse).abs().max() < 1e-4
    do = torch.randn_like(out)
    g = torch.autograd.grad(out, (q, k, v), do)
    rg = torch.autograd.grad(ref, (q, k, v), do)
    for a, b, name in zip(g, rg, "qkv"):
        assert rel_rms(a, b) < GRAD_TOL[dt], name


def test_prefill_ties_keep_lowest_positions():
    torch.manual_seed(0)
    q = torch.randint(-1, 2, (1, 1, 30, 16), device=dev()).float()
    k = torch.randint(-1, 2, (1, 1, 30, 16), device=dev()).float()
    v = torch.randn(1, 1, 30, 16, device=dev())
    assert rel_rms(topk_prefill(q, k, v, 4), topk_attention_reference(q, k, v, 4)) < 1e-6


def test_prefill_dispatch_autograd():
    torch.manual_seed(1)
    q = torch.randn(1, 2, 24, 16, device=dev(), requires_grad=True)
    k = torch.randn(1, 1, 24, 16, device=dev(), requires_grad=True)
    v = torch.randn(1, 1, 24, 16, device=dev(), requires_grad=True)
    out = topk_attention(q, k, v, topk=6, backend="triton")
    out.sum().backward()
    assert q.grad is not None and k.grad is not None and v.grad is not None


@pytest.mark.gpu
def test_prefill_gpu_grads():
    torch.manual_seed(0)
    B, Hq, Hkv, L, D = 1, 4, 2, 1024, 128
    mk = lambda H: torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16).requires_grad_()
    q, k, v = mk(Hq), mk(Hkv), mk(Hkv)
    out = topk_prefill(q, k, v, 64, sink=4, local=16)
    ref = topk_attention_reference(q, k, v, 64, sink=4, local=16)
    assert rel_rms(out, ref) < 2e-2
    do = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), do), torch.autograd.grad(ref, (q, k, v), do)):
        assert rel_rms(a, b) < 3e-2
