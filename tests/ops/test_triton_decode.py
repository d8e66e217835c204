"""Fused exact Top-k decode vs the reference (TRITON_INTERPRET=1 on CPU)."""

import pytest
import torch

from tests.ops.compare import TOL, dev, rel_rms
from topkattn.ops.topk import topk_attention
from topkattn.ops.topk.naive import topk_attention_reference
from topkattn.ops.topk.triton_decode import topk_decode


CASES = [
    # B, Hq, Hkv, n, D, topk, dtype, sink, local, granularity, lens
    (2, 4, 2, 37, 32, 5, torch.float32, 0, 0, "query_head", None),
    (2, 4, 2, 300, 32, 17, torch.float32, 1, 3, "kv_group", [300, 123]),
    (1, 8, 2, 257, 64, 1, torch.bfloat16, 0, 0, "query_head", None),
    (3, 2, 2, 50, 16, 64, torch.float16, 2, 2, "query_head", [50, 7, 0]),  # k >= n, empty row
    (2, 4, 1, 3001, 32, 300, torch.bfloat16, 0, 0, "kv_group", [3001, 2000]),
]


@pytest.mark.parametrize("case", CASES)
def test_decode_matches_reference(case):
    B, Hq, Hkv, n, D, kk, dt, sink, local, gran, lens = case
    torch.manual_seed(n + kk)
    q = torch.randn(B, Hq, 1, D, device=dev()).to(dt)
    k = torch.randn(B, Hkv, n, D, device=dev()).to(dt)
    v = torch.randn(B, Hkv, n, D, device=dev()).to(dt)
    sl = torch.tensor(lens, device=dev()) if lens else None
    mask = (torch.arange(n, device=dev())[None] < sl[:, None])[:, None, None] if lens else None
    out, lse = topk_decode(q, k, v, topk=kk, sink=sink, local=local, granularity=gran, ends=sl,
                           return_lse=True)
    ref, rlse = topk_attention_reference(q, k, v, kk, sink=sink, local=local, granularity=gran,
                                         attn_mask=mask, return_lse=True)
    assert rel_rms(out, ref) < TOL[dt]
    fin = torch.isfinite(rlse)
    assert torch.equal(torch.isfinite(lse), fin)
    assert (lse[fin] - rlse[fin]).abs().max() < 1e-4


@pytest.mark.parametrize("tiles", [1, 3])
def test_decode_scores_tiles(knobs, tiles):
    # 1 or 3 key tiles per scores program, with lengths that end inside a tile
    knobs.tune("decode", tiles=tiles, block_n=16)
    torch.manual_seed(3)
    q = torch.randn(2, 4, 1, 32, device=dev())
    k = torch.randn(2, 2, 300, 32, device=dev())
    v = torch.randn(2, 2, 300, 32, device=dev())
    sl = torch.tensor([300, 150], device=dev())
    ss = torch.tensor([0, 40], device=dev())
    pos = torch.arange(300, device=dev())
    mask = ((pos[None] >= ss[:, None]) & (pos[None] < sl[:, None]))[:, None, None]
    for gran in ("query_head", "kv_group"):
        out = topk_decode(q, k, v, topk=20, sink=2, local=3, granularity=gran, starts=ss, ends=sl)
        ref = topk_attention_reference(q, k, v, 20, sink=2, local=3, granularity=gran, attn_mask=mask)
        assert rel_rms(out, ref) < 1e-5


@pytest.mark.parametrize("gran,sink,local", [("query_head", 0, 0), ("kv_group", 3, 2),
                                             ("query_head", 6, 1)])
def test_decode_left_padding_via_dispatch(gran, sink, local):
    # transformers' mask for a left-padded batch at a decode step: [B, 1, 1, Lk] key ranges,
    # one with left and right padding, one whose visible keys are all sink/local
    torch.manual_seed(6)
    B, n = 3, 300
    q = torch.randn(B, 4, 1, 16, device=dev())
    k = torch.randn(B, 2, n, 16, device=dev())
    v = torch.randn(B, 2, n, 16, device=dev())
    pos = torch.arange(n, device=dev())
    st = torch.tensor([0, 37, 290], device=dev())
    en = torch.tensor([300, 250, 294], device=dev())
    mask = ((pos[None] >= st[:, None]) & (pos[None] < en[:, None]))[:, None, None]
    kw = dict(topk=9, sink=sink, local=local, granularity=gran, attn_mask=mask, return_lse=True)
    out, lse = topk_attention(q, k, v, backend="triton", **kw)  # raises if it fell back
    ref, rlse = topk_attention_reference(q, k, v, kw.pop("topk"), **kw)
    assert rel_rms(out, ref) < 1e-5
    assert (lse - rlse).abs().max() < 1e-4


def test_decode_bad_input():
    q = torch.randn(1, 2, 2, 16)
    k = v = torch.randn(1, 1, 8, 16)
    with pytest.raises(ValueError, match="Lq=1"):
        topk_decode(q, k, v, topk=4)
    with pytest.raises(ValueError, match="granularity"):
        topk_decode(q[:, :, :1], k, v, topk=4, granularity="bad")
    with pytest.raises(ValueError, match="topk"):
        topk_decode(q[:, :, :1], k, v, topk=0)


@pytest.mark.gpu
@pytest.mark.parametrize("gran", ["query_head", "kv_group"])
def test_decode_gpu_llama_shape(gran):
    torch.manual_seed(0)
    B, Hq, Hkv, n, D = 2, 32, 8, 32768, 128
    q = torch.randn(B, Hq, 1, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(B, Hkv, n, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(B, Hkv, n, D, device="cuda", dtype=torch.bfloat16)
    lens = torch.tensor([n, 20000], device="cuda")
    mask = (torch.arange(n, device="cuda")[None] < lens[:, None])[:, None, None]
    out = topk_decode(q, k, v, topk=2048, sink=4, local=64, granularity=gran, ends=lens)
    ref = topk_attention_reference(q, k, v, 2048, sink=4, local=64, granularity=gran, attn_mask=mask)
    assert rel_rms(out, ref) < 2e-2


def _paged(k, v, page, seed=0):
    """A paged copy of a contiguous cache [B, H, n, D]: pages [P, page, H, D] in a shuffled
    order (plus two unused pages) and the block table [B, n // page]."""
    B, H, n, D = k.shape
    npg = n // page
    perm = torch.randperm(B * npg + 2, generator=torch.Generator().manual_seed(seed))
    kp = torch.zeros(B * npg + 2, page, H, D, dtype=k.dtype, device=k.device)
    vp = torch.zeros_like(kp)
    bt = perm[: B * npg].view(B, npg).to(k.device)
    for b in range(B):
        for j in range(npg):
            kp[bt[b, j]] = k[b, :, j * page:(j + 1) * page].transpose(0, 1)
            vp[bt[b, j]] = v[b, :, j * page:(j + 1) * page].transpose(0, 1)
    return kp, vp, bt.int()


@pytest.mark.parametrize("gran,page,sink,local", [("query_head", 16, 0, 0), ("kv_group", 32, 2, 3),
                                                  ("kv_group", 8, 0, 1)])
def test_decode_paged_cache_matches_contiguous(gran, page, sink, local):
    torch.manual_seed(11)
    B, n = 2, 256
    q = torch.randn(B, 4, 1, 32, device=dev())
    k = torch.randn(B, 2, n, 32, device=dev())
    v = torch.randn(B, 2, n, 32, device=dev())
    sl = torch.tensor([256, 131], device=dev())
    kp, vp, bt = _paged(k, v, page)
    kw = dict(sink=sink, local=local, granularity=gran, ends=sl, return_lse=True)
    out, lse = topk_decode(q, kp, vp, topk=12, block_table=bt, **kw)
    ref, rlse = topk_decode(q, k, v, topk=12, **kw)
    assert rel_rms(out, ref) < 1e-6
    assert (lse - rlse).abs().max() < 1e-5
    mask = (torch.arange(n, device=dev())[None] < sl[:, None])[:, None, None]
    ref2 = topk_attention_reference(q, k, v, 12, sink=sink, local=local, granularity=gran,
                                    attn_mask=mask)
    assert rel_rms(out, ref2) < 1e-5


def test_decode_paged_bad_input():
    q = torch.randn(1, 2, 1, 16)
    kp = torch.randn(4, 8, 1, 16)
    with pytest.raises(ValueError, match="block_table entries must lie in"):
        topk_decode(q, kp, kp, topk=3, block_table=torch.tensor([[0, 4]]))
    with pytest.raises(ValueError, match="block_table must be"):
        topk_decode(q, kp, kp, topk=3, block_table=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="paged cache"):
        topk_decode(q, kp[..., :8], kp[..., :8], topk=3, block_table=torch.tensor([[0, 1]]))


@pytest.mark.gpu
def test_decode_paged_gpu_llama_shape():
    torch.manual_seed(13)
    B, n = 2, 8192
    q = torch.randn(B, 32, 1, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(B, 8, n, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(B, 8, n, 128, device="cuda", dtype=torch.bfloat16)
    kp, vp, bt = _paged(k, v, 64)
    sl = torch.tensor([n, 5000], device="cuda")
    for gran in ("query_head", "kv_group"):
        out = topk_decode(q, kp, vp, topk=256, granularity=gran, ends=sl, block_table=bt)
        ref = topk_decode(q, k, v, topk=256, granularity=gran, ends=sl)
        # same selected set; the order of the index lists (atomic cursors) and so the bf16
        # rounding of the sums may differ between two runs: one bf16 ulp is 2^-8
        assert rel_rms(out, ref) < 1e-2


def test_decode_lengths_out_of_range_are_clamped_in_the_kernels():
    # lengths past the cache see every key, negative ones none (zero output, lse -inf), and
    # starts past the length none: the kernels clamp (no clamp kernels in a decode step)
    torch.manual_seed(4)
    B, n = 3, 120
    q = torch.randn(B, 4, 1, 16, device=dev())
    k = torch.randn(B, 2, n, 16, device=dev())
    v = torch.randn(B, 2, n, 16, device=dev())
    lens = torch.tensor([n + 50, -3, 60], dtype=torch.int32, device=dev())
    starts = torch.tensor([-5, 0, 90], dtype=torch.int32, device=dev())
    pos = torch.arange(n, device=dev())
    mask = ((pos[None] >= starts[:, None]) & (pos[None] < lens[:, None]))[:, None, None]
    for gran in ("query_head", "kv_group"):
        out, lse = topk_decode(q, k, v, topk=10, granularity=gran, starts=starts, ends=lens,
                               return_lse=True)
        ref = topk_attention_reference(q, k, v, 10, granularity=gran, attn_mask=mask)
        assert rel_rms(out[0], ref[0]) < 1e-5
        assert torch.equal(out[1:], torch.zeros_like(out[1:]))
        assert torch.isinf(lse[1:]).all() and torch.isfinite(lse[0]).all()
