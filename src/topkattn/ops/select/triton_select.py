"""Exact top-k selection per row in Triton: radix select over the fp32 bit pattern, no sort.

Design (one row = one selection problem; n up to 1M, k up to 8192):
1. ``_hist_kernel`` (grid rows x blocks): histogram of a monotone 8-bit "log bin" of one in
   ``sample`` candidate scores, sampled in runs of ``sample_run`` consecutive positions
   (`row_bin`: the sign of x - c and 1/8-octave steps of |x - c| over 16 octaves, the rest
   clamped into the end bins). The frame (centre c, octave offset) is placed per row from 64
   evenly spaced candidates (`_row_frame`), so rows of any scale or common offset spread over
   the bins. Counts are added with one atomic per bin and program into [R, 256]. The last
   program of each row to finish (an arrival counter) derives a bin window [b_lo, b_hi] that
   holds the k-th largest score with a margin of four standard deviations of the sampled
   counts, publishes it with the frame and zeroes the row's histogram and counter
   (`publish_pick`).
2. ``_scan_kernel`` (grid rows x blocks): streams each row once and writes every position of
   a bin above the window straight to the output and the window's entries (signed-order key
   and position packed in one int64) to a scratch buffer; one 64-bit atomic per block reserves
   both output ranges (high 32 bits: output cursor, low: buffer cursor), one packed prefix sum
   places the entries. The cursors end as the exact counts above and in the window.
3. ``_finish_kernel`` (one program per row): checks the window against those exact counts
   (fewer than k above it, at least k from its bottom up, and within the buffer); radix
   passes over the window's entries (in registers, in tiers of 512, ``finish_block`` or twice
   that; only the bits below the entries' common prefix, 6 then 4 at a time, stopping once a
   digit settles the threshold) give the exact k-th key T and the number of ties at T still
   needed; the rare partial tie is cut at a position found by bisection / a position radix
   (the lowest positions win, as in the reference); a last pass writes keys > T and the kept
   ties, and the row's cursors are zeroed. A window that missed (the sample misjudged the row)
   or overflowed the buffer is caught there, and the row is re-read and selected in full
   (slower, same result).

The scratch (`workspace`) is kept per CUDA device: the kernels leave it zeroed, so no memset
is launched. On Hopper the kernels are launched with programmatic dependent launch (each waits
in `wait_prior` for the previous kernel; `pdl_launch`).

Rows may carry a visible range [start, L) (per-sequence left / right padding) and ``sink`` /
``local`` forced positions (visible positions below ``sink`` and the last ``local`` visible ones): forced positions are
appended after the top-k of the remaining candidates, and the rest of each output row is -1.
Scores are compared in fp32; -0.0 equals +0.0; a NaN score (of either sign) ranks as +inf, as in
`topkattn.ops.topk.naive.select_topk_mask`: it is selected first, ties with +inf to the lowest
positions (`_f32_skey`; one compare per score in the passes that already make the key).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

try:  # programmatic dependent launch (Triton >= 3.4 on Hopper); without it kernels launch plainly
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
    _HAS_PDL = True
except ImportError:  # pragma: no cover
    gdc_launch_dependents = gdc_wait = None
    _HAS_PDL = False

from topkattn.errors import InputError
from topkattn.ops.launch import cached_launch
from topkattn.ops.select import _interp  # noqa: F401  (interpreter shim)
from topkattn.ops.select.reference import check_select_args
from topkattn.ops import testing
from topkattn.ops.topk.triton_env import INTERPRET, compute_major, num_sms
from topkattn.ops.tuning import current

# `_log_bin`: |x - c| over 16 octaves of 2^_MANT steps per sign, the octaves placed per row by
# `_row_frame` (c and the scale come from a sample of the row), smaller and larger |x - c|
# clamped into the bins at c and at the ends.
_MANT = 3
BIN_SHIFT = tl.constexpr(23 - _MANT)  # key >> BIN_SHIFT: sign flag, exponent, _MANT mantissa bits
BIN_SIGN = tl.constexpr(1 << (8 + _MANT))  # first value of key >> BIN_SHIFT with x >= 0
BIN_U0 = tl.constexpr(121 << _MANT)  # default frame: |x| = 2^(121-127) = 2^-6 in units of key >> BIN_SHIFT
# octaves of the frame above a row's sampled spread (`_row_frame`): room for the larger scores
BIN_HEADROOM = tl.constexpr(6 << _MANT)
FRAME_SAMPLES = tl.constexpr(64)  # evenly spaced candidates per row that place the frame
NBINS = tl.constexpr(1 << (5 + _MANT))
BIN_HALF = tl.constexpr(1 << (4 + _MANT))
# row stride of the histogram scratch (the most bins)
HIST_STRIDE = tl.constexpr(256)


@triton.jit
def _f32_skey(x):
    """fp32 -> int32 whose signed order is the float order (-0.0 folded into +0.0, NaN of
    either sign read as +inf: it ranks first, ties to the lowest position, as in the reference's
    selection)."""
    b = tl.where(x != x, float("inf"), x + 0.0).to(tl.int32, bitcast=True)
    return b ^ ((b >> 31) & 0x7FFFFFFF)


@triton.jit
def _skey_to_key(s):
    """`_f32_skey` -> its unsigned twin `f32_key` (flip the top bit)."""
    return (s ^ -2147483648).to(tl.uint32, bitcast=True)


@triton.jit
def f32_key(x):
    """fp32 -> uint32 whose unsigned order is the float order (-0.0 folded into +0.0, NaN as
    +inf: `_f32_skey`)."""
    return _skey_to_key(_f32_skey(x))


@triton.jit
def _key_t(key):
    """Sign flag, 8 exponent bits and the top mantissa bits of a `f32_key` key (the bin unit)."""
    return (key >> BIN_SHIFT).to(tl.int32)


@triton.jit
def _log_bin(key, u0):
    """Monotone bin (int32 in [0, NBINS)) of a `f32_key` key: bins BIN_HALF.. hold x >= 0 in
    equal steps of log2|x| over 16 octaves from 2^(u0 / 2^_MANT - 127), the bins below mirror
    them for x < 0; smaller and larger |x| share the bins at zero and at the ends."""
    t = _key_t(key)
    nonneg = t >= BIN_SIGN
    u = tl.where(nonneg, t - BIN_SIGN, BIN_SIGN - 1 - t)  # of |x|
    c = tl.minimum(tl.maximum(u - u0, 0), BIN_HALF - 1)
    return tl.where(nonneg, BIN_HALF + c, BIN_HALF - 1 - c)


@triton.jit
def row_bin(x, c, u0):
    """`_log_bin` of fp32 scores x in a row's frame (c, u0) from `_row_frame`: monotone in x
    (x - c rounds monotonically), so a range of bins is a range of scores."""
    return _log_bin(f32_key(x - c), u0)


@triton.jit
def _row_frame(srow, c_lo, c_hi):
    """The frame of a row's bins from FRAME_SAMPLES evenly spaced candidates of [c_lo, c_hi):
    the centre c (their median) and the offset u0 that puts their spread (the upper quartile
    of |x - c|, or its max when that is 0) BIN_HEADROOM below the top of the 16 octaves. A
    row of large common offset, of tiny or huge scores, or with a few outliers then still
    spreads over many bins. Every program of a row computes the same frame (same loads, same
    reductions); non-finite samples give the default frame (c = 0, u0 = BIN_U0)."""
    i = tl.arange(0, FRAME_SAMPLES)
    ncand = c_hi - c_lo
    pos = c_lo + (i.to(tl.int64) * ncand // FRAME_SAMPLES).to(tl.int32)  # in [c_lo, c_hi)
    x = tl.sort(tl.load(srow + pos, mask=pos < c_hi, other=0.0).to(tl.float32))
    c = tl.sum(tl.where(i == FRAME_SAMPLES // 2, x, 0.0), 0)
    dev = tl.sort(tl.abs(x - c))
    spread = tl.sum(tl.where(i == (3 * FRAME_SAMPLES) // 4, dev, 0.0), 0)
    spread = tl.where(spread > 0, spread, tl.max(dev, 0))
    ok = (spread < float("inf")) & (tl.abs(c) < float("inf"))  # False for NaN too
    u_spread = _key_t(f32_key(spread)) - BIN_SIGN
    u0 = tl.maximum(u_spread + BIN_HEADROOM - (BIN_HALF - 1), 0)
    return tl.where(ok, c, 0.0), tl.where(ok, u0, BIN_U0)


@triton.jit
def _cand_range(vs, L, sink, local):
    """Candidates of a row whose visible keys are [vs, L): [c_lo, c_hi); the rest of [vs, L)
    is forced (the sink positions count from 0, as in the reference)."""
    c_lo = tl.minimum(tl.maximum(sink, vs), L)
    c_hi = tl.maximum(c_lo, L - local)
    return c_lo, c_hi


@triton.jit
def _pick(h, rem, NB: tl.constexpr):
    """h [NB] counts per digit (ascending key). Digit d with count(> d) < rem <= count(>= d).

    Returns (d, count above d, count in d)."""
    idx = tl.arange(0, NB)
    cum = tl.cumsum(h, 0)
    tot = tl.sum(h, 0)
    ge = tot - cum + h
    d = tl.max(tl.where(ge >= rem, idx, -1), 0)
    hd = tl.sum(tl.where(idx == d, h, 0), 0)
    ged = tl.sum(tl.where(idx == d, ge, 0), 0)
    return d, ged - hd, hd


@triton.jit
def _frame(INFO, r64):
    """Row r64's published (mode, c, u0): see `publish_pick`."""
    m = tl.load(INFO + r64 * 4)
    return m & 1, tl.load(INFO + r64 * 4 + 3).to(tl.float32, bitcast=True), m >> 1


@triton.jit
def _pack(skey, pos):
    """One int64 per window entry: the `_f32_skey` in the high 32 bits, the position in the
    low."""
    return (skey.to(tl.int64) << 32) | pos.to(tl.int64)


@triton.jit
def _unpack(v):
    """Inverse of `_pack`: (uint32 `f32_key`, int32 position)."""
    return _skey_to_key((v >> 32).to(tl.int32)), (v & 0xFFFFFFFF).to(tl.int32)


@triton.jit
def _load_src(srow, buf, use_buf, c_lo, n_src, i):
    """Keys, positions and validity of source entries i: the buffered window entries (`_pack`),
    or the row's candidates c_lo + i (re-read when the window missed the k-th key or
    overflowed)."""
    valid = i < n_src
    if use_buf:
        key, pos = _unpack(tl.load(buf + i, mask=valid, other=0))
    else:
        pos = c_lo + i
        key = f32_key(tl.load(srow + pos, mask=valid, other=0.0).to(tl.float32))
    return key, pos, valid


@triton.jit
def _pick_low(h, rem, NB: tl.constexpr):
    """h [NB] counts per digit. Digit d with count(< d) < rem <= count(<= d); returns (d, count
    below d)."""
    idx = tl.arange(0, NB)
    cum = tl.cumsum(h, 0)
    d = tl.min(tl.where(cum >= rem, idx, NB), 0)
    return d, tl.sum(tl.where(idx < d, h, 0), 0)


@triton.jit
def _prefix_match(key, valid, want, HI: tl.constexpr):
    """valid entries whose key bits [HI, 32) equal want's (all valid ones when HI = 32)."""
    if HI < 32:
        valid = valid & ((key >> HI) == (want >> HI))
    return valid


@triton.jit
def _refine(srow, buf, use_buf, c_lo, n_src, want, rem, HI: tl.constexpr, BLOCK: tl.constexpr):
    """One 8-bit radix pass over the source (in blocks): fix key bits [HI-8, HI) of the rem-th
    largest key among those matching want above bit HI."""
    offs = tl.arange(0, BLOCK)
    h = tl.zeros([256], dtype=tl.int32)
    for start in range(0, n_src, BLOCK):
        key, pos, valid = _load_src(srow, buf, use_buf, c_lo, n_src, start + offs)
        match = _prefix_match(key, valid, want, HI)
        h += tl.histogram(((key >> (HI - 8)) & 255).to(tl.int32), 256, mask=match)
    d, above, _ = _pick(h, rem, 256)
    return want | (d.to(tl.uint32) << (HI - 8)), rem - above


@triton.jit
def _tie_cut_radix(srow, buf, use_buf, c_lo, n_src, want, rem, SH: tl.constexpr, P,
                   BLOCK: tl.constexpr):
    """One 8-bit radix pass (bits [SH, SH+8)) towards the rem-th smallest position among the
    source entries whose key equals want, given the bits of P above SH+8; returns (P with
    those bits set, rem minus the ties below them)."""
    offs = tl.arange(0, BLOCK)
    h = tl.zeros([256], dtype=tl.int32)
    for start in range(0, n_src, BLOCK):
        key, pos, valid = _load_src(srow, buf, use_buf, c_lo, n_src, start + offs)
        m = valid & (key == want)
        if SH < 24:
            m = m & ((pos >> (SH + 8)) == (P >> (SH + 8)))
        h += tl.histogram((pos >> SH) & 255, 256, mask=m)
    d, below = _pick_low(h, rem, 256)
    return P | (d << SH), rem - below


@triton.jit
def _tie_cut(pos, tie, rem, lo, hi):
    """Smallest P in [lo, hi] with count(tie & pos <= P) >= rem (bisection over positions)."""
    while lo < hi:
        mid = (lo + hi) // 2
        c = tl.sum((tie & (pos <= mid)).to(tl.int32), 0)
        if c >= rem:
            hi = mid
        else:
            lo = mid + 1
    return lo


@triton.jit
def row_range(LENS, STARTS, r, HSEL, n, HAS_LENS: tl.constexpr, HAS_STARTS: tl.constexpr):
    """Visible keys [vs, L) of row r (lengths / starts shared by HSEL consecutive rows;
    L = n and vs = 0 when not given)."""
    L = n + r * 0
    if HAS_LENS:
        L = tl.maximum(tl.minimum(tl.load(LENS + r // HSEL), n), 0)
    vs = r * 0
    if HAS_STARTS:
        vs = tl.minimum(tl.maximum(tl.load(STARTS + r // HSEL), 0), L)
    return vs, L


@triton.jit
def wait_prior(PDL: tl.constexpr):
    """With programmatic dependent launch (PDL) a kernel starts while the previous kernel in
    the stream finishes; it must wait here, before touching memory, until that kernel is
    done and its writes are visible (which also orders it after every earlier kernel)."""
    if PDL:
        gdc_wait()


@triton.jit
def release_next(PDL: tl.constexpr):
    """With PDL: let the next kernel in the stream launch now (its programs become resident and
    wait in `wait_prior` until this kernel is done) instead of when this one's programs exit.
    The histogram kernel (its programs are all resident at once) and the finish (32-ish
    programs) use it; not the scan, whose many programs would share the SMs with the finish's
    large waiting programs."""
    if PDL:
        gdc_launch_dependents()


@triton.jit
def bin_hist(x, c, u0, m):
    """int32 [NBINS] counts of `row_bin` (frame c, u0) over the fp32 scores x where m."""
    return tl.histogram(row_bin(x, c, u0), NBINS, mask=m)


@triton.jit
def add_hist(HIST, r, h):
    """Add a program's counts h [NBINS] to row r of HIST [R, HIST_STRIDE] (one atomic per
    nonzero bin)."""
    tl.atomic_add(HIST + r.to(tl.int64) * HIST_STRIDE + tl.arange(0, NBINS), h, mask=h > 0, sem="relaxed")


@triton.jit
def publish_pick(HIST, DONE, INFO, r, nprog, k, ncand, SAMPLE, SHIFT, c, u0):
    """Called once by each of the ``nprog`` programs that add counts to row r's histogram,
    after its last add; the last program to arrive publishes the row's bin window
    INFO[r] = (mode + 2 * u0, b_lo, b_hi, c as fp32 bits), in the frame (c, u0) the counts
    were made in (`_row_frame`, read back by `_frame`): bins above b_hi hold fewer than k candidates and bins from
    b_lo up at least k, with a margin of 4 standard deviations when the histogram counted one
    candidate in SAMPLE (1: exact counts, b_lo = b_hi = the bin of the k-th largest). mode 0:
    the row has no more than k candidates and keeps them all. SHIFT moves the window up by
    that many bins (tests: a window that misses, to exercise the finish's fallback)."""
    tl.debug_barrier()  # every thread's histogram atomics precede the arrival (release)
    r64 = r.to(tl.int64)
    arrived = tl.atomic_add(DONE + r64, 1, sem="acq_rel")
    if arrived == nprog - 1:
        h = tl.load(HIST + r64 * HIST_STRIDE + tl.arange(0, NBINS), volatile=True)
        idx = tl.arange(0, NBINS)
        ge = (tl.sum(h, 0) - tl.cumsum(h, 0) + h) * SAMPLE  # estimated count in bins >= idx
        gt = ge - h * SAMPLE
        kt = (r * 0 + k).to(tl.float32)  # k may arrive as a Python int (specialized 1)
        margin = tl.where(SAMPLE > 1, 4.0 * tl.sqrt(kt * SAMPLE) + 2 * SAMPLE, 0.0)
        lo = k + margin.to(tl.int32)
        hi = k - margin.to(tl.int32)
        b_lo = tl.maximum(tl.max(tl.where(ge >= lo, idx, -1), 0), 0)
        b_hi = tl.min(tl.where(gt < hi, idx, NBINS - 1), 0)
        b_lo = tl.minimum(b_lo + SHIFT, NBINS - 1)
        b_hi = tl.minimum(tl.maximum(b_hi + SHIFT, b_lo), NBINS - 1)
        tl.store(INFO + r64 * 4 + 0, (ncand > k).to(tl.int32) + 2 * u0)
        tl.store(INFO + r64 * 4 + 1, b_lo)
        tl.store(INFO + r64 * 4 + 2, b_hi)
        tl.store(INFO + r64 * 4 + 3, c.to(tl.int32, bitcast=True))
        # leave the histogram and the counter zeroed for the next call (`workspace`), once
        # every warp of this program has read them
        tl.debug_barrier()
        tl.store(HIST + r64 * HIST_STRIDE + tl.arange(0, NBINS), tl.zeros([NBINS], tl.int32))
        tl.store(DONE + r64, 0)


@cached_launch
@triton.jit(do_not_specialize=["n", "stride_s"])
def _hist_kernel(S, stride_s, LENS, STARTS, HSEL, n, sink, local, k, HIST, DONE, INFO, SHIFT,
                 HAS_LENS: tl.constexpr, HAS_STARTS: tl.constexpr,
                 BLOCK: tl.constexpr, ITERS: tl.constexpr, SAMPLE: tl.constexpr, RUN: tl.constexpr,
                 PDL: tl.constexpr = False, EARLY: tl.constexpr = False):
    """`row_bin` histogram of one in SAMPLE candidates of each row into HIST [R, HIST_STRIDE]
    (runs of RUN consecutive positions, one run in every RUN * SAMPLE, so that only 1/SAMPLE
    of the row's memory is read),
    then the row's bin window into INFO (`publish_pick`). Each program counts ITERS blocks of
    BLOCK sampled positions (BLOCK * SAMPLE consecutive positions each) in registers, then adds
    its counts with one atomic per bin; rows with no more than k candidates are not counted.
    Every program places the row's frame (`_row_frame`) itself."""
    wait_prior(PDL)
    release_next(PDL and EARLY)
    r = tl.program_id(0)
    first = tl.program_id(1) * (BLOCK * ITERS * SAMPLE)
    vs, L = row_range(LENS, STARTS, r, HSEL, n, HAS_LENS, HAS_STARTS)
    c_lo, c_hi = _cand_range(vs, L, sink, local)
    c, u0 = _row_frame(S + r.to(tl.int64) * stride_s, c_lo, c_hi)
    if (first < c_hi) & (first + BLOCK * ITERS * SAMPLE > c_lo) & (c_hi - c_lo > k):
        h = tl.zeros([NBINS], tl.int32)
        for it in range(ITERS):
            j = it * BLOCK + tl.arange(0, BLOCK)  # sampled: runs of RUN in every RUN * SAMPLE
            pos = first + (j // RUN) * (RUN * SAMPLE) + j % RUN
            m = (pos >= c_lo) & (pos < c_hi)
            # the load is masked by n only, so that it vectorizes (SAMPLE 1); m masks the rest
            x = tl.load(S + r.to(tl.int64) * stride_s + pos, mask=pos < n, other=0.0).to(tl.float32)
            h += bin_hist(x, c, u0, m)
        add_hist(HIST, r, h)
    publish_pick(HIST, DONE, INFO, r, tl.num_programs(1), k, c_hi - c_lo, SAMPLE, SHIFT, c, u0)


@cached_launch
@triton.jit(do_not_specialize=["n", "stride_s", "CAP", "ZERO"])
def _scan_kernel(S, stride_s, LENS, STARTS, HSEL, n, sink, local, K, INFO, CNT, OUT,
                 stride_o, BUF, CAP, ZERO, HAS_LENS: tl.constexpr, HAS_STARTS: tl.constexpr,
                 BLOCK: tl.constexpr, ITERS: tl.constexpr, FULL: tl.constexpr = False,
                 PDL: tl.constexpr = False):
    """Parallel over (row, ITERS consecutive blocks), given each row's bin window [b_lo, b_hi]
    in INFO: positions of bins above b_hi go to the output, the window's (key, pos) to the
    scratch buffer, both through one packed per-row 64-bit cursor CNT (high 32 bits: output,
    low: buffer; order within a row varies): one atomic per block and a packed prefix sum (one
    atomic per entry measured 2.6x slower: same-address contention). CNT ends with the exact
    counts; stores past K outputs or CAP buffer entries are dropped (the finish then re-reads
    the row). Each score's bin is made in the row's published frame (`row_bin`, `_frame`).
    FULL: no lengths, starts, sink or local (every position below n is a candidate).

    A block is a [BLOCK // 32, 32] tile: one row per load instruction (32 lanes, coalesced),
    the rows in each thread's registers. ZERO (a runtime 0, not specialized) hides the
    positions' alignment from the compiler, which would otherwise give each thread 4
    neighbours (vector loads) and then move every stored tensor through shared memory to the
    one-per-lane layout of the scattered stores. The prefix sum then runs down each lane's
    registers and once across the lanes (its order is free: only the slots must differ)."""
    wait_prior(PDL)
    r = tl.program_id(0)
    pid = tl.program_id(1)
    r64 = r.to(tl.int64)
    vs, L = row_range(LENS, STARTS, r, HSEL, n, HAS_LENS, HAS_STARTS)
    c_lo, c_hi = _cand_range(vs, L, sink, local)
    mode, c, u0 = _frame(INFO, r64)
    b_lo = tl.load(INFO + r64 * 4 + 1)
    b_hi = tl.load(INFO + r64 * 4 + 2)
    orow = OUT + r64 * stride_o
    srow = S + r64 * stride_s
    offs = tl.arange(0, BLOCK) + ZERO
    if mode == 0:
        for it in range(ITERS):
            pos = (pid * ITERS + it) * BLOCK + offs
            tl.store(orow + (pos - c_lo), pos, mask=(pos >= c_lo) & (pos < c_hi))
    else:
        # software pipelined by hand: the next block's load is issued before this block's
        # atomic, so the two latencies overlap (masks cover blocks outside [c_lo, c_hi))
        pos = pid * ITERS * BLOCK + offs
        x = tl.load(srow + pos, mask=pos < n, other=0.0)
        for it in range(ITERS):
            xn = tl.load(srow + pos + BLOCK, mask=(pos + BLOCK < n) & (it + 1 < ITERS), other=0.0)
            if FULL:  # every position of the row is a candidate
                m = pos < n
            else:
                m = (pos >= c_lo) & (pos < c_hi)
            xf = x.to(tl.float32)
            key = _f32_skey(xf)
            b = row_bin(xf, c, u0)
            up = m & (b > b_hi)
            inb = m & (b >= b_lo) & (b <= b_hi)
            packed = up.to(tl.int32) * 65536 + inb.to(tl.int32)  # BLOCK < 65536
            p2 = tl.reshape(packed, [BLOCK // 32, 32])  # [rows of a thread, lanes]
            lane_tot = tl.sum(p2, 0)  # [32]
            tot = tl.sum(lane_tot, 0)
            if tot > 0:
                inc = (tot >> 16).to(tl.int64) * 4294967296 + (tot & 65535).to(tl.int64)
                base = tl.atomic_add(CNT + r64, inc, sem="relaxed")
                ex = tl.reshape((tl.cumsum(lane_tot, 0) - lane_tot)[None, :] + tl.cumsum(p2, 0) - p2, [BLOCK])
                dst_up = (base >> 32).to(tl.int32) + (ex >> 16)
                dst_in = (base & 4294967295).to(tl.int32) + (ex & 65535)
                tl.store(orow + dst_up, pos, mask=up & (dst_up < K))
                tl.store(BUF + r64 * CAP + dst_in, _pack(key, pos), mask=inb & (dst_in < CAP))
            x = xn
            pos += BLOCK


@triton.jit
def _bit_length(x):
    """Bit length of a uint32 scalar, or one more (at most 32), from the exponent of its fp32
    value (the conversion may round up to the next power of two; a longer length only adds a
    bit that all entries share). Replaces a loop of up to 32 dependent steps."""
    e = ((x.to(tl.float32).to(tl.uint32, bitcast=True) >> 23) & 0xFF).to(tl.int32)
    return tl.where(x == 0, 0, tl.minimum(e - 126, 32)).to(tl.uint32)


@triton.jit
def _radix_pass(key, match, want, rem, hi, DB: tl.constexpr):
    """One pass of `_finish_regs`: fix key bits [hi - DB, hi) (or [0, hi)) of the rem-th
    largest key among the entries ``match`` (those whose bits above hi equal want's). When
    the picked digit settles the threshold, that is all of its entries are needed (then the
    threshold is their smallest key) or only its largest is, the threshold is set directly and
    hi drops to 0. Returns (want, rem, hi, match) for the next pass."""
    sh = tl.where(hi > DB, hi - DB, 0)
    if hi < 32:
        match = match & ((key >> hi) == (want >> hi))
    d = ((key >> sh) & ((1 << (hi - sh)) - 1)).to(tl.int32)
    h = tl.histogram(d, 1 << DB, mask=match)
    dd, above, hd = _pick(h, rem, 1 << DB)
    rem -= above
    want = want | (dd.to(tl.uint32) << sh)
    hi = sh
    if (hi > 0) & ((hd == rem) | (rem == 1)):
        inset = match & (d == dd)
        want = tl.where(hd == rem, tl.min(tl.where(inset, key, 0xFFFFFFFF), 0),
                        tl.max(tl.where(inset, key, 0), 0))
        # all needed: every tie at the smallest key is kept; one needed: the tie cut picks it
        rem = tl.where(hd == rem, tl.sum((inset & (key == want)).to(tl.int32), 0), rem)
        hi = hi * 0
    return want, rem, hi, match


@triton.jit
def _finish_regs(buf, orow, nb, rem, cursor, c_lo, c_hi, RB: tl.constexpr,
                 DB: tl.constexpr, DB0: tl.constexpr):
    """Finish of a row whose nb <= RB buffer entries (the window's) are held
    in registers: radix passes over the key bits below the window's common prefix (DB0 bits in
    the first pass, then DB; `_radix_pass` stops early once a digit settles the threshold),
    the tie cut, and the write of the selected positions from ``cursor`` on. Returns the new
    cursor."""
    key, pos, valid = _load_src(buf, buf, True, c_lo, nb, tl.arange(0, RB))
    kmin = tl.min(tl.where(valid, key, 0xFFFFFFFF), 0)
    kmax = tl.max(tl.where(valid, key, 0), 0)
    x = kmin ^ kmax  # the entries' key range
    hi = _bit_length(x)  # the bits above it are common to all entries
    want = tl.where(hi >= 32, 0, (kmin >> hi) << hi)
    match = valid
    if hi > 0:
        want, rem, hi, match = _radix_pass(key, match, want, rem, hi, DB0)
    while hi > 0:
        want, rem, hi, match = _radix_pass(key, match, want, rem, hi, DB)
    tie = valid & (key == want)
    P = c_hi
    if tl.sum(tie.to(tl.int32), 0) > rem:
        P = _tie_cut(pos, tie, rem, c_lo, c_hi - 1)
    sel = valid & ((key > want) | (tie & (pos <= P)))
    si = sel.to(tl.int32)
    tl.store(orow + (cursor + tl.cumsum(si, 0) - si), pos, mask=sel)
    return cursor + tl.sum(si, 0)


@cached_launch
@triton.jit(do_not_specialize=["n", "stride_s", "CAP"])
def _finish_kernel(S, stride_s, LENS, STARTS, HSEL, n, sink, local, k, INFO, CNT, OUT, stride_o, KOUT,
                   BUF, CAP, HAS_LENS: tl.constexpr, HAS_STARTS: tl.constexpr,
                   BLOCK: tl.constexpr, DB: tl.constexpr, DB0: tl.constexpr, TIERS: tl.constexpr = True,
                   PDL: tl.constexpr = False, EARLY: tl.constexpr = False):
    """Per row: exact k-th key among the window's entries (radix passes), write keys above it
    and the lowest-position ties, then the forced positions and -1 padding. Entries that fit
    in one block (512, or BLOCK) stay in registers for all passes (`_finish_regs`); more are
    read in blocks from the buffer. When the scan's exact counts show that the window missed
    the k-th key (a sampled histogram's estimate was off) or overflowed the buffer, the row is
    re-read and all k positions are selected from it (slower, same result)."""
    wait_prior(PDL)
    release_next(PDL and EARLY)
    r = tl.program_id(0)
    r64 = r.to(tl.int64)
    srow = S + r64 * stride_s
    orow = OUT + r64 * stride_o
    buf = BUF + r64 * CAP
    vs, L = row_range(LENS, STARTS, r, HSEL, n, HAS_LENS, HAS_STARTS)
    c_lo, c_hi = _cand_range(vs, L, sink, local)
    ncand = c_hi - c_lo
    offs = tl.arange(0, BLOCK)
    mode = tl.load(INFO + r64 * 4) & 1
    cursor = ncand
    if mode != 0:
        cnt = tl.load(CNT + r64)
        above = (cnt >> 32).to(tl.int32)  # exact counts of the scan: above the window
        nb = (cnt & 4294967295).to(tl.int32)  # in the window
        use_buf = (above < k) & (above + nb >= k) & (nb <= CAP)
        rem = tl.where(use_buf, k - above, k)
        cursor = tl.where(use_buf, above, 0)
        want = (r * 0).to(tl.uint32)
        # register tiers: the smallest that holds the window's entries (TIERS adds 2 * BLOCK);
        # larger windows take the blocked passes
        if use_buf & (nb <= 512) & (BLOCK > 512):
            cursor = _finish_regs(buf, orow, nb, rem, cursor, c_lo, c_hi, 512, DB, DB0)
        elif use_buf & (nb <= BLOCK):
            cursor = _finish_regs(buf, orow, nb, rem, cursor, c_lo, c_hi, BLOCK, DB, DB0)
        elif TIERS & use_buf & (nb <= 2 * BLOCK):
            cursor = _finish_regs(buf, orow, nb, rem, cursor, c_lo, c_hi, 2 * BLOCK, DB, DB0)
        else:
            n_src = tl.where(use_buf, nb, ncand)
            want, rem = _refine(srow, buf, use_buf, c_lo, n_src, want, rem, 32, BLOCK)
            want, rem = _refine(srow, buf, use_buf, c_lo, n_src, want, rem, 24, BLOCK)
            want, rem = _refine(srow, buf, use_buf, c_lo, n_src, want, rem, 16, BLOCK)
            want, rem = _refine(srow, buf, use_buf, c_lo, n_src, want, rem, 8, BLOCK)
            # ties at want: count them; when some must be dropped, the position cutoff P is
            # the rem-th smallest tie position (the source is not in position order), found by
            # four 8-bit radix passes over the positions
            nt = ncand * 0
            for start in range(0, n_src, BLOCK):
                key, pos, valid = _load_src(srow, buf, use_buf, c_lo, n_src, start + offs)
                nt += tl.sum((valid & (key == want)).to(tl.int32), 0)
            P = c_hi
            if nt > rem:
                P, r2 = _tie_cut_radix(srow, buf, use_buf, c_lo, n_src, want, rem, 24, P * 0, BLOCK)
                P, r2 = _tie_cut_radix(srow, buf, use_buf, c_lo, n_src, want, r2, 16, P, BLOCK)
                P, r2 = _tie_cut_radix(srow, buf, use_buf, c_lo, n_src, want, r2, 8, P, BLOCK)
                P, r2 = _tie_cut_radix(srow, buf, use_buf, c_lo, n_src, want, r2, 0, P, BLOCK)
            for start in range(0, n_src, BLOCK):
                key, pos, valid = _load_src(srow, buf, use_buf, c_lo, n_src, start + offs)
                sel = valid & ((key > want) | ((key == want) & (pos <= P)))
                si = sel.to(tl.int32)
                tl.store(orow + (cursor + tl.cumsum(si, 0) - si), pos, mask=sel)
                cursor += tl.sum(si, 0)
    # forced positions: [vs, c_lo) and [c_hi, L)
    for start in range(vs, c_lo, BLOCK):
        pos = start + offs
        tl.store(orow + cursor + (pos - vs), pos, mask=pos < c_lo)
    cursor += c_lo - vs
    for start in range(c_hi, L, BLOCK):
        pos = start + offs
        tl.store(orow + cursor + (pos - c_hi), pos, mask=pos < L)
    cursor += L - c_hi
    for start in range(cursor, KOUT, BLOCK):
        i = start + offs
        tl.store(orow + i, tl.full([BLOCK], -1, tl.int32), mask=i < KOUT)
    # zero the cursors for the next call (`workspace`), once every warp has read them
    tl.debug_barrier()
    tl.store(CNT + r64, (r * 0).to(tl.int64))


# knobs: `topkattn.ops.tuning.SelectTuning` (read from `current().select` at each launch)


def pdl_launch(device: torch.device) -> dict:
    """Launch options for kernels that begin with `wait_prior`: PDL on CUDA devices of compute
    capability 9.0 or newer (and not under the interpreter), else none."""
    if not current().select.use_pdl or not _HAS_PDL or INTERPRET or compute_major(device) < 9:
        return {}
    return {"PDL": True, "launch_pdl": True}


def pdl_early(device: torch.device) -> dict:
    """`pdl_launch` plus EARLY (`release_next`) for kernels that take it, when
    ``SelectTuning.pdl_early``."""
    kw = pdl_launch(device)
    if kw and current().select.pdl_early:
        kw["EARLY"] = True
    return kw


def _iters(programs: int, device: torch.device, max_iters: int) -> int:
    sms = num_sms(device, default=4)
    it = 1
    while it * 2 <= max_iters and programs // (it * 2) >= 2 * sms:
        it *= 2
    return it


def select_rows(
    scores: torch.Tensor,
    *,
    k: int,
    starts: torch.Tensor | None = None,
    ends: torch.Tensor | None = None,
    rows_per_seq: int = 1,
    sink: int = 0,
    local: int = 0,
    block: int | None = None,
    num_warps: int | None = None,
    cap: int | None = None,
    work: torch.Tensor | None = None,
) -> torch.Tensor:
    """Top-k positions of each row plus forced positions; the building block of the kernels.

    Args:
        scores: [R, n] (last dim contiguous; fp32/fp16/bf16).
        k: positions selected among each row's candidates.
        starts, ends: int32 [R // rows_per_seq] first visible position (left padding; None: 0)
            and one past the last (the visible length; None: n) of each group of rows: row r
            sees positions [starts[r // rows_per_seq], ends[r // rows_per_seq]).
        rows_per_seq: consecutive rows sharing one pair of bounds (e.g. the query heads of a
            sequence).
        sink, local: forced first / last visible positions of each row (appended after the
            top-k; they are not candidates).
        block, num_warps: entries per block and warps of the finish (default ``finish_block``,
            ``finish_warps`` of `SelectTuning`; bin b's entries stay in registers up to ``block``).
        cap: scratch entries per row for the candidates of the threshold window (default
            max(16384, 2k, n/16)); a larger window falls back to re-reading the row.
        work: zeroed scratch from `select_workspace` (default: the device's `workspace`).

    Returns:
        int32 [R, k + sink + local]: the selected positions (order: unspecified within the
        top-k part, then the forced ones), -1 where a row has fewer.
    """
    R, n = scores.shape
    if scores.stride(-1) != 1:
        scores = scores.contiguous()
    dev = scores.device
    has_ends, has_starts = ends is not None, starts is not None
    if not has_ends and not has_starts:
        rows_per_seq = 1
    ends = ends if has_ends else scores  # never read when absent
    starts = starts if has_starts else scores
    kout = k + sink + local
    if work is None:
        work = workspace(R, dev)
    try:
        return _launch(scores, k, kout, work, ends, starts, has_ends, has_starts, rows_per_seq, sink,
                       local, block, num_warps, cap)
    except BaseException:
        work.zero_()  # a launch that did not happen leaves counts behind; clean for the next call
        raise


def _launch(scores, k, kout, work, ends, starts, has_ends, has_starts, rows_per_seq, sink, local,
            block, num_warps, cap, finish: bool = True):
    """The three kernels of `select_rows` (arguments as there, checked); without ``finish``
    only the histogram and the scan (the cursors are then left in the workspace)."""
    R, n = scores.shape
    dev = scores.device
    tune = current().select
    out = torch.empty(R, kout, dtype=torch.int32, device=dev)
    pdl = pdl_early(dev)
    ws = workspace_views(work, R)
    cap = min(n, max(16384, 2 * k, n // 16)) if cap is None else max(1, cap)
    buf = torch.empty(R, cap, dtype=torch.int64, device=dev)
    # enough programs to fill the GPU when there are few rows (B=1 decode)
    smp = max(1, tune.sample)
    ns = triton.cdiv(n, smp)  # sampled positions per row
    hblock = 4096 if R * triton.cdiv(ns, 4096) >= 1024 else (2048 if R * triton.cdiv(ns, 2048) >= 512 else 1024)
    hiters = _iters(R * triton.cdiv(ns, hblock), dev, tune.iters)
    _hist_kernel[(R, triton.cdiv(ns, hblock * hiters))](
        scores, scores.stride(0), ends, starts, rows_per_seq, n, sink, local, k, ws.hist,
        ws.done, ws.info, testing.active().window_shift, HAS_LENS=has_ends, HAS_STARTS=has_starts,
        BLOCK=hblock, ITERS=hiters, SAMPLE=smp, RUN=tune.sample_run, num_warps=8, **pdl,
    )
    sblock = tune.scan_block or 512
    siters = min(tune.scan_iters, _iters(R * triton.cdiv(n, sblock), dev, tune.iters))
    _scan_kernel[(R, triton.cdiv(n, sblock * siters))](
        scores, scores.stride(0), ends, starts, rows_per_seq, n, sink, local, k, ws.info, ws.cnt,
        out, out.stride(0), buf, cap, 0, HAS_LENS=has_ends, HAS_STARTS=has_starts, BLOCK=sblock,
        ITERS=siters, FULL=not (has_ends or has_starts or sink or local),
        num_warps=tune.scan_warps or max(1, sblock // 128), **pdl_launch(dev),  # None: 4 per thread
    )
    if not finish:
        return out
    _finish_kernel[(R,)](
        scores, scores.stride(0), ends, starts, rows_per_seq, n, sink, local, k, ws.info, ws.cnt, out, out.stride(0),
        kout, buf, cap, HAS_LENS=has_ends, HAS_STARTS=has_starts, BLOCK=block or tune.finish_block,
        DB=tune.finish_digit_bits, DB0=tune.finish_first_digit_bits or tune.finish_digit_bits,
        TIERS=tune.finish_tiers and 2 * k > (block or tune.finish_block),  # big windows only
        num_warps=num_warps or tune.finish_warps, **pdl,
    )
    return out


def window_counts(scores: torch.Tensor, *, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Diagnostics of the sampled window for rows of ``scores`` [R, n] (every position a
    candidate): int64 [R] counts of candidates above the window and in it. The fast finish
    needs above < k <= above + in_window and in_window small (it holds up to ``finish_block``
    entries in registers, twice that with ``finish_tiers``); otherwise the row is re-read."""
    R, n = scores.shape
    scores = scores.contiguous()
    work = select_workspace(R, scores.device)
    _launch(scores, k, k, work, scores, scores, False, False, 1, 0, 0, None, None, None,
            finish=False)
    cnt = workspace_views(work, R).cnt
    return cnt >> 32, cnt & 0xFFFFFFFF


class SelectWorkspace(NamedTuple):
    """Views of the scratch of `select_rows` for R rows: ``hist`` int32 [R * 256] histogram,
    ``cnt`` int64 [R] packed output / buffer cursors, ``done`` int32 [R] arrival counters of
    `publish_pick`, ``info`` int32 [R * 4] bin picks."""

    hist: torch.Tensor
    cnt: torch.Tensor
    done: torch.Tensor
    info: torch.Tensor


WORDS_PER_ROW = 263  # int32 words of scratch per row (`workspace_views`)


def select_workspace(R: int, device: torch.device) -> torch.Tensor:
    """Zeroed int32 scratch of `select_rows` for R rows (see `SelectWorkspace`). The kernels
    leave it zeroed again when they finish, so one workspace serves any number of calls made
    one after another (not concurrently). Pass it as ``work``."""
    return torch.zeros(R * WORDS_PER_ROW, dtype=torch.int32, device=device)


_WORKSPACES: dict[int, torch.Tensor] = {}


def workspace(R: int, device: torch.device) -> torch.Tensor:
    """A `select_workspace` for at least R rows kept per CUDA device (calls run one after
    another on a stream, so they can share it). Saves a memset launch per call. Allocate it
    outside CUDA-graph capture with `reserve_workspace` (an allocation during capture would
    live in the graph's private pool). CPU (interpreter): a fresh one."""
    if device.type != "cuda":
        return select_workspace(R, device)
    key = device.index if device.index is not None else torch.cuda.current_device()
    w = _WORKSPACES.get(key)
    if w is None or w.numel() < R * WORDS_PER_ROW:
        w = _WORKSPACES[key] = select_workspace(max(R, RESERVED_ROWS), device)
    return w


RESERVED_ROWS = 4096  # rows a sparsified model's workspace holds from the start (B * Hq)


def reserve_workspace(device: torch.device, rows: int = RESERVED_ROWS) -> None:
    """Allocate the workspace of ``device`` now (before any CUDA-graph capture)."""
    if device.type == "cuda":
        workspace(rows, device)


def workspace_views(work: torch.Tensor, R: int | None = None) -> SelectWorkspace:
    """The regions of a workspace, laid out by its capacity (numel // WORDS_PER_ROW rows) and
    not by the rows of a call, so that every call finds the zeroed regions where the previous
    one left them; R (optional) is checked against the capacity."""
    cap = work.numel() // WORDS_PER_ROW
    if R is not None and R > cap:
        raise InputError(f"the workspace holds {cap} rows; {R} were asked for")
    return SelectWorkspace(work[: cap * 256], work[cap * 256: cap * 258].view(torch.int64),
                           work[cap * 258: cap * 259], work[cap * 259: cap * 263])


def topk_select(scores: torch.Tensor, k: int, *, sort: bool = False) -> torch.Tensor:
    """Indices of the ``k`` largest scores of each row (exact; ties: lowest position wins).

    Args:
        scores: [R, n] float32 / float16 / bfloat16 (compared in fp32).
        k: number of positions per row (k >= n returns every position).
        sort: return each row's positions in ascending order (costs a sort of [R, k]).

    Returns:
        int32 [R, min(k, n)] positions; the set equals `topk_select_reference`'s.
    """
    check_select_args(scores, k)
    out = select_rows(scores, k=min(k, scores.shape[1]))
    return out.sort(dim=-1).values if sort else out
