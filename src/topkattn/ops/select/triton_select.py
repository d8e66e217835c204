"""Exact top-k selection per row in Triton: radix select over the fp32 bit pattern, no sort.

Design (one row = one selection problem; n up to 1M, k up to 8192):
1. ``_hist_kernel`` (grid rows x blocks): 256-bin histogram of the top byte of the
   order-preserving uint32 key of every candidate score (atomics into [R, 256]; the decode
   kernel accumulates this level inside its scores pass instead, see `hist_level1`); a second
   round over the next byte, among keys of the level-1 bin, narrows it to a 16-bit bin b (two
   256-bin rounds cost far less than one 4096-bin histogram: Triton's histogram is O(bins) per
   element). The bin picks are recomputed from the histograms by the next kernel's programs
   (no separate pick launches); scratch is one zeroed buffer (`select_workspace`).
2. ``_scan_kernel`` (grid rows x blocks): streams the row once, writing every position of a
   higher bin straight to the output and compacting the (key, position) pairs of bin b into a
   scratch buffer, both through per-row atomic cursors.
3. ``_finish_kernel`` (one program per row): two radix passes (8 + 8 bits) over that
   small buffer give the exact k-th key T and the number of ties at T still needed; the
   rare partial tie is cut at a position found by bisection (the lowest positions win, as in
   the reference); a last pass writes keys > T and the kept ties. When bin b is larger than
   the buffer, the refinement passes re-read the row instead (slower, same result).

Rows may carry a visible range [start, L) (per-sequence left / right padding) and ``sink`` /
``local`` forced positions (visible positions below ``sink`` and the last ``local`` visible ones): forced positions are
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


@triton.jit
def hist_level1(key, m, HIST, r):
    """Accumulate the 256-bin histogram of key bits [31:24] (keys where m) into HIST row r;
    shared with the decode scores kernel, which fuses this level into its pass."""
    h = tl.histogram((key >> 24).to(tl.int32), 256, mask=m)
    tl.atomic_add(HIST + r.to(tl.int64) * 256 + tl.arange(0, 256), h, mask=h > 0)


@triton.jit
def _level1(HIST1, r, k):
    """Level-1 pick from the top-byte histogram: (bin, count above it)."""
    h = tl.load(HIST1 + r.to(tl.int64) * 256 + tl.arange(0, 256))
    b1, above1, _ = _pick(h, k, 256)
    return b1, above1


@triton.jit
def _hist_kernel(S, stride_s, LENS, STARTS, HSEL, n, sink, local, k, HIST1, HIST2,
                 LEVEL2: tl.constexpr, HAS_LENS: tl.constexpr, HAS_STARTS: tl.constexpr,
                 BLOCK: tl.constexpr, ITERS: tl.constexpr):
    """256-bin histogram of key bits [31:24] into HIST1 (level 1) or of bits [23:16] among keys
    whose top byte is the level-1 bin into HIST2 (level 2; each program re-derives the level-1
    pick from HIST1, so no separate pick launch). Each program counts ITERS consecutive blocks
    in registers, then adds its counts with one atomic per bin."""
    r = tl.program_id(0)
    first = tl.program_id(1) * (BLOCK * ITERS)
    vs, L = _row_range(LENS, STARTS, r, HSEL, n, HAS_LENS, HAS_STARTS)
    c_lo, c_hi = _cand_range(vs, L, sink, local)
    go = first < c_hi
    if LEVEL2:
        go = go & (c_hi - c_lo > k)
    if go:
        b1 = (r * 0).to(tl.uint32)
        if LEVEL2:
            b1 = _level1(HIST1, r, k)[0].to(tl.uint32)
        h = tl.zeros([256], tl.int32)
        for it in range(ITERS):
            pos = first + it * BLOCK + tl.arange(0, BLOCK)
            m = (pos >= c_lo) & (pos < c_hi)
            x = tl.load(S + r.to(tl.int64) * stride_s + pos, mask=m, other=0.0).to(tl.float32)
            key = _f32_key(x)
            if LEVEL2:
                m = m & ((key >> 24) == b1)
                h += tl.histogram(((key >> 16) & 255).to(tl.int32), 256, mask=m)
            else:
                h += tl.histogram((key >> 24).to(tl.int32), 256, mask=m)
        dst = HIST2 if LEVEL2 else HIST1
        tl.atomic_add(dst + r.to(tl.int64) * 256 + tl.arange(0, 256), h, mask=h > 0)


@triton.jit
def _scan_kernel(S, stride_s, LENS, STARTS, HSEL, n, sink, local, k, HIST1, HIST2, INFO, CNT, OUT,
                 stride_o, BUFK, BUFP, CAP, HAS_LENS: tl.constexpr, HAS_STARTS: tl.constexpr,
                 BLOCK: tl.constexpr, ITERS: tl.constexpr):
    """Parallel over (row, ITERS consecutive blocks): each program derives the 16-bit bin b
    holding the k-th key from the two histograms once (the first program records it in INFO =
    (mode, b, count above b, count in b) for the finish; mode 0 = keep all candidates);
    positions above b go to the output, b's (key, pos) to the scratch buffer, each through a
    per-row atomic cursor (order within a row varies)."""
    r = tl.program_id(0)
    pid = tl.program_id(1)
    r64 = r.to(tl.int64)
    vs, L = _row_range(LENS, STARTS, r, HSEL, n, HAS_LENS, HAS_STARTS)
    c_lo, c_hi = _cand_range(vs, L, sink, local)
    mode = (c_hi - c_lo > k).to(tl.int32)
    b1, above1 = _level1(HIST1, r, k)
    h2 = tl.load(HIST2 + r64 * 256 + tl.arange(0, 256))
    b2, above2, nb = _pick(h2, k - above1, 256)
    bu = (b1 * 256 + b2).to(tl.uint32)
    if pid == 0:
        tl.store(INFO + r * 4 + 0, mode)
        tl.store(INFO + r * 4 + 1, bu.to(tl.int32))
        tl.store(INFO + r * 4 + 2, above1 + above2)
        tl.store(INFO + r * 4 + 3, nb)
    for it in range(ITERS):
        blk = pid * ITERS + it
        if c_lo + blk * BLOCK < c_hi:
            pos = c_lo + blk * BLOCK + tl.arange(0, BLOCK)
            m = pos < c_hi
            if mode == 0:
                tl.store(OUT + r64 * stride_o + (pos - c_lo), pos, mask=m)
            else:
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
def _finish_kernel(S, stride_s, LENS, STARTS, HSEL, n, sink, local, k, INFO, OUT, stride_o, KOUT,
                   BUFK, BUFP, CAP, HAS_LENS: tl.constexpr, HAS_STARTS: tl.constexpr,
                 BLOCK: tl.constexpr):
    """Per row: exact k-th key among bin b's candidates (8+8+4 bit radix passes), write keys
    above it and the lowest-position ties, then the forced positions and -1 padding."""
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


# blocks per histogram / scan program, at most (programs that cover several blocks derive the
# bin picks once and issue fewer atomics; kept so that ~2 programs per SM remain)
SELECT_ITERS = 4


def _iters(programs: int, device: torch.device) -> int:
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    it = 1
    while it * 2 <= SELECT_ITERS and programs // (it * 2) >= 2 * sms:
        it *= 2
    return it


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
    work: torch.Tensor | None = None,
    hist_done: bool = False,
    starts: torch.Tensor | None = None,
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
        work, hist_done: zeroed scratch from `select_workspace`; with ``hist_done`` its level-1
            histogram was already accumulated by the caller (`hist_level1` over the candidate
            positions of each row, exactly the scores passed here).
        starts: int32 [R // rows_per_len] first visible position of each group of rows (left
            padding; None: 0). Row r sees positions [starts, lens).

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
    if work is None:
        work = select_workspace(R, dev)
    hist1, hist2, cnt = _split_workspace(work, R)
    cap = min(n, max(16384, 2 * k)) if cap is None else max(1, cap)
    bufk = torch.empty(R, cap, dtype=torch.int32, device=dev)
    bufp = torch.empty(R, cap, dtype=torch.int32, device=dev)
    info = torch.empty(R, 4, dtype=torch.int32, device=dev)
    # enough programs to fill the GPU when there are few rows (B=1 decode)
    hblock = 4096 if R * triton.cdiv(n, 4096) >= 1024 else (2048 if R * triton.cdiv(n, 2048) >= 512 else 1024)
    hiters = _iters(R * triton.cdiv(n, hblock), dev)
    for level in ((1,) if hist_done else (0, 1)):
        _hist_kernel[(R, triton.cdiv(n, hblock * hiters))](
            scores, scores.stride(0), lens, starts, rows_per_len, n, sink, local, k, hist1, hist2,
            LEVEL2=level == 1, HAS_LENS=has_lens, HAS_STARTS=has_starts, BLOCK=hblock,
            ITERS=hiters, num_warps=8,
        )
    sblock = 2048 if R * triton.cdiv(n, 2048) >= 512 else 1024
    siters = _iters(R * triton.cdiv(n, sblock), dev)
    _scan_kernel[(R, triton.cdiv(n, sblock * siters))](
        scores, scores.stride(0), lens, starts, rows_per_len, n, sink, local, k, hist1, hist2, info, cnt,
        out, out.stride(0), bufk, bufp, cap, HAS_LENS=has_lens, HAS_STARTS=has_starts, BLOCK=sblock,
        ITERS=siters, num_warps=8 if sblock >= 2048 else 4,
    )
    _finish_kernel[(R,)](
        scores, scores.stride(0), lens, starts, rows_per_len, n, sink, local, k, info, out, out.stride(0),
        kout, bufk, bufp, cap, HAS_LENS=has_lens, HAS_STARTS=has_starts, BLOCK=block, num_warps=num_warps,
    )
    return out


def select_workspace(R: int, device: torch.device) -> torch.Tensor:
    """Zeroed int32 scratch of `select_rows` for R rows (two [R, 256] histograms and the [R, 2]
    cursors), one memset. Pass it as ``work``; the decode kernel fills the level-1 histogram
    (``work[:R * 256]``) while it computes the scores and then passes ``hist_done=True``."""
    return torch.zeros(R * 514, dtype=torch.int32, device=device)


def _split_workspace(work: torch.Tensor, R: int):
    return work[: R * 256], work[R * 256: R * 512], work[R * 512: R * 514]


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
