"""Exact top-k selection per row in Triton: radix select over the fp32 bit pattern, no sort.

Design (one row = one selection problem; n up to 1M, k up to 8192):
1. ``_hist_kernel`` (grid rows x blocks): 256-bin histogram of the top byte of the
   order-preserving uint32 key of every candidate score (atomics into [R, 256]);
   ``_pick_kernel`` (one program per row) picks the byte holding the k-th largest key; a second
   hist/pick round over the next byte narrows it to a 16-bit bin b (two 256-bin rounds cost far
   less than one 4096-bin histogram: Triton's histogram is O(bins) per element).
3. ``_scan_kernel`` (grid rows x blocks): streams the row once, writing every position of a
   higher bin straight to the output and compacting the (key, position) pairs of bin b into a
   scratch buffer, both through per-row atomic cursors.
4. ``_finish_kernel`` (one program per row): two radix passes (8 + 8 bits) over that
   small buffer give the exact k-th key T and the number of ties at T still needed; the
   rare partial tie is cut at a position found by bisection (the lowest positions win, as in
   the reference); a last pass writes keys > T and the kept ties. When bin b is larger than
   the buffer, the refinement passes re-read the row instead (slower, same result).

Rows may carry a visible length L (per-sequence lengths) and ``sink`` / ``local`` forced
positions (the first ``sink`` and last ``local`` visible positions): forced positions are
appended after the top-k of the remaining candidates, and the rest of each output row is -1.
Scores are compared in fp32; -0.0 equals +0.0; NaN is not supported.
"""

from __future__ import annotations

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
def _cand_range(L, sink, local):
    """Candidates of a row with L visible keys: [c_lo, c_hi); the rest of [0, L) is forced."""
    c_lo = tl.minimum(sink, L)
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
    """One radix pass: fix key bits [SHIFT, HI) of the k-th key among keys matching want>>HI."""
    offs = tl.arange(0, BLOCK)
    h = tl.zeros([1 << NBITS], dtype=tl.int32)
    for start in range(0, n_src, BLOCK):
        key, pos, valid = _load_src(srow, bk, bp, use_buf, c_lo, n_src, start + offs)
        match = valid & ((key >> HI) == (want >> HI))
        d = ((key >> SHIFT) & ((1 << NBITS) - 1)).to(tl.int32)
        h += tl.histogram(d, 1 << NBITS, mask=match)
    d, above, nd = _pick(h, rem, 1 << NBITS)
    return want | (d.to(tl.uint32) << SHIFT), rem - above


@triton.jit
def _hist_kernel(S, stride_s, LENS, HSEL, sink, local, HIST, INFO, LEVEL2: tl.constexpr,
                 BLOCK: tl.constexpr):
    """256-bin histogram of key bits [31:24] (level 1) or of bits [23:16] among keys whose
    top byte is the level-1 bin (level 2), accumulated with atomics into HIST [R, 256]."""
    r = tl.program_id(0)
    blk = tl.program_id(1)
    L = tl.load(LENS + r // HSEL)
    c_lo, c_hi = _cand_range(L, sink, local)
    go = blk * BLOCK < c_hi
    if LEVEL2:
        go = go & (tl.load(INFO + r * 4) != 0)
    if go:
        pos = blk * BLOCK + tl.arange(0, BLOCK)
        m = (pos >= c_lo) & (pos < c_hi)
        x = tl.load(S + r.to(tl.int64) * stride_s + pos, mask=m, other=0.0).to(tl.float32)
        key = _f32_key(x)
        if LEVEL2:
            b1 = tl.load(INFO + r * 4 + 1).to(tl.uint32)
            m = m & ((key >> 24) == b1)
            dg = ((key >> 16) & 255).to(tl.int32)
        else:
            dg = (key >> 24).to(tl.int32)
        h = tl.histogram(dg, 256, mask=m)
        tl.atomic_add(HIST + r.to(tl.int64) * 256 + tl.arange(0, 256), h, mask=h > 0)


@triton.jit
def _pick_kernel(HIST, LENS, HSEL, sink, local, k, INFO, LEVEL2: tl.constexpr):
    """Per row: INFO = (mode, bin, count above the bin, count in the bin); mode 0 = keep all
    candidates. Level 1 picks the top byte; level 2 extends it to the top 16 bits."""
    r = tl.program_id(0)
    L = tl.load(LENS + r // HSEL)
    c_lo, c_hi = _cand_range(L, sink, local)
    h = tl.load(HIST + r.to(tl.int64) * 256 + tl.arange(0, 256))
    if LEVEL2:
        mode = tl.load(INFO + r * 4)
        b1 = tl.load(INFO + r * 4 + 1)
        above1 = tl.load(INFO + r * 4 + 2)
        b2, above2, nb = _pick(h, k - above1, 256)
        if mode != 0:
            tl.store(INFO + r * 4 + 1, b1 * 256 + b2)
            tl.store(INFO + r * 4 + 2, above1 + above2)
            tl.store(INFO + r * 4 + 3, nb)
    else:
        b, above, nb = _pick(h, k, 256)
        tl.store(INFO + r * 4 + 0, (c_hi - c_lo > k).to(tl.int32))
        tl.store(INFO + r * 4 + 1, b)
        tl.store(INFO + r * 4 + 2, above)
        tl.store(INFO + r * 4 + 3, nb)


@triton.jit
def _scan_kernel(S, stride_s, LENS, HSEL, sink, local, INFO, CNT, OUT, stride_o, BUFK, BUFP,
                 CAP, BLOCK: tl.constexpr):
    """Parallel over (row, block): positions above bin b go to the output, bin b's (key, pos)
    to the scratch buffer, each through a per-row atomic cursor (order within a row varies)."""
    r = tl.program_id(0)
    blk = tl.program_id(1)
    r64 = r.to(tl.int64)
    L = tl.load(LENS + r // HSEL)
    c_lo, c_hi = _cand_range(L, sink, local)
    pos = c_lo + blk * BLOCK + tl.arange(0, BLOCK)
    m = pos < c_hi
    mode = tl.load(INFO + r * 4)
    if c_lo + blk * BLOCK < c_hi:
        if mode == 0:
            tl.store(OUT + r64 * stride_o + (pos - c_lo), pos, mask=m)
        else:
            bu = tl.load(INFO + r * 4 + 1).to(tl.uint32)
            nb = tl.load(INFO + r * 4 + 3)
            key = _f32_key(tl.load(S + r64 * stride_s + pos, mask=m, other=0.0).to(tl.float32))
            pre = key >> 16
            up = m & (pre > bu)
            ui = up.to(tl.int32)
            nup = tl.sum(ui, 0)
            if nup > 0:
                base = tl.atomic_add(CNT + r * 2, nup)
                tl.store(OUT + r64 * stride_o + (base + tl.cumsum(ui, 0) - ui), pos, mask=up)
            if nb <= CAP:
                inb = m & (pre == bu)
                ii = inb.to(tl.int32)
                nin = tl.sum(ii, 0)
                if nin > 0:
                    base2 = tl.atomic_add(CNT + r * 2 + 1, nin)
                    dst = base2 + tl.cumsum(ii, 0) - ii
                    tl.store(BUFK + r64 * CAP + dst, key.to(tl.int32, bitcast=True), mask=inb)
                    tl.store(BUFP + r64 * CAP + dst, pos, mask=inb)


@triton.jit
def _finish_kernel(S, stride_s, LENS, HSEL, sink, local, k, INFO, OUT, stride_o, KOUT,
                   BUFK, BUFP, CAP, BLOCK: tl.constexpr):
    """Per row: exact k-th key among bin b's candidates (8+8+4 bit radix passes), write keys
    above it and the lowest-position ties, then the forced positions and -1 padding."""
    r = tl.program_id(0)
    r64 = r.to(tl.int64)
    srow = S + r64 * stride_s
    orow = OUT + r64 * stride_o
    bk = BUFK + r64 * CAP
    bp = BUFP + r64 * CAP
    L = tl.load(LENS + r // HSEL)
    c_lo, c_hi = _cand_range(L, sink, local)
    ncand = c_hi - c_lo
    offs = tl.arange(0, BLOCK)
    mode = tl.load(INFO + r * 4)
    cursor = ncand
    if mode != 0:
        bu = tl.load(INFO + r * 4 + 1).to(tl.uint32)
        above = tl.load(INFO + r * 4 + 2)
        nb = tl.load(INFO + r * 4 + 3)
        rem = k - above
        cursor = above
        use_buf = nb <= CAP
        n_src = tl.where(use_buf, nb, ncand)
        want = bu << 16
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
            match = valid & ((key >> 16) == bu)
            sel = match & ((key > want) | ((key == want) & (pos <= P)))
            si = sel.to(tl.int32)
            tl.store(orow + (cursor + tl.cumsum(si, 0) - si), pos, mask=sel)
            cursor += tl.sum(si, 0)
    # forced positions: [0, c_lo) and [c_hi, L)
    for start in range(0, c_lo, BLOCK):
        pos = start + offs
        tl.store(orow + cursor + pos, pos, mask=pos < c_lo)
    cursor += c_lo
    for start in range(c_hi, L, BLOCK):
        pos = start + offs
        tl.store(orow + cursor + (pos - c_hi), pos, mask=pos < L)
    cursor += L - c_hi
    for start in range(cursor, KOUT, BLOCK):
        i = start + offs
        tl.store(orow + i, tl.full([BLOCK], -1, tl.int32), mask=i < KOUT)


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
) -> torch.Tensor:
    """Top-k positions of each row plus forced positions; the building block of the kernels.

    Args:
        scores: [R, n] (last dim contiguous; fp32/fp16/bf16).
        k: positions selected among each row's candidates.
        lens: int32 [R // rows_per_len] visible length of each group of rows (None: n).
        rows_per_len: consecutive rows sharing one length (e.g. the query heads of a sequence).
        sink, local: forced first / last visible positions of each row (appended after the
            top-k; they are not candidates).
        cap: scratch entries per row for the candidates of the threshold bin (default
            max(16384, 2k)); a larger bin falls back to re-reading the row.

    Returns:
        int32 [R, k + sink + local]: the selected positions (order: unspecified within the
        top-k part, then the forced ones), -1 where a row has fewer.
    """
    R, n = scores.shape
    if scores.stride(-1) != 1:
        scores = scores.contiguous()
    dev = scores.device
    if lens is None:
        lens = torch.full((R,), n, dtype=torch.int32, device=dev)
        rows_per_len = 1
    kout = k + sink + local
    out = torch.empty(R, kout, dtype=torch.int32, device=dev)
    hist = torch.zeros(2, R, 256, dtype=torch.int32, device=dev)
    cap = min(n, max(16384, 2 * k)) if cap is None else max(1, cap)
    bufk = torch.empty(R, cap, dtype=torch.int32, device=dev)
    bufp = torch.empty(R, cap, dtype=torch.int32, device=dev)
    hblock = 4096
    info = torch.empty(R, 4, dtype=torch.int32, device=dev)
    cnt = torch.zeros(R, 2, dtype=torch.int32, device=dev)
    for level in (0, 1):
        _hist_kernel[(R, triton.cdiv(n, hblock))](
            scores, scores.stride(0), lens, rows_per_len, sink, local, hist[level], info,
            LEVEL2=level == 1, BLOCK=hblock, num_warps=8,
        )
        _pick_kernel[(R,)](hist[level], lens, rows_per_len, sink, local, k, info, LEVEL2=level == 1,
                           num_warps=4)
    sblock = 2048
    _scan_kernel[(R, triton.cdiv(n, sblock))](
        scores, scores.stride(0), lens, rows_per_len, sink, local, info, cnt, out, out.stride(0),
        bufk, bufp, cap, BLOCK=sblock, num_warps=8,
    )
    _finish_kernel[(R,)](
        scores, scores.stride(0), lens, rows_per_len, sink, local, k, info, out, out.stride(0),
        kout, bufk, bufp, cap, BLOCK=block, num_warps=num_warps,
    )
    return out


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
