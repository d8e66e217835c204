"""Top-k prefill/training attention (forward and gradients) vs the reference (interpreter)."""

from dataclasses import replace

import pytest
import torch
import triton
import triton.language as tl

from tests.ops.compare import TOL, dev
from tests.ops.compare import rel_rms as _rel_rms
from topkattn.ops.topk import topk_attention
from topkattn.ops.topk.naive import topk_attention_reference
import topkattn.ops.select.prefill_threshold as pt
import topkattn.ops.topk.triton_prefill as tp
from topkattn.ops.testing import inject
from topkattn.ops.topk.triton_prefill import topk_prefill
from topkattn.ops.tuning import DEFAULT, PrefillTile, PrefillTiles, tuned, uniform_tiles

GRAD_TOL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}


def rel_rms(a, b):
    return _rel_rms(a, b, floor=1e-6)  # k=1: reference gradients of q, k are exactly 0


def assert_grads_match(out, ref, inputs, dt):
    """Gradients of out and ref w.r.t. inputs (q, k, v) for one random upstream gradient."""
    do = torch.randn_like(out)
    g = torch.autograd.grad(out, inputs, do)
    rg = torch.autograd.grad(ref, inputs, do)
    for a, b, name in zip(g, rg, "qkv"):
        assert rel_rms(a, b) < GRAD_TOL[dt], name


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
    out, lse = topk_prefill(q, k, v, topk=kk, causal=causal, sink=sink, local=local, return_lse=True)
    ref, rlse = topk_attention_reference(q, k, v, kk, causal=causal, sink=sink, local=local,
                                         return_lse=True)
    assert rel_rms(out, ref) < TOL[dt]
    assert (lse - rlse).abs().max() < 1e-4
    assert_grads_match(out, ref, (q, k, v), dt)


MIXED_TILES = PrefillTiles(search=PrefillTile(16, 16), fwd=PrefillTile(32, 16),
                           dq=PrefillTile(16, 32), dkdv=PrefillTile(32, 16))


def prefill_tuned(tiles: PrefillTiles | None = None, **changes):
    """`tuned` with the prefill knobs ``changes`` and, given ``tiles``, those tiles for every
    call (CPU, GPU, wide heads)."""
    if tiles is not None:
        changes.update(tiles_query_head=tiles, tiles_kv_group=tiles, tiles_wide=tiles,
                       tiles_cpu=tiles)
    return tuned(prefill=replace(DEFAULT.prefill, **changes))


@pytest.mark.parametrize("gran,sink,local", [("query_head", 0, 0), ("kv_group", 1, 2)])
def test_prefill_kernels_on_their_own_tiles(gran, sink, local):
    """Forward / dq / dk-dv on tiles other than the threshold search's (and unlike each other).
    Dyadic inputs make every score exact, hence tile-independent under the interpreter too (its
    numpy matmul, unlike the GPU's mma chains, rounds differently per tile shape)."""
    torch.manual_seed(7)
    mk = lambda *s: (torch.randint(-8, 9, s) / 8).to(dev()).requires_grad_()  # noqa: E731
    q, k, v = mk(1, 4, 45, 16), mk(1, 2, 45, 16), mk(1, 2, 45, 16)
    kw = dict(granularity=gran, sink=sink, local=local)
    with prefill_tuned(MIXED_TILES):
        assert tp.prefill_tiles(q, gran == "kv_group") == MIXED_TILES
        out, lse = topk_prefill(q, k, v, topk=9, return_lse=True, **kw)
        ref, rlse = topk_attention_reference(q, k, v, 9, return_lse=True, **kw)
        assert rel_rms(out, ref) < TOL[torch.float32]
        assert (lse - rlse).abs().max() < 1e-4
        assert_grads_match(out, ref, (q, k, v), torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("dt", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("group", [False, True])
def test_scores_bitwise_tile_independent(dt, group):
    """What lets each prefill kernel take its own tile: on the GPU a selection score has the
    same bits under every tile shape and warp count (wgmma and mma.sync tiles alike)."""
    torch.manual_seed(3)
    q = torch.randn(1, 8, 1000, 128, device="cuda").to(dt)
    k = torch.randn(1, 2, 1000, 128, device="cuda").to(dt)
    ref = tp.selection_scores(q, k, scale=0.088, group=group, tile=PrefillTile(64, 64, 4))
    tiles = {getattr(DEFAULT.prefill.tiles(g), f) for g in ("query_head", "kv_group")
             for f in ("search", "fwd", "dq", "dkdv")}
    tiles |= {PrefillTile(*t) for t in [(128, 64, 8), (64, 128, 8), (32, 64, 4), (64, 32, 4),
                                           (128, 32, 8), (32, 32, 4)]}
    for t in tiles:
        s = tp.selection_scores(q, k, scale=0.088, group=group, tile=t)
        assert torch.equal(s.view(torch.int32), ref.view(torch.int32)), t


@pytest.mark.parametrize("seed,Hq,kw", [(0, 1, {}),
                                         (2, 2, dict(granularity="kv_group", sink=1, local=1))])
def test_prefill_ties_keep_lowest_positions(seed, Hq, kw):
    torch.manual_seed(seed)
    q = torch.randint(-1, 2, (1, Hq, 30, 16), device=dev()).float()
    k = torch.randint(-1, 2, (1, 1, 30, 16), device=dev()).float()
    v = torch.randn(1, 1, 30, 16, device=dev())
    out = topk_prefill(q, k, v, topk=4, **kw)
    assert rel_rms(out, topk_attention_reference(q, k, v, 4, **kw)) < 1e-6


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
    out = topk_prefill(q, k, v, topk=64, sink=4, local=16)
    ref = topk_attention_reference(q, k, v, 64, sink=4, local=16)
    assert rel_rms(out, ref) < 2e-2
    do = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), do), torch.autograd.grad(ref, (q, k, v), do)):
        assert rel_rms(a, b) < 3e-2


def _pad_mask(B, Lq, Lk, starts=None, ends=None, causal=True, rows=True):
    """transformers-style bool mask [B, 1, Lq or 1, Lk]: key in [start, end) (AND causal)."""
    pos = torch.arange(Lk, device=dev())
    st = torch.tensor(starts if starts is not None else [0] * B, device=dev())
    en = torch.tensor(ends if ends is not None else [Lk] * B, device=dev())
    key = (pos[None, :] >= st[:, None]) & (pos[None, :] < en[:, None])  # [B, Lk]
    if not rows:
        return key[:, None, None, :]
    m = key[:, None, :].expand(B, Lq, Lk)
    if causal:
        m = m & (pos[None, :] <= torch.arange(Lk - Lq, Lk, device=dev())[:, None])
    return m[:, None].contiguous()


GROUP_PAD_CASES = [
    # B, Hq, Hkv, Lq, Lk, D, topk, dtype, sink, local, causal, granularity, starts, ends
    (1, 4, 2, 37, 37, 16, 5, torch.float32, 0, 0, True, "kv_group", None, None),  # G=2
    (2, 8, 2, 21, 45, 32, 7, torch.float32, 1, 2, True, "kv_group", None, None),  # G=4
    (1, 4, 1, 33, 33, 16, 1, torch.bfloat16, 0, 0, True, "kv_group", None, None),  # k=1
    (1, 4, 2, 19, 30, 16, 50, torch.bfloat16, 0, 0, False, "kv_group", None, None),  # k >= n
    # left padding (mask holds causality, causal=False as the HF integration passes it);
    # the first rows of the padded sequence see no key
    (2, 2, 1, 29, 29, 16, 6, torch.float32, 0, 0, False, "query_head", [0, 9], None),
    (2, 4, 2, 20, 26, 16, 5, torch.bfloat16, 2, 3, False, "kv_group", [1, 11], None),
    (2, 8, 2, 23, 23, 16, 4, torch.float32, 1, 1, False, "kv_group", [5, 0], None),
    # right-padding key mask [B, 1, 1, Lk] with causal=True
    (2, 2, 1, 24, 24, 16, 4, torch.float32, 0, 1, True, "query_head", None, [24, 15]),
]


@pytest.mark.parametrize("case", GROUP_PAD_CASES)
def test_prefill_kv_group_and_padding(case):
    B, Hq, Hkv, Lq, Lk, D, kk, dt, sink, local, causal, gran, starts, ends = case
    torch.manual_seed(Lq * Lk + Hq)
    q = torch.randn(B, Hq, Lq, D, device=dev()).to(dt).requires_grad_()
    k = torch.randn(B, Hkv, Lk, D, device=dev()).to(dt).requires_grad_()
    v = torch.randn(B, Hkv, Lk, D, device=dev()).to(dt).requires_grad_()
    mask = None
    if starts is not None or ends is not None:
        mask = _pad_mask(B, Lq, Lk, starts, ends, causal=not causal, rows=starts is not None)
    kw = dict(causal=causal, sink=sink, local=local, granularity=gran, attn_mask=mask,
              return_lse=True)
    out, lse = topk_attention(q, k, v, topk=kk, backend="triton", **kw)  # raises on fallback
    ref, rlse = topk_attention_reference(q, k, v, kk, **kw)
    assert rel_rms(out, ref) < TOL[dt]
    fin = torch.isfinite(rlse)
    assert torch.equal(torch.isfinite(lse), fin)
    assert (lse[fin] - rlse[fin]).abs().max() < 1e-4
    if starts is not None and max(starts) > 0:
        assert not fin.all() and (out[~fin] == 0).all()  # an all-padding row: zero output
    assert_grads_match(out, ref, (q, k, v), dt)


def test_prefill_mask_forms():
    from topkattn.ops.topk.dispatch_triton import _padding_bounds

    B, Lq, Lk = 2, 6, 9
    m = _pad_mask(B, Lq, Lk, [2, 0])
    st, en, causal = _padding_bounds(m, B, Lq, Lk, causal=False)
    assert st.tolist() == [2, 0] and en.tolist() == [Lk, Lk] and causal
    st, en, causal = _padding_bounds(_pad_mask(B, Lq, Lk, [3, 0], rows=False), B, Lq, Lk, False)
    assert st.tolist() == [3, 0] and not causal
    holed = m.clone()
    holed[1, 0, -1, 4] = False  # a hole: not a key range -> the reference runs
    assert _padding_bounds(holed, B, Lq, Lk, causal=False) is None
    assert _padding_bounds(m.expand(B, 2, Lq, Lk), B, Lq, Lk, causal=False) is None
    q = torch.randn(B, 2, Lq, 16, device=dev())
    kv = torch.randn(B, 1, Lk, 16, device=dev())
    with pytest.raises(ValueError):
        topk_attention(q, kv, kv, topk=3, causal=False, attn_mask=holed, backend="triton")
    ref = topk_attention_reference(q, kv, kv, 3, causal=False, attn_mask=holed)
    assert torch.equal(topk_attention(q, kv, kv, topk=3, causal=False, attn_mask=holed), ref)


# --- threshold search: bracket-count-collect vs radix vs an exact torch reference -----------

P_INF = 2**31 - 1


def _ref_thresholds(q, k, topk, causal, sink, local, group, starts=None, ends=None):
    """Exact (T, P) int64 [rows, Lq] for scores that fp32 represents exactly (dyadic inputs)."""
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    G = Hq // Hkv
    s = torch.einsum("bhmd,bhnd->bhmn", q.double(), k.double().repeat_interleave(G, 1)) * D**-0.5
    if group:
        s = s.view(B, Hkv, G, Lq, Lk).sum(2)
    s = s.float().cpu() + 0.0
    bits = s.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    key = torch.where(bits >> 31 != 0, bits ^ 0xFFFFFFFF, bits | 0x80000000)
    pos = torch.arange(Lk)
    m = torch.arange(Lq)
    st = torch.zeros(B, dtype=torch.long) if starts is None else torch.tensor(starts)
    en = torch.full((B,), Lk) if ends is None else torch.tensor(ends)
    vis_end = (Lk - Lq + m + 1 if causal else torch.full((Lq,), Lk))[None, :].minimum(en[:, None])
    c_lo = torch.minimum(torch.maximum(torch.tensor(sink), st)[:, None], vis_end)  # [B, Lq]
    c_hi = torch.maximum(c_lo, vis_end - local)
    cand = (pos >= c_lo[..., None]) & (pos < c_hi[..., None])  # [B, Lq, Lk]
    comb = torch.where(cand[:, None], key * 2**16 + (2**16 - 1 - pos), -1)  # key desc, pos asc
    kth = comb.topk(min(topk, Lk), -1).values[..., -1]
    T = kth >> 16
    tie = (key == T[..., None]) & cand[:, None]
    cut = tie.sum(-1) > (tie & (comb >= kth[..., None])).sum(-1)
    P = torch.where(cut, 2**16 - 1 - (kth & 0xFFFF), P_INF)
    active = (c_hi - c_lo > topk)[:, None].expand_as(T)
    return (torch.where(active, T, 0).flatten(0, 1), torch.where(active, P, P_INF).flatten(0, 1))


THRESH_CASES = [
    # B, Hq, Hkv, L, topk, causal, sink, local, kv_group, integer scores (many ties), starts, ends
    (1, 2, 1, 40, 6, True, 1, 1, False, False, None, None),
    (1, 4, 2, 36, 5, True, 0, 2, True, True, None, None),
    (2, 1, 1, 26, 4, False, 1, 0, False, True, [0, 7], [26, 23]),
]


@pytest.mark.parametrize("case", THRESH_CASES)
def test_thresholds_bcc_and_radix_exact(case):
    from topkattn.ops.select.prefill_threshold import prefill_thresholds

    B, Hq, Hkv, L, kk, causal, sink, local, group, ints, starts, ends = case
    torch.manual_seed(L + Hq)
    if ints:  # scores on a coarse integer grid: many ties at the k-th score
        mk = lambda *s: torch.randint(-2, 3, s).float()  # noqa: E731
    else:  # dyadic: fp32 scores are exact, so the reference below is exact
        mk = lambda *s: torch.randint(-64, 65, s) / 64  # noqa: E731
    q, k = mk(B, Hq, L, 16).to(dev()), mk(B, Hkv, L, 16).to(dev())
    rT, rP = _ref_thresholds(q, k, kk, causal, sink, local, group, starts, ends)
    st = None if starts is None else torch.tensor(starts, dtype=torch.int32, device=dev())
    en = None if ends is None else torch.tensor(ends, dtype=torch.int32, device=dev())
    kw = dict(topk=kk, causal=causal, scale=0.25, sink=sink, local=local, group=group, starts=st,
              ends=en)
    T, P, stat = prefill_thresholds(q, k, return_status=True, **kw)
    T2, P2 = prefill_thresholds(q, k, method="radix", **kw)
    assert (stat == 1).sum() > 0  # the band path ran (status 2 rows: fallback)
    if ints:  # ties at T: the band path found T, one more pass cut the ties (status 3)
        assert (stat == 3).sum() > 0
    for t, p in ((T, P), (T2, P2)):
        assert torch.equal(t.cpu().long() & 0xFFFFFFFF, rT) and torch.equal(p.cpu().long(), rP)


@pytest.mark.parametrize("mode", ["cap", "one_bin", "far_estimate"])
def test_prefill_fallback_paths_exact(mode):
    """Rows whose band overflows CAP (tiny CAP, or a useless estimate) take the radix fallback;
    a far-off estimate puts every candidate in the bottom bin. Results stay exact."""
    with (prefill_tuned(cap=2 if mode == "cap" else 16),
          inject(estimate_mode={"cap": 0, "one_bin": 1, "far_estimate": 2}[mode])):
        _fallback_paths_exact(mode)


def _fallback_paths_exact(mode):
    gran = "kv_group" if mode == "one_bin" else "query_head"
    torch.manual_seed(3)
    Hq = 4 if gran == "kv_group" else 2
    q = torch.randn(1, Hq, 26, 16, device=dev(), requires_grad=True)
    k = torch.randn(1, 2, 26, 16, device=dev(), requires_grad=True)
    v = torch.randn(1, 2, 26, 16, device=dev(), requires_grad=True)
    _, _, stat = pt.prefill_thresholds(q, k, topk=5, causal=True, scale=0.25, sink=1,
                                       group=gran == "kv_group",
                                       return_status=True)
    assert (stat == 2).sum() > 0 and (stat == 1).sum() > 0
    out = topk_prefill(q, k, v, topk=5, sink=1, granularity=gran)
    ref = topk_attention_reference(q, k, v, 5, sink=1, granularity=gran)
    assert rel_rms(out, ref) < TOL[torch.float32]
    do = torch.randn_like(out)
    g, rg = torch.autograd.grad(out, (q, k, v), do), torch.autograd.grad(ref, (q, k, v), do)
    for a, b in zip(g, rg):
        assert rel_rms(a, b) < GRAD_TOL[torch.float32]


# --- GPU hazards emulated on the interpreter: poisoned scratch, one persistent collect program
# (scratch reused across row blocks), the GPU tile, count / collect kernels that disagree, band
# stores that never land, a wrong count of the ties to keep at T. The band path must stay exact (falling back where it cannot verify).

HAZARD_MODES = {"poison": 0, "shifted_map": 3, "lost_stores": 4, "one_bin": 1, "far": 2,
                "wrong_tie_count": 5}


# each hazard with both tiles and both granularities (two of the four pairs: the interpreter
# takes 10-20 s a case)
@pytest.mark.parametrize("tile,group", [(16, True), (64, False)])
@pytest.mark.parametrize("mode", list(HAZARD_MODES))
def test_thresholds_exact_under_gpu_hazards(tile, mode, group):
    with (prefill_tuned(uniform_tiles(tile)),
          inject(poison=True, collect_programs=1, estimate_mode=HAZARD_MODES[mode])):
        _thresholds_exact_under_hazards(tile, mode, group)


def _thresholds_exact_under_hazards(tile, mode, group):
    B, Hq, Hkv, L, kk = 1, 4, 2, 2 * tile + 11, 6
    torch.manual_seed(L + tile + group)
    mk = lambda *s: torch.randint(-64, 65, s) / 64  # noqa: E731  (dyadic: exact reference)
    if mode == "wrong_tie_count":  # integer scores: ties at T
        mk = lambda *s: torch.randint(-2, 3, s).float()  # noqa: E731
    q, k = mk(B, Hq, L, 16).to(dev()), mk(B, Hkv, L, 16).to(dev())
    rT, rP = _ref_thresholds(q, k, kk, True, 1, 1, group)
    T, P, stat = pt.prefill_thresholds(q, k, topk=kk, causal=True, scale=0.25, sink=1, local=1, group=group,
                                       return_status=True)
    assert torch.equal(T.cpu().long() & 0xFFFFFFFF, rT) and torch.equal(P.cpu().long(), rP)
    if mode in ("poison", "far", "one_bin"):
        assert (stat == 1).sum() > 0  # the band path ran
    if mode == "lost_stores":
        assert (stat == 2).sum() > 0  # unverifiable rows went to the fallback
    if mode == "wrong_tie_count":  # the tie pass caught every wrong count: radix search instead
        assert (stat == 3).sum() == 0 and (stat == 2).sum() > 0


@pytest.mark.parametrize("mode", ["poison", "shifted_map", "lost_stores"])
def test_prefill_gpu_tile_exact_under_hazards(mode):
    """case0 of ``test_prefill_forward_and_grads`` on the GPU tile (BM = BN = 64) with hazards."""
    with (prefill_tuned(uniform_tiles(64), method="bcc"),
          inject(poison=True, collect_programs=1, estimate_mode=HAZARD_MODES[mode])):
        _gpu_tile_exact_under_hazards(mode)


def _gpu_tile_exact_under_hazards(mode):
    torch.manual_seed(37 * 37)
    q = torch.randn(1, 2, 37, 16, device=dev(), requires_grad=True)
    k = torch.randn(1, 1, 37, 16, device=dev(), requires_grad=True)
    v = torch.randn(1, 1, 37, 16, device=dev(), requires_grad=True)
    out, lse = topk_prefill(q, k, v, topk=5, return_lse=True)
    ref, rlse = topk_attention_reference(q, k, v, 5, return_lse=True)
    assert rel_rms(out, ref) < TOL[torch.float32]
    assert (lse - rlse).abs().max() < 1e-4
    do = torch.randn_like(out)
    g, rg = torch.autograd.grad(out, (q, k, v), do), torch.autograd.grad(ref, (q, k, v), do)
    for a, b in zip(g, rg):
        assert rel_rms(a, b) < GRAD_TOL[torch.float32]


@triton.jit
def _row_slots_kernel(F, SLOT, TOT, BM: tl.constexpr, BN: tl.constexpr):
    r = tl.arange(0, BM)[:, None] * BN + tl.arange(0, BN)[None, :]
    flag = tl.load(F + r) != 0
    slot, tot = pt._row_slots(flag, BN)
    tl.store(SLOT + r, slot)
    tl.store(TOT + tl.arange(0, BM), tot)


@pytest.mark.parametrize("BN", [16, 32, 64, 128])
@pytest.mark.parametrize("density", [0.03, 0.5, 1.0])
def test_row_slots_match_prefix_counts(BN, density):
    """The collect's slots (32-bit row masks and popc, several words per row for BN > 32) are
    the exclusive prefix counts of the flags along each row, the totals the row counts."""
    BM = 16
    g = torch.Generator().manual_seed(BN)
    flag = (torch.rand(BM, BN, generator=g) < density).to(torch.int32)
    flag[0] = 1  # a full row: bit 31 of every word is set
    flag[1] = 0
    flag = flag.to(dev())
    slot = torch.empty(BM, BN, dtype=torch.int32, device=dev())
    tot = torch.empty(BM, dtype=torch.int32, device=dev())
    _row_slots_kernel[(1,)](flag, slot, tot, BM=BM, BN=BN)
    assert torch.equal(slot, (torch.cumsum(flag, 1) - flag).to(torch.int32))
    assert torch.equal(tot, flag.sum(1).to(torch.int32))


# --- non-finite inputs: the reference's NaN / inf policy (tests/test_reliability.py has the
# single-group cases) with padding, sink / local, low precision and the band / radix paths

def _poison(q, k, v, case):
    q, k, v = q.clone(), k.clone(), v.clone()
    if case == "nan-query":  # kv_group: the other heads of the group keep the lowest positions
        q[1, 1, 5, 0] = float("nan")
    elif case == "mixed-inf-key":  # +inf / -inf scores by the sign of q[..., 0]
        k[0, 0, 11, 0] = float("inf")
    else:  # values: only the rows that select key 13 / 15 (or padding key 1) take them
        v[0, 0, 13, 1] = float("nan")
        v[0, 1, 15, 2], v[0, 1, 16, 2] = float("inf"), float("-inf")
        v[1, 0, 1, 1] = float("nan")  # hidden by the left padding of sequence 1
    return q, k, v


@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", ["nan-query", "mixed-inf-key", "values"])
def test_prefill_nonfinite_inputs_match_reference(case, dt):
    torch.manual_seed(11)
    q, k, v = (torch.randn(2, h, L, 16, device=dev()).to(dt) for h, L in ((4, 12), (2, 20), (2, 20)))
    q, k, v = _poison(q, k, v, case)
    mask = _pad_mask(2, 12, 20, [0, 3])
    for gran in ("query_head", "kv_group"):
        kw = dict(causal=False, sink=1, local=2, granularity=gran, attn_mask=mask,
                  return_lse=True)
        ref, rlse = topk_attention_reference(q, k, v, 4, **kw)
        out, lse = topk_attention(q, k, v, 4, backend="triton", **kw)
        assert not torch.isfinite(ref).all() and torch.isfinite(ref).any()
        assert torch.equal(out.isnan(), ref.isnan()) and torch.equal(out.isinf(), ref.isinf())
        fin = torch.isfinite(ref)
        assert rel_rms(out[fin], ref[fin]) < TOL[dt], gran
        torch.testing.assert_close(lse, rlse, equal_nan=True, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("cap", [None, 2])
def test_thresholds_on_poisoned_group_scores(cap):
    """kv_group scores summed with a NaN query, or +inf and -inf, are NaN: the search ranks them
    +inf (the band path and the radix fallback alike); a row of them keeps its lowest topk."""
    torch.manual_seed(5)
    q, k = torch.randn(1, 4, 40, 16, device=dev()), torch.randn(1, 2, 40, 16, device=dev())
    q[0, 1, 30, 2] = float("nan")  # KV head 0, row 30: every group score NaN
    k[0, 1, 6, 0] = float("inf")  # KV head 1: +inf, -inf or NaN group scores at key 6
    kw = dict(topk=5, causal=True, scale=0.25, group=True)
    with prefill_tuned(**({} if cap is None else {"cap": cap})):
        T, P, stat = pt.prefill_thresholds(q, k, return_status=True, **kw)
    T2, P2 = pt.prefill_thresholds(q, k, method="radix", **kw)
    assert (stat == 1).any() if cap is None else (stat == 2).any()
    assert torch.equal(T, T2) and torch.equal(P, P2)
    inf_key = torch.tensor(0xFF800000 - 2**32, dtype=torch.int32)  # key(+inf) as int32
    assert T[0, 30] == inf_key and P[0, 30] == 4  # positions 0..4
    s6 = q[0, 2:, 6:, 0] * float("inf")  # KV head 1's two heads' scores against key 6
    assert (s6[0] != s6[1]).any()  # some rows sum +inf and -inf there (a NaN group score)
