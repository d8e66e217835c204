"""Triton top-k selection vs the reference (TRITON_INTERPRET=1 on CPU)."""

import pytest
import torch
import triton
import triton.language as tl

from topkattn.ops.select import topk_select, topk_select_reference
from topkattn.ops.select.triton_select import _bit_length, select_rows
from topkattn.ops.testing import inject
from topkattn.ops.tuning import DEFAULT


@triton.jit
def _bit_length_kernel(X, O, N: tl.constexpr):
    for i in range(N):
        x = tl.load(X + i).to(tl.uint32, bitcast=True)
        tl.store(O + i, _bit_length(x).to(tl.int32))


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("R,n,k", [(3, 1000, 10), (2, 17, 1), (2, 17, 17), (2, 9, 20), (1, 5001, 777)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_select_matches_reference(R, n, k, dtype):
    torch.manual_seed(n + k)
    s = torch.randn(R, n, device=device()).to(dtype)
    assert torch.equal(topk_select(s, k, sort=True), topk_select_reference(s, k))


def test_select_ties_lowest_position_wins():
    torch.manual_seed(0)
    s = torch.randint(0, 3, (3, 3000), device=device()).float()
    s[0, :] = 1.0  # all equal: the first k positions
    s[1, ::2] = -0.0  # -0.0 ties with +0.0 as in the reference
    assert torch.equal(topk_select(s, 100, sort=True), topk_select_reference(s, 100))
    assert torch.equal(topk_select(s, 100, sort=True)[0].long().cpu(), torch.arange(100))


def test_select_slow_path_when_bin_overflows_buffer():
    # all scores in one 12-bit bin and a tiny buffer: refinement re-reads the row
    torch.manual_seed(1)
    s = 1.0 + torch.rand(2, 3000, device=device()) * 1e-3
    out = select_rows(s, k=50, cap=16)
    ref = topk_select_reference(s, 50)
    assert torch.equal(out.sort(-1).values, ref)


SCALES = {
    "gaussian": lambda g: torch.randn(2, 2000, generator=g),
    # below 2^-6 and above 2^10: the clamped end bins of the log-bin histogram
    "tiny": lambda g: torch.randn(2, 2000, generator=g) * 1e-4,
    "huge": lambda g: torch.randn(2, 2000, generator=g) * 1e5,
    "negative": lambda g: -torch.rand(2, 2000, generator=g) * 10,
    # few distinct values: partial ties cut by position
    "ties": lambda g: torch.randint(-3, 4, (3, 6000), generator=g).float() / 4,
    # consecutive integers: the k-th key often sits at a digit boundary, where a radix pass
    # settles the threshold early (all of a digit's entries needed)
    "arange": lambda g: torch.stack([torch.arange(2048.0), torch.randperm(2048, generator=g) + 0.5]),
}


@pytest.mark.parametrize("dist", sorted(SCALES))
@pytest.mark.parametrize("block,cap,bits,first,tiers", [(4096, None, 4, None, True), (4096, None, 4, 8, True),
                                                        (4096, None, 8, None, True), (4096, None, 3, 6, True),
                                                        (256, None, 4, None, True), (256, None, 4, None, False),
                                                        (256, 8, 4, None, True)])
def test_select_finish_paths(knobs, dist, block, cap, bits, first, tiers):
    knobs.tune("select", finish_tiers=tiers, finish_digit_bits=bits, finish_first_digit_bits=first)
    # block 4096: the window's entries stay in registers (tiers of 512, 4096, 8192); block
    # 256: registers up to 512 with the tiers, else the blocked passes over the buffer; cap 8:
    # the window overflows the buffer and the passes re-read the row
    g = torch.Generator().manual_seed(11)
    s = SCALES[dist](g).to(device())
    for k in (1, 16, 37, 256, 700):
        out = select_rows(s, k=k, block=block, cap=cap)
        assert torch.equal(out.sort(-1).values, topk_select_reference(s, k)), (dist, k)


@pytest.mark.parametrize("sample,shift", [(1, 0), (4, 0), (16, 0), (4, 3), (4, -3), (1, 40)])
def test_select_sampled_window_and_fallback(knobs, sample, shift):
    # the histogram counts every sample-th position; a window shifted off the k-th key (or one
    # the estimate missed) must be caught by the scan's exact counts and the row re-read
    knobs.tune("select", sample=sample)
    knobs.fault(window_shift=shift)
    g = torch.Generator().manual_seed(17)
    s = (torch.randn(4, 4000, generator=g) * 2).to(device())
    s[1, 1000:1100] += 6.0  # a hot region: block-correlated scores
    lens = torch.tensor([4000, 2500], dtype=torch.int32, device=device())
    starts = torch.tensor([0, 300], dtype=torch.int32, device=device())
    from topkattn.ops.topk.naive import forced_mask, select_topk_mask

    pos = torch.arange(4000, device=device())
    for k in (1, 150):
        out = select_rows(s, k=k, starts=starts, ends=lens, rows_per_seq=2, sink=2, local=1)
        for r in range(4):
            vis = (pos >= starts[r // 2]) & (pos < lens[r // 2])
            ref = select_topk_mask(s[r], k, vis, forced_mask(vis[None], 2, 1)[0]).nonzero().flatten()
            assert torch.equal(out[r][out[r] >= 0].long().sort().values, ref), (k, r)


def test_select_workspace_is_left_zeroed_and_reused():
    # the kernels zero the histogram, arrival counters and cursors they used, so one workspace
    # serves call after call (the cached per-stream workspace relies on it), whatever the rows
    # of each call: a row that keeps all its candidates, a window that misses (re-read), sink /
    # local
    import topkattn.ops.select.triton_select as ts
    from topkattn.ops.topk.naive import forced_mask, select_topk_mask

    g = torch.Generator().manual_seed(5)
    s = torch.randn(4, 3000, generator=g).to(device())
    lens = torch.tensor([3000, 40], dtype=torch.int32, device=device())
    w = ts.select_workspace(7, torch.device(device()))
    v = ts.workspace_views(w)

    def check_zero():
        assert not v.hist.any() and not v.cnt.any() and not v.done.any()

    for shift in (0, 5):
        with inject(window_shift=shift):
            for k, R in ((50, 4), (600, 2), (600, 4)):
                out = select_rows(s[:R], k=k, ends=lens[: R // 2], rows_per_seq=2, sink=1, local=2, work=w)
                check_zero()
                for r in range(R):
                    vis = torch.arange(3000, device=device()) < lens[r // 2]
                    ref = select_topk_mask(s[r], k, vis, forced_mask(vis[None], 1, 2)[0]).nonzero().flatten()
                    assert torch.equal(out[r][out[r] >= 0].long().sort().values, ref), (shift, k, r)
    with pytest.raises(ValueError, match="holds 7 rows"):
        select_rows(torch.randn(8, 100, device=device()), k=5, work=w)


def test_select_rows_lengths_sink_local():
    torch.manual_seed(2)
    s = torch.randn(4, 300, device=device())
    lens = torch.tensor([300, 120], dtype=torch.int32, device=device())
    out = select_rows(s, k=10, ends=lens, rows_per_seq=2, sink=3, local=4)
    from topkattn.ops.topk.naive import forced_mask, select_topk_mask

    for r in range(4):
        L = int(lens[r // 2])
        vis = torch.arange(300, device=device()) < L
        forced = forced_mask(vis[None], 3, 4)[0]
        ref = select_topk_mask(s[r], 10, vis, forced).nonzero().flatten()
        got = out[r][out[r] >= 0].long().sort().values
        assert torch.equal(got, ref), r


def test_select_rows_left_padding():
    torch.manual_seed(7)
    s = torch.randn(4, 500, device=device())
    lens = torch.tensor([500, 400], dtype=torch.int32, device=device())
    starts = torch.tensor([130, 395], dtype=torch.int32, device=device())
    out = select_rows(s, k=12, starts=starts, ends=lens, rows_per_seq=2, sink=2, local=3)
    from topkattn.ops.topk.naive import forced_mask, select_topk_mask

    pos = torch.arange(500, device=device())
    for r in range(4):
        vis = (pos >= starts[r // 2]) & (pos < lens[r // 2])
        forced = forced_mask(vis[None], 2, 3)[0]
        ref = select_topk_mask(s[r], 12, vis, forced).nonzero().flatten()
        got = out[r][out[r] >= 0].long().sort().values
        assert torch.equal(got, ref), r


def test_select_several_blocks_per_program(knobs):
    # programs covering 4 blocks (the GPU setting at large sizes) select the same set
    import topkattn.ops.select.triton_select as ts

    torch.manual_seed(9)
    s = torch.randn(2, 20000, device=device())
    lens = torch.tensor([19000], dtype=torch.int32, device=device())
    starts = torch.tensor([777], dtype=torch.int32, device=device())
    assert ts._iters(40, torch.device(device()), DEFAULT.select.iters) > 1 or device() == "cuda"
    a = select_rows(s, k=300, starts=starts, ends=lens, rows_per_seq=2, sink=1, local=2)
    knobs.tune("select", iters=1)
    b = select_rows(s, k=300, starts=starts, ends=lens, rows_per_seq=2, sink=1, local=2)
    assert torch.equal(a.sort(-1).values, b.sort(-1).values)
    assert torch.equal(topk_select(s, 300, sort=True), topk_select_reference(s, 300))


def test_select_bad_input():
    with pytest.raises(ValueError, match="k must be a positive integer"):
        topk_select(torch.randn(2, 5), 0)
    with pytest.raises(ValueError, match="2-D"):
        topk_select(torch.randn(5), 1)


@pytest.mark.gpu
@pytest.mark.parametrize("bits,first", [(4, None), (3, None), (4, 8)])
def test_select_gpu_large(knobs, bits, first):
    knobs.tune("select", finish_digit_bits=bits, finish_first_digit_bits=first)
    for seed in range(3):
        torch.manual_seed(seed)
        s = torch.randn(32, 131072, device="cuda") * (1 + 3 * seed)
        for k in (1, 2048, 8192):
            assert torch.equal(topk_select(s, k, sort=True), topk_select_reference(s, k)), (seed, k)
    s = torch.randn(8, 1 << 20, device="cuda").bfloat16()
    assert torch.equal(topk_select(s, 4096, sort=True), topk_select_reference(s, 4096))


def test_bit_length_from_float_exponent():
    # the finish's common-prefix length: exact or one more (the fp32 conversion rounds up near
    # powers of two), never less, at most 32
    vals = [0, 1, 2, 3, 7, 8, 255, 256, 2**24 - 1, 2**24, 2**24 + 1, 2**31 - 1, 2**31, 2**32 - 129,
            2**32 - 128, 2**32 - 1, 12345678]
    x = torch.tensor([v if v < 2**31 else v - 2**32 for v in vals], dtype=torch.int32, device=device())
    o = torch.zeros_like(x)
    _bit_length_kernel[(1,)](x, o, N=len(vals))
    for v, h in zip(vals, o.tolist()):
        assert v.bit_length() <= h <= min(v.bit_length() + 1, 32), (v, h)


WINDOW_ROWS = {
    # the scale and common offset of a row must not matter: each row's bins are framed by a
    # sample of its own scores (a random-weight model's scores are ~1e-4; trained models' rows
    # carry a large common offset q . mean(k))
    "gaussian": lambda g: torch.randn(4, 8192, generator=g),
    "tiny": lambda g: torch.randn(4, 8192, generator=g) * 1e-5,
    "huge": lambda g: torch.randn(4, 8192, generator=g) * 1e5,
    "offset": lambda g: 500.0 + torch.randn(4, 8192, generator=g) * 0.05,
    "negative_offset": lambda g: -40.0 + torch.randn(4, 8192, generator=g) * 1e-3,
    "outlier": lambda g: torch.cat([torch.full((4, 1), 1e4), torch.randn(4, 8191, generator=g)], 1),
}


@pytest.mark.parametrize("dist", sorted(WINDOW_ROWS))
def test_select_window_holds_kth_score_at_any_scale(dist):
    from topkattn.ops.select.triton_select import window_counts

    g = torch.Generator().manual_seed(23)
    s = WINDOW_ROWS[dist](g).to(device())
    k = 128
    above, inside = window_counts(s, k=k)
    assert ((above < k) & (above + inside >= k)).all(), (dist, above, inside)
    # the window is a thin slice of the row, not the whole of it (that would be a re-read)
    assert (inside < s.shape[1] // 4).all(), (dist, inside)
    assert torch.equal(select_rows(s, k=k).sort(-1).values, topk_select_reference(s, k))
