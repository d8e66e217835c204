"""Exact top-k selection per row in Triton: a sampled bracket, one streaming pass, and a
small radix select; no sort of the row and no histogram of it.

Design (one row = one selection problem; n up to 1M, k up to 8192):
1. ``_bracket_kernel`` (one program per row): reads a strided sample of S candidate scores
   (all of them when the row has at most S), sorts it, and takes two sample order statistics
   around the expected rank k*S/n (a margin of several binomial standard deviations) as a
   bracket of keys [lo, hi] that should hold the k-th largest key of the row.
2. ``_scan_kernel`` (grid rows x blocks, blocks sized to fill about one wave of the GPU):
   streams the row once; positions with key > hi go straight to the output, the (key,
   position) pairs of the band lo <= key <= hi to a scratch buffer, both through per-row
   atomic cursors (order within a row is unspecified).
3. ``_finish_kernel`` (one program per row): checks the bracket (fewer than k keys above hi,
   at least k at or above lo, the band fits the buffer); then four 8-bit radix passes over the
   band give the exact k-th key T and the ties still needed, the rare partial tie is cut at a
   position found by bisection (the lowest positions win, as in the reference), and a last
   pass writes the band's keys > T and the kept ties. When the bracket fails (a sample far
   off, e.g. huge runs of equal scores), the same passes run over the whole row instead and
   rewrite it: slower, same result.

Rows may carry a visible range [start, L) (per-sequence left / right padding) and ``sink`` /
``local`` forced positions (visible positions below ``sink`` and the last ``local`` visible ones): forced positions are
appended after the top-k of the remaining candidates, and the rest of each output row is -1.
Scores are compared in fp32; -0.0 equals +0.0; NaN is not supported.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from topkattn.ops.select import _interp  # noqa: F401  (interpreter shim)
from topkattn.ops.select.reference import _check



@triton.jit
def _f32_key(x):
    """fp32 -> uint32 whose unsigned order is the float order (-0.0 folded into +0.0)."""
    x = x + 0.0
    b = x.to(tl.uint32, bitcast=True)
    return tl.where((b >> 31) != 0, b ^ 0xFFFFFFFF, b | 0x80000000)


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
def _load_src(srow, bk, bp, use_buf, c_lo, n_src, i):
    """Keys, positions and validity of candidates i (buffer entries or row positions)."""
    valid = i < n_src
    if use_buf:
        key = tl.load(bk + i, mask=valid, other=0).to(tl.uint32, bitcast=True)
        pos = tl.load(bp + i, mask=valid, other=0)
    else:
        pos = c_lo + i
        key = _f32_key(tl.load(srow + pos, mask=valid, other=0.0).to(tl.float32))
    return key, pos, valid


@triton.jit
def _refine(srow, bk, bp, use_buf, c_lo, n_src, want, rem,
            HI: tl.constexpr, SHIFT: tl.constexpr, NBITS: tl.constexpr, BLOCK: tl.constexpr):
    """One radix pass: fix key bits [SHIFT, HI) of the rem-th largest key among the keys
    matching want on bits [HI, 32) (all keys when HI == 32)."""
    offs = tl.arange(0, BLOCK)
    h = tl.zeros([1 << NBITS], dtype=tl.int32)
    for start in range(0, n_src, BLOCK):
        key, pos, valid = _load_src(srow, bk, bp, use_buf, c_lo, n_src, start + offs)
        match = valid
        if HI < 32:
            match = match & ((key >> HI) == (want >> HI))
        d = ((key >> SHIFT) & ((1 << NBITS) - 1)).to(tl.int32)
        h += tl.histogram(d, 1 << NBITS, mask=match)
    d, above, nd = _pick(h, rem, 1 << NBITS)
    return want | (d.to(tl.uint32) << SHIFT), rem - above


@triton.jit
def _row_range(LENS, STARTS, r, HSEL, n, HAS_LENS: tl.constexpr, HAS_STARTS: tl.constexpr):
    """Visible keys [vs, L) of row r (lengths / starts shared by HSEL consecutive rows;
    L = n and vs = 0 when not given)."""
    L = n + r * 0
    if HAS_LENS:
        L = tl.minimum(tl.load(LENS + r // HSEL), n)
    vs = r * 0
    if HAS_STARTS:
        vs = tl.minimum(tl.maximum(tl.load(STARTS + r // HSEL), 0), L)
    return vs, L


INT_MIN: tl.constexpr = tl.constexpr(-(2**31))


@triton.jit
def _bracket_kernel(S, stride_s, LENS, STARTS, HSEL, n, sink, local, k, INFO, MARGIN,
                    HAS_LENS: tl.constexpr, HAS_STARTS: tl.constexpr, NS: tl.constexpr):
    """Per row: INFO[r] = (mode, lo, hi) with mode 0 = keep every candidate (at most k), else
    lo <= hi, keys (int32 bit patterns of uint32 keys) bracketing the k-th largest key, from
    sample ranks e -/+ (MARGIN * sqrt(e) + 4) around e = k * ns / ncand of a strided sample of
    ns = min(NS, ncand) candidates (the exact k-th key when the sample is the whole row)."""
    r = tl.program_id(0)
    vs, L = _row_range(LENS, STARTS, r, HSEL, n, HAS_LENS, HAS_STARTS)
    c_lo, c_hi = _cand_range(vs, L, sink, local)
    ncand = c_hi - c_lo
    mode = (ncand > k).to(tl.int32)
    tl.store(INFO + r * 4, mode)
    if mode != 0:
        ns = tl.minimum(ncand, NS)
        j = tl.arange(0, NS)
        pos = c_lo + ((j.to(tl.int64) * ncand) // ns).to(tl.int32)
        x = tl.load(S + r.to(tl.int64) * stride_s + pos, mask=j < ns, other=0.0).to(tl.float32)
        # (key ^ 0x80000000) as int32 sorts like the uint32 key; padding sorts last
        ikey = (_f32_key(x) ^ 0x80000000).to(tl.int32, bitcast=True)
        ikey = tl.where(j < ns, ikey, INT_MIN)
        srt = tl.sort(ikey, 0, descending=True)
        e = (ncand * 0 + k).to(tl.float32) * ns.to(tl.float32) / ncand.to(tl.float32)
        dlt = MARGIN * tl.sqrt(e) + 4.0
        exact = ns == ncand  # the sample is the row: the bracket is the k-th key itself
        r_hi = tl.where(exact, k - 1, tl.floor(e - dlt).to(tl.int32))
        r_lo = tl.where(exact, k - 1, tl.minimum(tl.ceil(e + dlt).to(tl.int32), ns - 1))
        hi = tl.sum(tl.where(j == r_hi, srt, 0), 0) ^ INT_MIN  # bit pattern of the uint32 key
        hi = tl.where(r_hi < 0, -1, hi)  # 0xFFFFFFFF: nothing above
        lo = tl.sum(tl.where(j == r_lo, srt, 0), 0) ^ INT_MIN
        lo = tl.where((ns < ncand) & (r_lo == ns - 1), 0, lo)  # sample exhausted: band to key 0
        tl.store(INFO + r * 4 + 1, lo)
        tl.store(INFO + r * 4 + 2, hi)


@triton.jit
def _scan_kernel(S, stride_s, LENS, STARTS, HSEL, n, sink, local, k, INFO, CNT, OUT, stride_o, BUFK,
                 BUFP, CAP, HAS_LENS: tl.constexpr, HAS_STARTS: tl.constexpr,
                 BLOCK: tl.constexpr):
    """Parallel over (row, block): keys above the bracket go to the output (at most k kept),
    the band's (key, pos) to the scratch buffer (at most CAP kept), through the per-row atomic
    cursors CNT[r] = (above, band), which count every match (the finish checks them)."""
    r = tl.program_id(0)
    blk = tl.program_id(1)
    r64 = r.to(tl.int64)
    vs, L = _row_range(LENS, STARTS, r, HSEL, n, HAS_LENS, HAS_STARTS)
    c_lo, c_hi = _cand_range(vs, L, sink, local)
    if c_lo + blk * BLOCK < c_hi:
        pos = c_lo + blk * BLOCK + tl.arange(0, BLOCK)
        m = pos < c_hi
        mode = tl.load(INFO + r * 4)
        if mode == 0:
            tl.store(OUT + r64 * stride_o + (pos - c_lo), pos, mask=m)
        else:
            lo = tl.load(INFO + r * 4 + 1).to(tl.uint32, bitcast=True)
            hi = tl.load(INFO + r * 4 + 2).to(tl.uint32, bitcast=True)
            key = _f32_key(tl.load(S + r64 * stride_s + pos, mask=m, other=0.0).to(tl.float32))
            up = m & (key > hi)
            ui = up.to(tl.int32)
            nup = tl.sum(ui, 0)
            if nup > 0:
                base = tl.atomic_add(CNT + r * 2, nup)
                dst = base + tl.cumsum(ui, 0) - ui
                tl.store(OUT + r64 * stride_o + dst, pos, mask=up & (dst < k))
            inb = m & (key >= lo) & (key <= hi)
            ii = inb.to(tl.int32)
            nin = tl.sum(ii, 0)
            if nin > 0:
                base2 = tl.atomic_add(CNT + r * 2 + 1, nin)
                dst = base2 + tl.cumsum(ii, 0) - ii
                ok = inb & (dst < CAP)
                tl.store(BUFK + r64 * CAP + dst, key.to(tl.int32, bitcast=True), mask=ok)
                tl.store(BUFP + r64 * CAP + dst, pos, mask=ok)


@triton.jit
def _finish_kernel(S, stride_s, LENS, STARTS, HSEL, n, sink, local, k, INFO, CNT, OUT, stride_o, KOUT,
                   BUFK, BUFP, CAP, FALLBACK, HAS_LENS: tl.constexpr,
                   HAS_STARTS: tl.constexpr, BLOCK: tl.constexpr):
    """Per row: exact k-th key among the band (or the whole row when the bracket failed; then
    FALLBACK[r] = 1 and the row is rewritten), write the band keys above it and the
    lowest-position ties, then the forced positions and -1 padding."""
    r = tl.program_id(0)
    r64 = r.to(tl.int64)
    srow = S + r64 * stride_s
    orow = OUT + r64 * stride_o
    bk = BUFK + r64 * CAP
    bp = BUFP + r64 * CAP
    vs, L = _row_range(LENS, STARTS, r, HSEL, n, HAS_LENS, HAS_STARTS)
    c_lo, c_hi = _cand_range(vs, L, sink, local)
    ncand = c_hi - c_lo
    offs = tl.arange(0, BLOCK)
    mode = tl.load(INFO + r * 4)
    cursor = ncand
    if mode != 0:
        nup = tl.load(CNT + r * 2)
        nband = tl.load(CNT + r * 2 + 1)
        use_buf = (nup < k) & (nup + nband >= k) & (nband <= CAP)
        tl.store(FALLBACK + r, (~use_buf).to(tl.int32))
        n_src = tl.where(use_buf, nband, ncand)
        rem = tl.where(use_buf, k - nup, k)
        cursor = tl.where(use_buf, nup, 0)
        want = (ncand * 0).to(tl.uint32)
        want, rem = _refine(srow, bk, bp, use_buf, c_lo, n_src, want, rem, 32, 24, 8, BLOCK)
        want, rem = _refine(srow, bk, bp, use_buf, c_lo, n_src, want, rem, 24, 16, 8, BLOCK)
        want, rem = _refine(srow, bk, bp, use_buf, c_lo, n_src, want, rem, 16, 8, 8, BLOCK)
        want, rem = _refine(srow, bk, bp, use_buf, c_lo, n_src, want, rem, 8, 0, 8, BLOCK)
        # ties at want: count them; when some must be dropped, find the position cutoff P
        # (the buffer is not in position order) by bisection over positions
        nt = ncand * 0
        for start in range(0, n_src, BLOCK):
            key, pos, valid = _load_src(srow, bk, bp, use_buf, c_lo, n_src, start + offs)
            nt += tl.sum((valid & (key == want)).to(tl.int32), 0)
        P = c_hi
        if nt > rem:
            lo = c_lo
            hi = c_hi - 1  # smallest P with count(ties at pos <= P) >= rem lies in [lo, hi]
            while lo < hi:
                mid = (lo + hi) // 2
                c = ncand * 0
                for start in range(0, n_src, BLOCK):
                    key, pos, valid = _load_src(srow, bk, bp, use_buf, c_lo, n_src, start + offs)
                    c += tl.sum((valid & (key == want) & (pos <= mid)).to(tl.int32), 0)
                if c >= rem:
                    hi = mid
                else:
                    lo = mid + 1
            P = lo
        for start in range(0, n_src, BLOCK):
            key, pos, valid = _load_src(srow, bk, bp, use_buf, c_lo, n_src, start + offs)
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


# sample size and margin (in binomial standard deviations of the sample rank) of the bracket;
# the CPU interpreter sorts slowly, so it samples less (same algorithm, a wider band)
SELECT_SAMPLE = 256 if os.environ.get("TRITON_INTERPRET", "0") in ("1", "true", "True") else 4096
SELECT_MARGIN = 4.0


def _scan_block(R: int, n: int, device: torch.device) -> int:
    """Elements per scan program: about one wave of programs over the GPU (fewer, longer
    programs hide the atomics' latency better than many short ones)."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 8
    want = R * n // (4 * sms)
    return int(min(8192, max(1024, triton.next_power_of_2(max(1, want)))))


def select_rows(
    scores: torch.Tensor,
    k: int,
    lens: torch.Tensor | None = None,
    rows_per_len: int = 1,
    sink: int = 0,
    local: int = 0,
    block: int = 2048,
    num_warps: int = 8,
    cap: int | None = None,
    sample: int | None = None,
    return_fallback: bool = False,
    starts: torch.Tensor | None = None,
):
    """Top-k positions of each row plus forced positions; the building block of the kernels.

    Args:
        scores: [R, n] (last dim contiguous; fp32/fp16/bf16).
        k: positions selected among each row's candidates.
        lens: int32 [R // rows_per_len] visible length of each group of rows (None: n).
        rows_per_len: consecutive rows sharing one length (e.g. the query heads of a sequence).
        starts: int32 [R // rows_per_len] first visible position of each group of rows (left
            padding; None: 0). Row r sees positions [starts, lens).
        sink, local: forced first / last visible positions of each row (appended after the
            top-k; they are not candidates).
        cap: scratch entries per row for the band around the k-th key (default
            max(8192, 2k)); a larger band falls back to re-reading the row.
        sample: sample size of the bracket (power of two; default `SELECT_SAMPLE`).
        return_fallback: also return int32 [R], 1 where a row took the slow path.

    Returns:
        int32 [R, k + sink + local]: the selected positions (order: unspecified within the
        top-k part, then the forced ones), -1 where a row has fewer.
    """
    R, n = scores.shape
    if scores.stride(-1) != 1:
        scores = scores.contiguous()
    dev = scores.device
    has_lens, has_starts = lens is not None, starts is not None
    if not has_lens and not has_starts:
        rows_per_len = 1
    lens = lens if has_lens else scores  # never read when absent
    starts = starts if has_starts else scores
    kout = k + sink + local
    out = torch.empty(R, kout, dtype=torch.int32, device=dev)
    cap = min(n, max(8192, 2 * k)) if cap is None else max(1, cap)
    ns = SELECT_SAMPLE if sample is None else sample
    if ns <= 0 or ns & (ns - 1):
        raise ValueError(f"sample must be a power of two, got {ns}")
    ns = min(ns, max(16, triton.next_power_of_2(n)))  # a sample never needs more than the row
    cnt = torch.zeros(R, 2, dtype=torch.int32, device=dev)
    info = torch.empty(R, 4, dtype=torch.int32, device=dev)
    bufk = torch.empty(R, cap, dtype=torch.int32, device=dev)
    bufp = torch.empty(R, cap, dtype=torch.int32, device=dev)
    fallback = torch.zeros(R, dtype=torch.int32, device=dev)
    _bracket_kernel[(R,)](
        scores, scores.stride(0), lens, starts, rows_per_len, n, sink, local, k, info,
        SELECT_MARGIN, HAS_LENS=has_lens, HAS_STARTS=has_starts, NS=ns, num_warps=8,
    )
    sblock = _scan_block(R, n, dev)
    _scan_kernel[(R, triton.cdiv(n, sblock))](
        scores, scores.stride(0), lens, starts, rows_per_len, n, sink, local, k, info, cnt, out,
        out.stride(0), bufk, bufp, cap, HAS_LENS=has_lens, HAS_STARTS=has_starts, BLOCK=sblock,
        num_warps=8 if sblock >= 2048 else 4,
    )
    _finish_kernel[(R,)](
        scores, scores.stride(0), lens, starts, rows_per_len, n, sink, local, k, info, cnt, out,
        out.stride(0), kout, bufk, bufp, cap, fallback, HAS_LENS=has_lens,
        HAS_STARTS=has_starts, BLOCK=block,
        num_warps=num_warps,
    )
    return (out, fallback) if return_fallback else out


def topk_select(scores: torch.Tensor, k: int, sort: bool = False) -> torch.Tensor:
    """Indices of the ``k`` largest scores of each row (exact; ties: lowest position wins).

    Args:
        scores: [R, n] float32 / float16 / bfloat16 (compared in fp32).
        k: number of positions per row (k >= n returns every position).
        sort: return each row's positions in ascending order (costs a sort of [R, k]).

    Returns:
        int32 [R, min(k, n)] positions; the set equals `topk_select_reference`'s.
    """
    _check(scores, k)
    out = select_rows(scores, min(k, scores.shape[1]))
    return out.sort(dim=-1).values if sort else out
