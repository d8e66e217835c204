"""Triton sparse attention by indices vs the reference (TRITON_INTERPRET=1 on CPU)."""

import pytest
import torch

from tests.ops.compare import TOL, dev, rel_rms
from topkattn.ops.topk import topk_attention
from topkattn.ops.topk.naive import topk_attention_reference
from topkattn.ops.topk.triton_sparse import sparse_attention


CASES = [
    # B, Hq, Hkv, Lq, Lk, D, n_idx, idx_heads, dtype, sink, local, splits
    (2, 4, 2, 1, 37, 32, 9, "q", torch.float32, 0, 0, None),
    (1, 4, 2, 5, 50, 16, 7, "kv", torch.float32, 1, 2, None),
    (2, 4, 1, 1, 100, 32, 20, "kv", torch.bfloat16, 2, 3, 3),
    (1, 2, 2, 3, 33, 64, 40, "q", torch.float16, 0, 0, 2),
]


@pytest.mark.parametrize("case", CASES)
def test_sparse_matches_reference(case):
    B, Hq, Hkv, Lq, Lk, D, n, ih, dt, sink, local, splits = case
    torch.manual_seed(Lk)
    q = torch.randn(B, Hq, Lq, D, device=dev()).to(dt)
    k = torch.randn(B, Hkv, Lk, D, device=dev()).to(dt)
    v = torch.randn(B, Hkv, Lk, D, device=dev()).to(dt)
    H = Hq if ih == "q" else Hkv
    idx = torch.randint(-3, Lk, (B, H, Lq, n), device=dev())  # padding and duplicates
    out, lse = sparse_attention(q, k, v, idx, sink=sink, local=local, return_lse=True, splits=splits)
    ref, rlse = topk_attention_reference(q, k, v, None, indices=idx, sink=sink, local=local, return_lse=True)
    assert rel_rms(out, ref) < TOL[dt]
    fin = torch.isfinite(rlse)
    assert torch.equal(torch.isfinite(lse), fin)
    assert (lse[fin] - rlse[fin]).abs().max() < 1e-4


def test_sparse_ends_and_empty_rows():
    torch.manual_seed(3)
    B, Hq, Hkv, Lk, D = 3, 2, 1, 40, 16
    q = torch.randn(B, Hq, 1, D, device=dev())
    k = torch.randn(B, Hkv, Lk, D, device=dev())
    v = torch.randn(B, Hkv, Lk, D, device=dev())
    idx = torch.randint(0, Lk, (B, Hq, 1, 8), device=dev())
    lens = torch.tensor([40, 11, 0], device=dev())
    mask = (torch.arange(Lk, device=dev())[None] < lens[:, None])[:, None, None]
    out, lse = sparse_attention(q, k, v, idx, ends=lens, return_lse=True)
    ref, rlse = topk_attention_reference(q, k, v, None, indices=idx, attn_mask=mask, return_lse=True)
    assert rel_rms(out, ref) < 1e-5
    assert torch.isinf(lse[2]).all() and (out[2] == 0).all()


def test_sparse_via_topk_attention_backend_triton():
    torch.manual_seed(4)
    q = torch.randn(1, 4, 6, 32, device=dev())
    k = torch.randn(1, 2, 30, 32, device=dev())
    v = torch.randn(1, 2, 30, 32, device=dev())
    idx = torch.randint(0, 30, (1, 2, 6, 5), device=dev())
    out = topk_attention(q, k, v, indices=idx, backend="triton")
    assert rel_rms(out, topk_attention_reference(q, k, v, None, indices=idx)) < 1e-5


@pytest.mark.parametrize("Lq,sink,local", [(1, 0, 0), (5, 2, 2)])
def test_sparse_left_padding_via_dispatch(Lq, sink, local):
    # a left-padded batch (transformers' causal mask with padded key ranges): indices before a
    # sequence's start are dropped, sink/local count only visible keys
    torch.manual_seed(8)
    B, Lk = 2, 40
    q = torch.randn(B, 4, Lq, 16, device=dev())
    k = torch.randn(B, 2, Lk, 16, device=dev())
    v = torch.randn(B, 2, Lk, 16, device=dev())
    idx = torch.randint(0, Lk, (B, 2, Lq, 7), device=dev())
    pos = torch.arange(Lk, device=dev())
    st = torch.tensor([0, 12], device=dev())
    qpos = torch.arange(Lk - Lq, Lk, device=dev())
    mask = (pos[None, None] >= st[:, None, None]) & (pos[None, None] <= qpos[None, :, None])
    mask = mask[:, None]  # [B, 1, Lq, Lk], causality inside the mask
    kw = dict(indices=idx, causal=False, sink=sink, local=local, attn_mask=mask, return_lse=True)
    out, lse = topk_attention(q, k, v, None, backend="triton", **kw)
    ref, rlse = topk_attention_reference(q, k, v, None, **kw)
    assert rel_rms(out, ref) < 1e-5
    assert (lse - rlse).abs().max() < 1e-4


def test_sparse_bad_indices():
    q = torch.randn(1, 2, 1, 16)
    k = v = torch.randn(1, 1, 8, 16)
    with pytest.raises(ValueError, match="indices must be"):
        sparse_attention(q, k, v, torch.zeros(1, 3, 1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="int32 or int64"):
        sparse_attention(q, k, v, torch.zeros(1, 1, 1, 2))


@pytest.mark.gpu
def test_sparse_gpu_llama_shape():
    torch.manual_seed(0)
    B, Hq, Hkv, n, D, kk = 2, 32, 8, 32768, 128, 2048
    q = torch.randn(B, Hq, 1, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(B, Hkv, n, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(B, Hkv, n, D, device="cuda", dtype=torch.bfloat16)
    idx = torch.stack([torch.randperm(n, device="cuda")[:kk] for _ in range(B * Hkv)]).view(B, Hkv, 1, kk)
    out = sparse_attention(q, k, v, idx, assume_unique=True)
    ref = topk_attention_reference(q, k, v, None, indices=idx)
    assert rel_rms(out, ref) < 2e-2


def test_sparse_paged_cache_matches_contiguous():
    from tests.ops.test_triton_decode import _paged

    torch.manual_seed(12)
    B, n = 2, 64
    q = torch.randn(B, 4, 1, 16, device=dev())
    k = torch.randn(B, 2, n, 16, device=dev())
    v = torch.randn(B, 2, n, 16, device=dev())
    idx = torch.randint(0, n, (B, 2, 1, 9), device=dev())
    kp, vp, bt = _paged(k, v, 16, seed=3)
    out = sparse_attention(q, kp, vp, idx, sink=1, local=2, block_table=bt)
    ref = sparse_attention(q, k, v, idx, sink=1, local=2)
    assert rel_rms(out, ref) < 1e-6
