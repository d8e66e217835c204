"""Dense decode over key ranges (`triton_dense.range_decode`) vs the reference
(TRITON_INTERPRET=1 on CPU, CUDA tensors on the device)."""

import pytest
import torch

from topkattn.ops.topk.custom_ops import range_mask
from topkattn.ops.topk.naive import dense_attention_reference

DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("G", [1, 4])
def test_range_decode_matches_reference(dtype, G):
    from topkattn.ops.topk.triton_dense import range_decode

    g = torch.Generator().manual_seed(G)
    B, Hkv, n, D = 3, 2, 200, 32
    q = torch.randn(B, Hkv * G, 1, D, generator=g).to(DEV, dtype)
    k = torch.randn(B, Hkv, n, D, generator=g).to(DEV, dtype)
    v = torch.randn(B, Hkv, n, D, generator=g).to(DEV, dtype)
    lo = torch.tensor([0, 37, 50], dtype=torch.int32, device=DEV)
    hi = torch.tensor([200, 150, 50], dtype=torch.int32, device=DEV)  # the last sees nothing
    out, lse = range_decode(q, k, v, starts=lo, ends=hi, scale=0.2, return_lse=True)
    want = dense_attention_reference(q, k, v, causal=False, scale=0.2, attn_mask=range_mask(lo, hi, n))
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    assert torch.allclose(out.float(), want.float(), atol=tol, rtol=tol)
    assert torch.equal(out[2], torch.zeros_like(out[2]))
    assert torch.isinf(lse[2]).all() and torch.isfinite(lse[:2]).all()


def test_range_decode_rejects_bad_ranges():
    from topkattn.ops.topk.triton_dense import range_decode

    q = torch.randn(2, 4, 1, 16, device=DEV)
    k = torch.randn(2, 2, 10, 16, device=DEV)
    with pytest.raises(ValueError, match="ends must be int32 \\[B=2\\]"):
        range_decode(q, k, k, starts=torch.zeros(2, dtype=torch.int32, device=DEV),
                     ends=torch.full((3,), 10, dtype=torch.int32, device=DEV))
    with pytest.raises(ValueError, match="Lq=1"):
        range_decode(torch.randn(2, 4, 2, 16, device=DEV), k, k,
                     starts=torch.zeros(2, dtype=torch.int32, device=DEV),
                     ends=torch.full((2,), 10, dtype=torch.int32, device=DEV))


@pytest.mark.parametrize("layout", ["contiguous", "bnhd", "padded_rows"])
def test_decode_kernels_any_cache_strides(layout):
    # strides in units of D (vector loads) when every stride is a multiple of D, element
    # strides otherwise: the dense, Top-k and sparse kernels agree with the reference for both
    from topkattn.ops.topk.naive import topk_attention_reference
    from topkattn.ops.topk.triton_decode import topk_decode
    from topkattn.ops.topk.triton_dense import range_decode
    from topkattn.ops.topk.triton_sparse import row_unit_strides

    g = torch.Generator().manual_seed(9)
    B, Hkv, G, n, D = 2, 2, 2, 96, 16
    q = torch.randn(B, Hkv * G, 1, D, generator=g).to(DEV)
    if layout == "contiguous":
        k, v = (torch.randn(B, Hkv, n, D, generator=g).to(DEV) for _ in range(2))
    elif layout == "bnhd":  # [B, n, Hkv, D] storage seen as [B, Hkv, n, D]
        k, v = (torch.randn(B, n, Hkv, D, generator=g).to(DEV).transpose(1, 2) for _ in range(2))
    else:  # rows of D + 3 elements: strides are not multiples of D
        k, v = (torch.randn(B, Hkv, n, D + 3, generator=g).to(DEV)[..., :D] for _ in range(2))
    su = row_unit_strides(D, *k.stride()[:3])[0]
    assert su == (1 if layout == "padded_rows" else D)
    lo = torch.tensor([0, 11], dtype=torch.int32, device=DEV)
    hi = torch.tensor([96, 70], dtype=torch.int32, device=DEV)
    mask = range_mask(lo, hi, n)
    want = dense_attention_reference(q, k, v, causal=False, attn_mask=mask)
    assert torch.allclose(range_decode(q, k, v, starts=lo, ends=hi), want, atol=1e-4, rtol=1e-4)
    for gran in ("query_head", "kv_group"):
        out = topk_decode(q, k, v, topk=9, granularity=gran, starts=lo, ends=hi)
        ref = topk_attention_reference(q, k, v, 9, granularity=gran, attn_mask=mask)
        assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4), gran
