"""Exact per-row thresholds of the Top-k prefill (`prefill_thresholds`): for every query row
(or KV head with ``group``) the k-th largest candidate score, without materialising the n x n
scores. The attention kernels (`topkattn.ops.topk.triton_prefill`) then select by it.

Per selection row the search stores the threshold key T (the k-th largest candidate key
itself, key = ``f32_key(score)``, the uint32 whose order is the fp32 order) and the tie cutoff
position P: selected = key > T or (key == T and pos <= P); P = P_INF unless ties at T must be
cut (lowest positions win, as in the reference). Rows with at most ``topk`` candidates store
T = 0, P = P_INF (everything selected). Scores come from the helpers of
`topkattn.ops.topk.prefill_scores`, the same the attention kernels use.

Threshold search, bracket-count-collect (``prefill_thresholds``, three launches, exact):

1. ``_count_kernel`` (grid B*Hr x query blocks, longest causal blocks first). Estimate
   (``_estimate``): per row, the scores against a strided sample of key blocks (at least
   ``PrefillTuning.sample_blocks``, more for long rows) give a mean / std, a Gaussian guess of the
   k-th largest score, and sample counts in probe bins around that guess; interpolating them
   gives the estimate t and the local key density, which place 4*W-2 equal-width score bins
   (about ``band_frac * cap`` keys each, at most 0.25 std wide) around t. Count: one
   pass over the candidate keys maps each score to its bin, round(clamp(fma(s, a, b))) (monotone
   in the score, bit-identical wherever evaluated), and counts bins per row in int32 words of
   four 8-bit fields folded into 16-bit accumulators (no int64). The band is the bin of the
   k-th largest key; rows whose band holds at most ``PrefillTuning.cap`` keys go on, the others are
   flagged for the fallback.
2. ``_collect_kernel`` (persistent, ``collect_waves`` programs per SM): one more pass
   appends the band scores of each row, in position order, to the program's own scratch rows
   (offsets: a running row count plus exact int32 prefix sums (tl.cumsum) of the tile's band
   mask; no atomics) and counts, from its own scores, the band keys and the keys above the
   band; then per row (``_finalize``) the r-th largest band key, r = k - #keys above the band,
   by bisection over the band's key range in registers. The finalize verifies each row (band
   fits the scratch and holds the r-th key, every entry read back lies in the band's bin, the
   result has < r keys above and >= r at or above it) and flags any row that fails, and rows
   where ties at T must be cut by position, for the fallback: the count kernel and the
   estimate only steer the work; a mismatch between kernels costs time, never exactness.
3. ``_thresh_kernel`` (fallback, exact for any input): radix search on the key, 4 bits a pass
   (int32 words of 8-bit fields), at most 8 passes plus one for tie cutoffs / the canonical T,
   only in blocks holding flagged rows (the others exit at once). ``method="radix"`` runs it on
   every row (reference path; same T and P).

Scratch: 28 bytes per selection row plus grid x BM x CAP x 4 bytes (35 MB on an H100 with BM=64,
CAP=512), independent of the length.

Knobs: `topkattn.ops.tuning.PrefillTuning`; fault injection for tests:
`topkattn.ops.testing.FaultInjection` (poison, estimate_mode, collect_programs).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from topkattn.errors import InputError
from topkattn.ops import testing
from topkattn.ops.select import _interp  # noqa: F401  (interpreter shim)
from topkattn.ops.select.triton_select import f32_key
from topkattn.ops.topk.prefill_scores import (
    P_INF, _row_info, _sel_block, _sel_operands, _sel_scores, _tile_ranges, launch_options,
    prefill_tiles, seq_bounds,
)
from topkattn.ops.topk.triton_env import num_sms
from topkattn.ops.topk.triton_sparse import INTERPRET, mm  # noqa: F401
from topkattn.ops.tuning import current

_INTERP: tl.constexpr = tl.constexpr(INTERPRET)  # no inline assembly under the interpreter


@triton.jit
def _bin_idx(x, a, b, NMAX: tl.constexpr):
    """int32 bin (0 .. NMAX <= 63) of fp32 scores x under the per-row map a*x + b (a > 0, a, b
    broadcast against x): round(clamp(fma(x, a, b), 0, NMAX)), rounding by adding 1.5 * 2**23
    (the integer lands in the low mantissa bits; no float->int conversion). Monotone
    non-decreasing in x, and bit-identical wherever it is evaluated on the same inputs."""
    t = tl.minimum(tl.maximum(tl.fma(x, a, b), 0.0), NMAX)
    return (t + 12582912.0).to(tl.int32, bitcast=True) & 63


@triton.jit
def _zeros_tuple(BM: tl.constexpr, N: tl.constexpr):
    """Tuple of N int32 [BM] zeros."""
    t = ()
    for i in tl.static_range(N):
        t = t + (tl.zeros([BM], tl.int32),)
    return t


@triton.jit
def _acc_bins(acc, idx, W: tl.constexpr):
    """Add the per-row counts of the bin indices idx (int32 [BM, BN], values < 4W, BN <= 255) to
    acc (tuple of 2W int32 [BM] with 16-bit fields: acc[2w] holds bins 4w, 4w+2, acc[2w+1] holds
    bins 4w+1, 4w+3). Per word of four 8-bit fields: one select and one row sum per element."""
    one = 1 << ((idx & 3) * 8)
    wi = idx >> 2
    out = ()
    for w in tl.static_range(W):
        word = tl.sum(tl.where(wi == w, one, 0), 1)
        out = out + (acc[2 * w] + (word & 0x00FF00FF), acc[2 * w + 1] + ((word >> 8) & 0x00FF00FF))
    return out


@triton.jit
def _unpack(acc, BM: tl.constexpr, W: tl.constexpr, NS: tl.constexpr):
    """int32 [BM, NS] bin counts (NS >= 4W a power of 2; bins >= 4W are 0) from the 16-bit fields
    of acc (see ``_acc_bins``)."""
    col = tl.arange(0, NS)[None, :]
    out = tl.zeros([BM, NS], tl.int32)
    for i in tl.static_range(2 * W):
        for f in tl.static_range(2):
            out += tl.where(col == 4 * (i // 2) + (i % 2) + 2 * f,
                            ((acc[i] >> (16 * f)) & 0xFFFF)[:, None], 0)
    return out


@triton.jit
def _above_counts(cnt, NS: tl.constexpr):
    """From per-row bin counts cnt [BM, NS] (bin 0 ignored): A [BM, NS] with A[:, j] = count of
    bins >= j (j >= 1), and the total of bins >= 1 [BM]."""
    col = tl.arange(0, NS)[None, :]
    c = tl.where(col >= 1, cnt, 0)
    tot = tl.sum(c, 1)
    return tot[:, None] - tl.cumsum(c, 1) + c, tot


@triton.jit
def _pick(x, j, NS: tl.constexpr):
    """x[r, j[r]] for x [BM, NS] and per-row column j [BM] (0 outside 0 .. NS-1)."""
    col = tl.arange(0, NS)[None, :]
    return tl.sum(tl.where(col == j[:, None], x, 0), 1)


@triton.jit
def _sample_tile(i, ns, nblk, n_lo, q, qg, kbase, skn, sqh, sqm, m, d, Lq, Lk, G, scale, c_lo,
                 c_hi, GROUP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                 IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """Sample tile i of ns spread evenly over the nblk key tiles from n_lo: scores [BM, BN],
    candidate mask [BM, BN] and the candidate count per row [BM] (fp32)."""
    start = n_lo + ((2 * i + 1) * nblk // (2 * ns)) * BN
    s = _sel_scores(q, qg, kbase, start, skn, sqh, sqm, m, d, Lq, Lk, G, scale, GROUP, BM, BN,
                    IEEE, UPCAST)
    pos = start + tl.arange(0, BN)
    v = (pos[None, :] >= c_lo[:, None]) & (pos[None, :] < c_hi[:, None])
    c = tl.minimum(tl.maximum(tl.minimum(c_hi, start + BN) - tl.maximum(c_lo, start), 0),
                   BN).to(tl.float32)
    return s, v, c


@triton.jit
def _estimate(q, qg, kbase, skn, sqh, sqm, m, d, Lq, Lk, G, scale, n_lo, n_end, c_lo, c_hi, topk,
              delta, ssig, GROUP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
              IEEE: tl.constexpr, UPCAST: tl.constexpr, NSAMP: tl.constexpr, PW: tl.constexpr,
              SP: tl.constexpr, NBM: tl.constexpr, ESTM: tl.constexpr):
    """Per-row count-bin map (a, b) [BM] fp32: NBM bins of about ``delta`` keys each (at the
    estimated key density) centred on the estimated k-th largest candidate score.

    Samples key blocks spread evenly over [n_lo, n_end): two give the per-row mean / std of the
    candidate scores and from them a Gaussian guess of the (1 - k/n)-quantile; then
    max(NSAMP, enough for a rank error of about ``ssig`` keys at the block's longest row) blocks
    are counted in 4*PW-2 probe bins (0.3 std wide) around the guess. The k-th largest score is
    interpolated between the probe edges whose scaled sample counts bracket k (extrapolated with
    the Gaussian density outside them) and the key density taken over the neighbouring edges.
    Bins are at most 0.25 std wide (in the tails the local density would make them span the
    bulk). Everything downstream is verified: a poor estimate costs time, not exactness.
    """
    nblk = (n_end - n_lo + BN - 1) // BN
    n_c = (c_hi - c_lo).to(tl.float32)
    ns1 = tl.minimum(nblk, 2)
    cnt = tl.zeros([BM], tl.float32)
    s1 = tl.zeros([BM], tl.float32)
    s2 = tl.zeros([BM], tl.float32)
    for i in range(0, ns1):
        s, v, c = _sample_tile(i, ns1, nblk, n_lo, q, qg, kbase, skn, sqh, sqm, m, d, Lq, Lk, G,
                               scale, c_lo, c_hi, GROUP, BM, BN, IEEE, UPCAST)
        sv = tl.where(v, s, 0.0)
        s1 += tl.sum(sv, 1)
        s2 += tl.sum(sv * sv, 1)
        cnt += c
    mean = s1 / tl.maximum(cnt, 1.0)
    sigma = tl.sqrt(tl.maximum(s2 / tl.maximum(cnt, 1.0) - mean * mean, 0.0)
                    * (cnt / tl.maximum(cnt - 1.0, 1.0)))
    nn = tl.maximum(n_c, 1.0)
    rho = tl.minimum(tl.maximum(topk / nn, 0.5 / nn), 1.0 - 0.5 / nn)
    # Gaussian guess z of the (1 - rho)-quantile (Tukey-lambda approximation, |error| < 0.05)
    zg = 4.91 * (tl.exp(0.14 * tl.log(1.0 - rho)) - tl.exp(0.14 * tl.log(rho)))
    sig = tl.maximum(sigma, 1e-30)
    # sample size for a rank error ~ ssig at the longest row: n_s = n^2 rho (1 - rho) / ssig^2
    nmax = tl.max(n_c, 0)
    rmax = tl.minimum(topk / tl.maximum(nmax, 1.0), 0.5)
    need = tl.minimum(nmax * nmax * rmax * (1.0 - rmax) / (ssig * ssig) / BN, 1e9)
    nsmp = tl.minimum(tl.maximum(need.to(tl.int32) + 1, NSAMP), nblk)
    NBP: tl.constexpr = 4 * PW - 2
    wp = 0.3 * sig
    ap = 1.0 / wp
    bp = NBP / 2 + 0.5 - ap * (mean + sig * zg)
    acc = _zeros_tuple(BM, 2 * PW)
    cnt = tl.zeros([BM], tl.float32)
    for i in range(0, nsmp):
        s, v, c = _sample_tile(i, nsmp, nblk, n_lo, q, qg, kbase, skn, sqh, sqm, m, d, Lq, Lk, G,
                               scale, c_lo, c_hi, GROUP, BM, BN, IEEE, UPCAST)
        idx = tl.where(v, _bin_idx(s, ap[:, None], bp[:, None], NBP + 1), 0)
        acc = _acc_bins(acc, idx, PW)
        cnt += c
    A, _tot = _above_counts(_unpack(acc, BM, PW, SP), SP)
    C = A.to(tl.float32) * (n_c / tl.maximum(cnt, 1.0))[:, None]  # population estimate >= edge
    col = tl.arange(0, SP)[None, :]
    jp = tl.max(tl.where((col >= 1) & (col <= NBP + 1) & (C >= topk), col, 0), 1)
    dg = tl.maximum(n_c * 0.3989422804 * tl.exp(-0.5 * zg * zg) / sig, 1e-30)  # Gaussian density
    j1 = tl.minimum(tl.maximum(jp - 1, 1), NBP + 1)
    j2 = tl.minimum(tl.maximum(jp + 2, 1), NBP + 1)
    dens = (_pick(C, j1, SP) - _pick(C, j2, SP)) / (tl.maximum(j2 - j1, 1).to(tl.float32) * wp)
    dens = tl.where(dens > 0, dens, dg)
    ca = _pick(C, jp, SP)
    cb = _pick(C, jp + 1, SP)
    edge = (jp.to(tl.float32) - 0.5 - bp) * wp  # lower edge of probe bin jp
    t_in = edge + (ca - topk) / tl.maximum(ca - cb, 1e-6) * wp
    t_lo = (0.5 - bp) * wp - (topk - _pick(C, 1 + jp * 0, SP)) / dg
    t_hi = edge + (ca - topk) / dg
    t = tl.where(jp == 0, t_lo, tl.where(jp == NBP + 1, t_hi, t_in))
    if ESTM == 2:
        t = t + 8.0 * sig + 1.0
    ok = (cnt >= 2.0) & (sigma > 1e-20)
    a = tl.where(ok, tl.minimum(tl.maximum(dens / delta, 4.0 / sig), 1e20), 0.0)  # <= 0.25 std
    t = tl.where(ok, tl.minimum(tl.maximum(t, mean - 64.0 * sig), mean + 64.0 * sig), 0.0)
    b = (NBM + 1) / 2 - a * t
    ok = ok & (a > 1e-30) & (tl.abs(b) < 1e30)
    if ESTM == 1:  # tests: one bin for everything (band = all candidates)
        ok = ok & False
    return tl.where(ok, a, 1e-30), tl.where(ok, b, 1.0)


@triton.jit
def _count_seg(cnt, q, qg, kbase, skn, sqh, sqm, m, d, Lq, Lk, G, scale, lo, hi, a, b, c_lo, c_hi,
               MASKED: tl.constexpr, GROUP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
               IEEE: tl.constexpr, UPCAST: tl.constexpr, W: tl.constexpr, SW: tl.constexpr,
               FL: tl.constexpr):
    """Add to cnt [BM, SW] the per-row bin counts of the candidate keys in tiles lo, lo+BN, ...
    < hi (MASKED: check the candidate range per entry; else every entry is a candidate).
    16-bit accumulators are flushed every FL tiles (FL * BN <= 65535)."""
    for sb in range(lo, hi, FL * BN):
        acc = _zeros_tuple(BM, 2 * W)
        for start in range(sb, tl.minimum(sb + FL * BN, hi), BN):
            s = _sel_scores(q, qg, kbase, start, skn, sqh, sqm, m, d, Lq, Lk, G, scale, GROUP, BM,
                            BN, IEEE, UPCAST)
            idx = _bin_idx(s, a[:, None], b[:, None], 4 * W - 1)
            if MASKED:
                pos = start + tl.arange(0, BN)
                idx = tl.where((pos[None, :] >= c_lo[:, None]) & (pos[None, :] < c_hi[:, None]),
                               idx, 0)
            acc = _acc_bins(acc, idx, W)
        cnt += _unpack(acc, BM, W, SW)
    return cnt


@triton.jit
def _count_kernel(Q, K, ST, EN, TB, PB, STAT, EA, EB, JS, CH, NBD, sqb, sqh, sqm, skb, skh, skn,
                  Hr, G, Lq, Lk, topk, sink, local, scale, delta, ssig, CAUSAL: tl.constexpr,
                  GROUP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr,
                  IEEE: tl.constexpr, UPCAST: tl.constexpr, CAP: tl.constexpr,
                  NSAMP: tl.constexpr, PW: tl.constexpr, SP: tl.constexpr, W: tl.constexpr,
                  SW: tl.constexpr, FL: tl.constexpr, ESTM: tl.constexpr):
    """Estimate + count (grid: B*Hr, query blocks; one row per (b, query head), or per (b, KV
    head) with GROUP). Per row [B*Hr, Lq]: STAT 0 = at most topk candidates (T = 0, P = P_INF
    stored here), 1 = band of NBD <= CAP keys in bin JS of the map (EA, EB), CH keys above it,
    2 = band too large (fallback)."""
    bh, pid_m, b, h, m, d, vs, vis_end, c_lo, c_hi = _sel_block(ST, EN, Hr, Lq, Lk, sink, local,
                                                                 CAUSAL, BM, D)
    active = (c_hi - c_lo) > topk
    rm = m < Lq
    row = bh.to(tl.int64) * Lq + m
    stat = tl.zeros([BM], tl.int32)
    if tl.sum(active.to(tl.int32), 0) > 0:
        q, qg, kbase = _sel_operands(Q, K, b, h, m, d, sqb, sqh, sqm, skb, skh, G, Lq, GROUP,
                                     BM, D)
        n_lo = vs // BN * BN
        n_end = tl.max(c_hi, 0)
        NBM: tl.constexpr = 4 * W - 2
        a, bb = _estimate(q, qg, kbase, skn, sqh, sqm, m, d, Lq, Lk, G, scale, n_lo, n_end, c_lo,
                          c_hi, topk, delta, ssig, GROUP, BM, BN, IEEE, UPCAST, NSAMP, PW, SP,
                          NBM, ESTM)
        e0, e1 = _tile_ranges(active, c_lo, c_hi, n_lo, n_end, BN)
        cnt = tl.zeros([BM, SW], tl.int32)
        cnt = _count_seg(cnt, q, qg, kbase, skn, sqh, sqm, m, d, Lq, Lk, G, scale, n_lo, e0, a, bb,
                         c_lo, c_hi, True, GROUP, BM, BN, IEEE, UPCAST, W, SW, FL)
        cnt = _count_seg(cnt, q, qg, kbase, skn, sqh, sqm, m, d, Lq, Lk, G, scale, e0, e1, a, bb,
                         c_lo, c_hi, False, GROUP, BM, BN, IEEE, UPCAST, W, SW, FL)
        cnt = _count_seg(cnt, q, qg, kbase, skn, sqh, sqm, m, d, Lq, Lk, G, scale, e1, n_end, a,
                         bb, c_lo, c_hi, True, GROUP, BM, BN, IEEE, UPCAST, W, SW, FL)
        A, tot = _above_counts(cnt, SW)
        col = tl.arange(0, SW)[None, :]
        js = tl.max(tl.where((col >= 1) & (A >= topk), col, 0), 1)  # band bin (0: below bin 1)
        ch = _pick(A, js + 1, SW)  # keys above the band (0 above the top bin)
        nb = tl.where(js >= 1, _pick(cnt, js, SW), (c_hi - c_lo) - tot)
        stat = tl.where(active, tl.where(nb <= CAP, 1, 2), 0)
        wm = rm & active
        tl.store(EA + row, a, mask=wm)
        if ESTM == 3:  # tests: collect with another map than the one counted here
            tl.store(EB + row, bb + 0.5, mask=wm)
        else:
            tl.store(EB + row, bb, mask=wm)
        tl.store(JS + row, js, mask=wm)
        tl.store(CH + row, ch, mask=wm)
        tl.store(NBD + row, nb, mask=wm)
    tl.store(STAT + row, stat, mask=rm)
    tl.store(TB + row, tl.zeros([BM], tl.int32), mask=rm & ~active)
    tl.store(PB + row, tl.full([BM], P_INF, tl.int32), mask=rm & ~active)


@triton.jit
def _popc(x):
    """Set bits of each int32 of x: popc.b32, or a SWAR count under the interpreter (which runs
    no inline assembly)."""
    if _INTERP:
        u = x.to(tl.uint32, bitcast=True)
        u = u - ((u >> 1) & 0x55555555)
        u = (u & 0x33333333) + ((u >> 2) & 0x33333333)
        u = (u + (u >> 4)) & 0x0F0F0F0F
        return ((u * 0x01010101) >> 24).to(tl.int32)
    else:
        return tl.inline_asm_elementwise("popc.b32 $0, $1;", "=r,r", [x], dtype=tl.int32,
                                         is_pure=True, pack=1)


@triton.jit
def _row_slots(flag, BN: tl.constexpr):
    """For bool flag [BM, BN]: int32 [BM, BN] number of flagged entries before each entry in its
    row, and the flagged count [BM] of each row. Each row's flags become 32-bit masks (a row sum
    of distinct bits), the slot the popc of the mask bits below the entry: a few instructions
    per entry where a prefix sum (tl.cumsum) moved the tile through shared memory."""
    col = tl.arange(0, BN)
    bit = 1 << (col & 31)
    below = (bit - 1)[None, :]
    word = (col >> 5)[None, :]
    v = tl.where(flag, bit[None, :], 0)
    NWD: tl.constexpr = (BN + 31) // 32
    mw = tl.sum(tl.where(word == 0, v, 0), 1)
    sel = tl.zeros(flag.shape, tl.int32) + mw[:, None]
    base = tl.zeros(flag.shape, tl.int32)
    tot = _popc(mw)
    for w in tl.static_range(1, NWD):
        mw = tl.sum(tl.where(word == w, v, 0), 1)
        sel = tl.where(word == w, mw[:, None], sel)
        base = tl.where(word == w, tot[:, None], base)
        tot += _popc(mw)
    return base + _popc(sel & below), tot


@triton.jit
def _scatter(ptr, val, mask):
    """tl.store(ptr, val, mask) of fp32 values to scattered addresses, issued in the values' own
    register layout: one predicated st.global per entry. (tl.store would first move the
    pointers, values and mask of an mma-layout tile through shared memory to a blocked layout.)
    Plain tl.store under the interpreter."""
    if _INTERP:
        tl.store(ptr, val, mask=mask)
    else:
        tl.inline_asm_elementwise(
            "{ .reg .pred p; setp.ne.b32 p, $3, 0; @p st.global.b32 [$1], $2; mov.b32 $0, 0; }",
            "=r,l,r,r", [ptr.to(tl.int64, bitcast=True), val.to(tl.int32, bitcast=True),
                         mask.to(tl.int32)], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _collect_seg(run, abv, ck, BS, brow, q, qg, kbase, skn, sqh, sqm, m, d, Lq, Lk, G, scale,
                 lo, hi, a, b, js, use, c_lo, c_hi, MASKED: tl.constexpr, GROUP: tl.constexpr,
                 BM: tl.constexpr, BN: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
                 NMAX: tl.constexpr, CAP: tl.constexpr, ESTM: tl.constexpr):
    """Append the band scores (bin == js) of tiles lo, lo+BN, ... < hi to the rows' scratch rows
    (BS + brow, brow [BM] int32 row offsets), in position order after the run [BM] entries
    already there; returns the new run (band keys seen, also past CAP), abv (candidates in
    bins above js), both counted here from this kernel's own scores, so that the finalize does
    not depend on the count kernel having seen bit-identical scores, and ck (uint32 wrapping
    sum of the band keys, to check what the finalize reads back). The offsets within a tile
    are the band entries before them in the row (``_row_slots``)."""
    for start in range(lo, hi, BN):
        s = _sel_scores(q, qg, kbase, start, skn, sqh, sqm, m, d, Lq, Lk, G, scale, GROUP, BM, BN,
                        IEEE, UPCAST)
        pos = start + tl.arange(0, BN)
        bi = _bin_idx(s, a[:, None], b[:, None], NMAX)
        cand = use[:, None]
        if MASKED:
            cand = cand & (pos[None, :] >= c_lo[:, None]) & (pos[None, :] < c_hi[:, None])
        band = (bi == js[:, None]) & cand
        abv += tl.sum(((bi > js[:, None]) & cand).to(tl.int32), 1)
        slot, nband = _row_slots(band, BN)
        off = run[:, None] + slot
        ok = band & (off < CAP)
        if ESTM == 4:  # tests: lose every other band store
            ok = ok & ((pos[None, :] % 2) == 0)
        _scatter(BS + (brow[:, None] + off), s, ok)
        run += nband
        ck += tl.sum(tl.where(band, s.to(tl.uint32, bitcast=True), 0), 1)
    return run, abv, ck


@triton.jit
def _finalize(BS, TB, PB, STAT, EA, EB, JS, CH, NBD, CK, row0, m0, bufoff, Lq, topk,
              RF: tl.constexpr, CAP: tl.constexpr, NMAX: tl.constexpr, ESTM: tl.constexpr):
    """T of RF rows (row0 + r, query positions m0 + r, scratch rows bufoff + r) in band mode:
    the r-th largest key of the band (r = topk - keys above the band), by bisection over
    [min, max] of the band keys held in registers as [RF, 128] chunks (a warp owns whole rows,
    so the row sums need no shared memory; chunks past the longest band are skipped), stopping
    once the bracket holds one entry (about log2(band) steps; ties: one key value).
    P = P_INF when every tie at T is selected; otherwise (STAT = 3) T and the number of ties to
    keep go to the fallback kernel, which cuts the ties by position in one pass.

    Verified per row (any failure hands the row to the fallback, so a fault costs time, never
    exactness): the band counted by the collect (NBD) fits the scratch and holds the r-th key
    (1 <= r <= NBD, r from the collect's own count of keys above the band, CH), every entry
    read back is a number in bin JS of the row's map, and the keys read back sum (uint32,
    wrapping) to the collect's CK (catches unwritten / stale / racing scratch)."""
    CW: tl.constexpr = 128 if CAP > 128 else CAP
    NCH: tl.constexpr = CAP // CW
    rr = tl.arange(0, RF)
    m = m0 + rr
    rm = m < Lq
    row = row0 + rr
    use0 = (tl.load(STAT + row, mask=rm, other=0) == 1) & rm
    nb = tl.load(NBD + row, mask=use0, other=0)
    r = topk - tl.load(CH + row, mask=use0, other=0)
    use = use0 & (nb >= 0) & (nb <= CAP) & (r >= 1) & (r <= nb)
    nb = tl.where(use, nb, 0)
    ea = tl.load(EA + row, mask=use, other=1.0)
    eb = tl.load(EB + row, mask=use, other=0.0)
    js = tl.load(JS + row, mask=use, other=-1)
    ck = tl.load(CK + row, mask=use, other=0).to(tl.uint32, bitcast=True)
    nbmax = tl.max(nb, 0)
    keys = ()
    bad = tl.zeros([RF], tl.int32)
    lo = tl.full([RF], 0xFFFFFFFF, tl.uint32)
    hi = tl.zeros([RF], tl.uint32)
    for c in tl.static_range(NCH):
        j = c * CW + tl.arange(0, CW)[None, :]
        ent = use[:, None] & (j < nb[:, None])
        v = tl.load(BS + (bufoff + rr)[:, None] * CAP + j, mask=ent, other=0.0)
        okv = (v == v) & (_bin_idx(tl.where(v == v, v, 0.0), ea[:, None], eb[:, None], NMAX)
                          == js[:, None])
        bad += tl.sum((ent & ~okv).to(tl.int32), 1)
        kc = tl.where(ent, f32_key(v), 0)
        lo = tl.minimum(lo, tl.min(tl.where(ent, kc, 0xFFFFFFFF), 1))
        hi = tl.maximum(hi, tl.max(kc, 1))
        keys = keys + (kc,)
        ck -= tl.sum(tl.where(ent, v.to(tl.uint32, bitcast=True), 0), 1)
    use = use & (bad == 0) & (ck == 0)
    lo = tl.where(use, lo, 0)
    hi = tl.where(use, hi + 1, 1)
    n_lo = nb  # count(key >= lo) >= r > count(key >= hi) = n_hi
    n_hi = nb * 0
    # bisect until [lo, hi) holds a single key value or a single entry (then it is the r-th)
    while tl.max(tl.where((hi - lo > 1) & (n_lo - n_hi > 1), 1, 0), 0) > 0:
        mid = lo + ((hi - lo) >> 1)
        cnt = tl.zeros([RF], tl.int32)
        for c in tl.static_range(NCH):
            if nbmax > c * CW:
                cnt += tl.sum((keys[c] >= mid[:, None]).to(tl.int32), 1)
        go = (hi - lo > 1) & (n_lo - n_hi > 1)
        ge = cnt >= r
        lo = tl.where(go & ge, mid, lo)
        n_lo = tl.where(go & ge, cnt, n_lo)
        hi = tl.where(go & ~ge, mid, hi)
        n_hi = tl.where(go & ~ge, cnt, n_hi)
    T = tl.zeros([RF], tl.uint32)
    nge = tl.zeros([RF], tl.int32)
    for c in tl.static_range(NCH):
        kc = keys[c]
        T = tl.maximum(T, tl.max(tl.where(kc < hi[:, None], kc, 0), 1))  # the r-th key
    ngt = tl.zeros([RF], tl.int32)
    for c in tl.static_range(NCH):
        ent = use[:, None] & ((c * CW + tl.arange(0, CW)[None, :]) < nb[:, None])
        nge += tl.sum((ent & (keys[c] >= T[:, None])).to(tl.int32), 1)
        ngt += tl.sum((ent & (keys[c] > T[:, None])).to(tl.int32), 1)
    # T is the r-th largest band key: fewer than r keys above it, at least r at or above it
    use = use & (ngt < r) & (nge >= r)
    cut = nge > r  # more keys >= T than needed: ties at T to cut by position
    done = use & ~cut
    tl.store(TB + row, T.to(tl.int32, bitcast=True), mask=use)
    tl.store(PB + row, tl.full([RF], P_INF, tl.int32), mask=done)
    # tie rows (STAT 3): T is known; the fallback kernel only cuts the ties, in one pass, keeping
    # the first ``r - ngt`` of the ``nge - ngt`` keys equal to T (NBD, JS)
    keep = r - ngt
    if ESTM == 5:  # tests: a wrong tie count, which that pass must catch
        keep += 1
    tl.store(NBD + row, keep, mask=use & cut)
    tl.store(JS + row, nge - ngt, mask=use & cut)
    tl.store(STAT + row, tl.where(use & cut, 3, 2), mask=use0 & ~done)


@triton.jit
def _collect_kernel(Q, K, ST, EN, TB, PB, STAT, EA, EB, JS, CH, NBD, CK, BS, sqb, sqh, sqm, skb,
                    skh, skn, Hr, G, Lq, Lk, topk, sink, local, scale, n_rb, n_tiles,
                    CAUSAL: tl.constexpr, GROUP: tl.constexpr, BM: tl.constexpr,
                    BN: tl.constexpr, D: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
                    NMAX: tl.constexpr, CAP: tl.constexpr, RF: tl.constexpr,
                    ESTM: tl.constexpr):
    """Collect + finalize (persistent grid; program p owns scratch rows [p*BM, (p+1)*BM) of
    BS [grid*BM, CAP] fp32 and takes row blocks p, p + grid, ..., longest causal blocks first).
    The collect overwrites NBD / CH of its band rows with its own counts (band keys, keys above
    the band) and stores the band's key checksum CK, which the finalize verifies."""
    pid = tl.program_id(0)
    bufoff = pid * BM
    nbh = n_tiles // n_rb
    d = tl.arange(0, D)
    for t in range(pid, n_tiles, tl.num_programs(0)):
        bh = t % nbh
        pid_m = n_rb - 1 - t // nbh
        b = bh // Hr
        h = bh % Hr
        m = pid_m * BM + tl.arange(0, BM)
        rm = m < Lq
        row = bh.to(tl.int64) * Lq + m
        use = (tl.load(STAT + row, mask=rm, other=0) == 1) & rm
        if tl.sum(use.to(tl.int32), 0) > 0:
            vs = tl.load(ST + b)
            ve = tl.load(EN + b)
            vis_end, c_lo, c_hi = _row_info(m, Lq, Lk, sink, local, vs, ve, CAUSAL)
            q, qg, kbase = _sel_operands(Q, K, b, h, m, d, sqb, sqh, sqm, skb, skh, G, Lq, GROUP,
                                         BM, D)
            a = tl.load(EA + row, mask=use, other=1.0)
            bb = tl.load(EB + row, mask=use, other=0.0)
            js = tl.load(JS + row, mask=use, other=-1)
            n_lo = vs // BN * BN
            n_end = tl.max(tl.where(use, c_hi, 0), 0)
            e0, e1 = _tile_ranges(use, c_lo, c_hi, n_lo, n_end, BN)
            brow = (bufoff + tl.arange(0, BM)) * CAP
            run = tl.zeros([BM], tl.int32)
            abv = tl.zeros([BM], tl.int32)
            ck = tl.zeros([BM], tl.uint32)
            run, abv, ck = _collect_seg(run, abv, ck, BS, brow, q, qg, kbase, skn, sqh, sqm, m,
                                        d, Lq, Lk, G, scale, n_lo, e0, a, bb, js, use, c_lo,
                                        c_hi, True, GROUP, BM, BN, IEEE, UPCAST, NMAX, CAP,
                                        ESTM)
            run, abv, ck = _collect_seg(run, abv, ck, BS, brow, q, qg, kbase, skn, sqh, sqm, m,
                                        d, Lq, Lk, G, scale, e0, e1, a, bb, js, use, c_lo, c_hi,
                                        False, GROUP, BM, BN, IEEE, UPCAST, NMAX, CAP, ESTM)
            run, abv, ck = _collect_seg(run, abv, ck, BS, brow, q, qg, kbase, skn, sqh, sqm, m,
                                        d, Lq, Lk, G, scale, e1, n_end, a, bb, js, use, c_lo,
                                        c_hi, True, GROUP, BM, BN, IEEE, UPCAST, NMAX, CAP,
                                        ESTM)
            tl.store(NBD + row, run, mask=use)
            tl.store(CH + row, abv, mask=use)
            tl.store(CK + row, ck.to(tl.int32, bitcast=True), mask=use)
            tl.debug_barrier()  # scratch / counts written by other threads of this program
            for c in range(0, BM // RF):
                _finalize(BS, TB, PB, STAT, EA, EB, JS, CH, NBD, CK,
                          bh.to(tl.int64) * Lq + pid_m * BM + c * RF, pid_m * BM + c * RF,
                          bufoff + c * RF, Lq, topk, RF, CAP, NMAX, ESTM)
            tl.debug_barrier()  # before the next row block overwrites the scratch


@triton.jit
def _thresh_kernel(Q, K, TB, PB, ST, EN, STAT, JS, NBD, sqb, sqh, sqm, skb, skh, skn, Hr, G, Lq,
                   Lk, topk,
                   sink, local, scale, CAUSAL: tl.constexpr, GROUP: tl.constexpr,
                   BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr, IEEE: tl.constexpr,
                   UPCAST: tl.constexpr, FLAGGED: tl.constexpr):
    """Exact radix search (grid: B*Hr, query blocks): the k-th largest candidate key, 4 bits a
    pass (16-bin histograms per row from int32 words of four 8-bit fields), at most 8 passes (a
    block stops once every row's bin is exactly the rest it needs); then at most one pass that
    turns an early-stopped prefix into the smallest key of its bin (canonical T: the k-th largest
    key itself) and finds tie cutoffs. FLAGGED: only rows with STAT 2 or 3 (others untouched;
    blocks without such rows exit at once); else every row, inactive rows storing T = 0,
    P = P_INF. STAT 3 rows (T known, JS ties at T of which the first NBD are kept) first take one
    pass that cuts the ties and checks T (exactly topk - NBD candidates above it, JS equal to it);
    a row that fails the check takes the radix search like STAT 2."""
    bh, pid_m, b, h, m, d, vs, vis_end, c_lo, c_hi = _sel_block(ST, EN, Hr, Lq, Lk, sink, local,
                                                                 CAUSAL, BM, D)
    rm = m < Lq
    row = bh.to(tl.int64) * Lq + m
    active = (c_hi - c_lo) > topk
    if FLAGGED:
        stat = tl.load(STAT + row, mask=rm, other=0)
        sel = active & ((stat == 2) | (stat == 3))
        cut3 = sel & (stat == 3)
    else:
        sel = active
        cut3 = sel & False
    want = tl.zeros([BM], tl.uint32)
    P = tl.full([BM], P_INF, tl.int32)
    if tl.sum(sel.to(tl.int32), 0) > 0:
        q, qg, kbase = _sel_operands(Q, K, b, h, m, d, sqb, sqh, sqm, skb, skh, G, Lq, GROUP,
                                     BM, D)
        n_end = tl.max(tl.where(sel, c_hi, 0), 0)
        n_lo = vs // BN * BN
        rem = tl.where(sel, topk, 0)
        nd = rem
        done = ~sel
        if tl.sum(cut3.to(tl.int32), 0) > 0:  # STAT 3 rows: one pass, T checked
            Tt = tl.load(TB + row, mask=cut3, other=0).to(tl.uint32, bitcast=True)
            keep = tl.load(NBD + row, mask=cut3, other=0)
            nties = tl.load(JS + row, mask=cut3, other=0)
            gt = tl.zeros([BM], tl.int32)
            seen = tl.zeros([BM], tl.int32)
            Pt = tl.full([BM], P_INF, tl.int32)
            for start in range(n_lo, n_end, BN):
                s = _sel_scores(q, qg, kbase, start, skn, sqh, sqm, m, d, Lq, Lk, G, scale, GROUP,
                                BM, BN, IEEE, UPCAST)
                pos = start + tl.arange(0, BN)
                key = f32_key(s)
                cand = cut3[:, None] & (pos[None, :] >= c_lo[:, None]) & (pos[None, :] < c_hi[:, None])
                gt += tl.sum((cand & (key > Tt[:, None])).to(tl.int32), 1)
                eq = (cand & (key == Tt[:, None])).to(tl.int32)
                c = seen[:, None] + tl.cumsum(eq, 1)
                Pt = tl.minimum(Pt, tl.min(tl.where((eq > 0) & (c == keep[:, None]), pos[None, :],
                                                    P_INF), 1))
                seen += tl.sum(eq, 1)
            ok = cut3 & (keep >= 1) & (keep < nties) & (gt + keep == topk) & (seen == nties)
            want = tl.where(ok, Tt, want)
            P = tl.where(ok, Pt, P)
            nd = tl.where(ok, 0, nd)
            done = done | ok
            tl.store(STAT + row, tl.full([BM], 2, tl.int32), mask=rm & cut3 & ~ok)
        early = rem < 0  # done with a bin prefix only: T = smallest key of the bin (final pass)
        esh = tl.zeros([BM], tl.int32)
        f = tl.arange(0, 16)
        for it in tl.static_range(8):
            SHIFT = 28 - 4 * it
            if tl.sum((~done).to(tl.int32), 0) > 0:
                h16 = tl.zeros([BM, 16], tl.int32)
                for start in range(n_lo, n_end, BN):
                    s = _sel_scores(q, qg, kbase, start, skn, sqh, sqm, m, d, Lq, Lk, G, scale,
                                    GROUP, BM, BN, IEEE, UPCAST)
                    pos = start + tl.arange(0, BN)
                    key = f32_key(s)
                    match = (pos[None, :] >= c_lo[:, None]) & (pos[None, :] < c_hi[:, None])
                    if SHIFT < 28:
                        match = match & ((key >> (SHIFT + 4)) == (want >> (SHIFT + 4))[:, None])
                    dg = ((key >> SHIFT) & 15).to(tl.int32)
                    one = tl.where(match, 1 << ((dg & 3) * 8), 0)
                    for w in tl.static_range(4):
                        word = tl.sum(tl.where((dg >> 2) == w, one, 0), 1)
                        h16 += tl.where((f[None, :] >> 2) == w,
                                        (word[:, None] >> (8 * (f & 3))[None, :]) & 255, 0)
                cum = tl.cumsum(h16, 1)
                tot = tl.sum(h16, 1)
                ge = tot[:, None] - cum + h16
                dsel = tl.max(tl.where(ge >= rem[:, None], f[None, :], -1), 1)
                above = tl.sum(tl.where(f[None, :] == dsel[:, None], ge - h16, 0), 1)
                cnt = tl.sum(tl.where(f[None, :] == dsel[:, None], h16, 0), 1)
                upd = ~done
                want = tl.where(upd, want | (dsel.to(tl.uint32) << SHIFT), want)
                rem = tl.where(upd, rem - above, rem)
                nd = tl.where(upd, cnt, nd)
                fin = upd & (cnt == rem)
                if SHIFT > 0:
                    early = early | fin
                    esh = tl.where(fin, SHIFT, esh)
                done = done | fin
        # ties at T that must be cut: the position of the rem-th tie; early rows: smallest key
        need_cut = sel & (nd > rem)
        if tl.sum((need_cut | early).to(tl.int32), 0) > 0:
            seen = tl.zeros([BM], tl.int32)
            kmin = tl.full([BM], 0xFFFFFFFF, tl.uint32)
            ush = esh.to(tl.uint32)
            for start in range(n_lo, n_end, BN):
                s = _sel_scores(q, qg, kbase, start, skn, sqh, sqm, m, d, Lq, Lk, G, scale, GROUP,
                                BM, BN, IEEE, UPCAST)
                pos = start + tl.arange(0, BN)
                key = f32_key(s)
                cand = (pos[None, :] >= c_lo[:, None]) & (pos[None, :] < c_hi[:, None])
                inbin = cand & early[:, None] & ((key >> ush[:, None]) == (want >> ush)[:, None])
                kmin = tl.minimum(kmin, tl.min(tl.where(inbin, key, 0xFFFFFFFF), 1))
                tie = (cand & need_cut[:, None] & (key == want[:, None])).to(tl.int32)
                c = seen[:, None] + tl.cumsum(tie, 1)
                hit = tl.min(tl.where((tie > 0) & (c == rem[:, None]), pos[None, :], P_INF), 1)
                P = tl.minimum(P, hit)
                seen += tl.sum(tie, 1)
            want = tl.where(early, kmin, want)
    if FLAGGED:
        wm = rm & sel
    else:
        wm = rm
    tl.store(TB + row, want.to(tl.int32, bitcast=True), mask=wm)
    tl.store(PB + row, P, mask=wm)


def prefill_thresholds(q, k, *, topk, causal, scale, sink=0, local=0, group=False, starts=None,
                       ends=None, method="bcc", return_status=False):
    """Per selection row, threshold key T (int32 bit pattern of the uint32 key: the k-th largest
    candidate key) and tie cutoff P, both [B*Hq, Lq] ([B*Hkv, Lq] with ``group``: one set per KV
    head from the summed group scores). ``method``: "bcc" (estimate, count, collect; radix
    fallback for the rows whose band exceeds ``PrefillTuning.cap``) or "radix" (radix search for every
    row); both give the same T and P. ``return_status`` also returns the int32 [rows, Lq] status
    of "bcc" (0: at most topk candidates, 1: band path, 2: radix fallback, 3: band path with the
    ties at T cut by position in one more pass)."""
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    tune = current().prefill
    faults = testing.active()
    tile = prefill_tiles(q, group, tune).search
    BM, BN = tile.bm, tile.bn
    assert BN <= 128, "8-bit count fields need BN <= 128"
    st, en = seq_bounds(starts, ends, B=B, Lk=Lk, device=q.device)
    Hr = Hkv if group else Hq
    R = B * Hr
    n_rb = triton.cdiv(Lq, BM)
    TB = torch.empty(R, Lq, dtype=torch.int32, device=q.device)
    PB = torch.empty_like(TB)
    args = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2), Hr,
            Hq // Hkv, Lq, Lk, topk, sink, local, scale)
    ck = dict(CAUSAL=causal, GROUP=group, BM=BM, BN=BN, D=D, IEEE=q.dtype == torch.float32,
              UPCAST=INTERPRET, **launch_options(tile))
    if method == "radix":
        _thresh_kernel[(R, n_rb)](q, k, TB, PB, st, en, TB, TB, TB, *args, FLAGGED=False, **ck)
        return (TB, PB, torch.full_like(TB, 2)) if return_status else (TB, PB)
    if method != "bcc":
        raise InputError(f"method must be 'bcc' or 'radix', got {method!r}")
    cap, W, PW = tune.cap, tune.bin_words, tune.probe_words
    assert cap & (cap - 1) == 0 and 1 <= W <= 16 and 1 <= PW <= 16
    f32 = dict(dtype=torch.float32, device=q.device)
    STAT = torch.empty_like(TB)
    EA, EB = torch.empty(R, Lq, **f32), torch.empty(R, Lq, **f32)
    JS, CH, NBD = torch.empty_like(TB), torch.empty_like(TB), torch.empty_like(TB)
    state = (STAT, EA, EB, JS, CH, NBD)
    if faults.poison:  # tests: nothing may read an entry that no kernel wrote
        for t in (TB, PB, STAT, JS, CH, NBD):
            t.fill_(-0x5A5A5A5B)
        for t in (EA, EB):
            t.fill_(float("nan"))
    _count_kernel[(R, n_rb)](
        q, k, st, en, TB, PB, *state, *args, float(cap * tune.band_frac),
        float(cap * tune.sample_sigma), CAP=cap,
        NSAMP=tune.sample_blocks, PW=PW,
        SP=triton.next_power_of_2(4 * PW), W=W, SW=triton.next_power_of_2(4 * W),
        FL=65535 // BN,
        ESTM=faults.estimate_mode, **ck,
    )
    nprog = min(R * n_rb, faults.collect_programs or num_sms(q.device, default=4) * tune.collect_waves)
    BS = torch.empty(nprog * BM, cap, **f32)
    CK = torch.empty_like(TB)
    if faults.poison:
        BS.fill_(float("nan"))
        CK.fill_(-0x5A5A5A5B)
    _collect_kernel[(nprog,)](
        q, k, st, en, TB, PB, *state, CK, BS, *args, n_rb, R * n_rb, NMAX=4 * W - 1, CAP=cap,
        RF=min(BM, 16), ESTM=faults.estimate_mode, **ck,
    )
    _thresh_kernel[(R, n_rb)](q, k, TB, PB, st, en, STAT, JS, NBD, *args, FLAGGED=True, **ck)
    return (TB, PB, STAT) if return_status else (TB, PB)
