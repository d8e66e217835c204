"""Top-k prefill / training attention in Triton, forward and backward, memory linear in length.

Every query row attends to its own ``topk`` highest-scoring visible keys (plus sink/local)
without materialising the n x n scores. Per selection row the threshold search stores the
threshold key T (the k-th largest candidate key itself, key = ``f32_key(score)``, the uint32
whose order is the fp32 order) and the tie cutoff position P: selected = key > T or (key == T
and pos <= P); P = P_INF unless ties at T must be cut (lowest positions win, as in the
reference). Rows with at most ``topk`` candidates store T = 0, P = P_INF (everything selected).
The threshold search is `topkattn.ops.select.prefill_threshold.prefill_thresholds`; the score
helpers every kernel shares are in `topkattn.ops.topk.prefill_scores`.

Attention: ``_fwd_kernel`` is flash attention masked by (T, P) and sink/local (stores the LSE);
``_bwd_dq_kernel`` / ``_bwd_dkdv_kernel`` are the flash-attention backward through the same mask
(dk, dv summed over the query heads of each KV head). Tiles inside every row's candidate range
(most of them) skip the visibility / sink / local masks; the test against (T, P) runs as fp32
compares (``_above``), equivalent to the key compares.

``granularity="kv_group"``: one selected set per (b, KV head), the threshold search running on
the scores summed over the group's G query heads (``_group_scores``, recomputed alike by every
kernel for the mask); each query head then attends with its own scores and softmax. Padding:
sequence b sees only keys in [starts[b], ends[b]) (left / right padding; rows that see none
give zero output).

NaN / inf policy, the reference's (`topkattn.ops.topk.naive`): a NaN selection score is
selected (``_above``; with kv_group the helper reads a NaN group sum as +inf, so the threshold
search ranks it first and ties among such keys keep the lowest positions), so its row comes
out NaN; lse is +inf where a selected score is +inf. Values: ``prefill_forward`` flags each
(b, KV head) whose values hold a NaN / inf (one device-side reduction, no sync); those programs
take the key loop of ``_pv_nonfinite`` (a value outside the selection takes no part, a selected
one poisons its output column), the others the plain product. The backward reads such values
as 0 and passes no gradient through non-finite outputs, as the reference's backward does.

All kernels of one call compute scores with the same helper (the same operands, one mma chain
over the head dim) so that the keys compared against T are bit-identical to those used to find
it. On the GPU that holds under any tile shape and warp count, so each kernel has its own tile
(`topkattn.ops.tuning.PrefillTuning`, by granularity); the threshold search's kernels share one.
Under the interpreter (numpy matmul, whose rounding depends on the shapes) every kernel of a call
takes the same tile (``PrefillTuning.tiles_cpu``).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from topkattn.errors import InputError
from topkattn.ops.select import _interp  # noqa: F401  (interpreter shim)
from topkattn.ops.select.prefill_threshold import prefill_thresholds
from topkattn.ops.topk.prefill_scores import (  # noqa: F401  (selection_scores: re-exported)
    P_INF, _group_scores, _load_rows, _row_info, _sel_block, _tile_ranges, launch_options,
    prefill_tiles, qkv_strides, selection_scores, seq_bounds,
)
from topkattn.ops.topk.triton_sparse import INTERPRET, check_qkv, mm, unit_stride
from topkattn.ops.tuning import PrefillTile, PrefillTiles, current, uniform_tiles  # noqa: F401

LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)  # softmax in base 2: one fma per exp2


@triton.jit
def _key_f32(u):
    """Inverse of ``f32_key`` (uint32 key -> fp32)."""
    b = tl.where((u >> 31) != 0, u & 0x7FFFFFFF, u ^ 0xFFFFFFFF)
    return b.to(tl.float32, bitcast=True)


@triton.jit
def _thr_f32(T):
    """fp32 threshold [BM] of the uint32 threshold keys T [BM]; T = 0 (select every candidate)
    gives -inf."""
    return tl.where(T == 0, float("-inf"), _key_f32(T))


@triton.jit
def _above(s, pos, Tf, P):
    """bool [BM, BN]: key(s) > T or (key(s) == T and pos <= P), as fp32 compares against
    Tf = ``_thr_f32(T)`` (the key order is the fp32 order with -0 == +0; the compares are not
    flush-to-zero). A NaN score is selected (``not s <= Tf``), so that its row comes out NaN as
    in the reference, which ranks NaN first."""
    return ~(s <= Tf[:, None]) | ((s == Tf[:, None]) & (pos[None, :] <= P[:, None]))


@triton.jit
def _above_fast(s, pos, Tf, P, ties):
    """``_above``, or the single compare s >= Tf when ``ties`` (a runtime scalar, uniform over the
    row block) is false: no row of the block cuts ties by position (P = P_INF), which is the
    common case."""
    if ties:
        sel = _above(s, pos, Tf, P)
    else:
        sel = ~(s < Tf[:, None])  # s >= Tf, or NaN (one unordered compare)
    return sel


@triton.jit
def _cuts_ties(P, rm):
    """Whether any valid row (rm) of a block cuts ties at its threshold by position."""
    return tl.sum((rm & (P != P_INF)).to(tl.int32), 0) > 0


@triton.jit
def _sel_mask(s, pos, vs, vis_end, c_lo, c_hi, Tf, P):
    """bool [BM, BN]: selected entries (visible non-candidates, i.e. sink / local, and
    candidates passing ``_above``)."""
    vis = (pos[None, :] >= vs) & (pos[None, :] < vis_end[:, None])
    cand = (pos[None, :] >= c_lo[:, None]) & (pos[None, :] < c_hi[:, None])
    return (vis & ~cand) | (cand & _above(s, pos, Tf, P))


@triton.jit
def _scores_sel(q, qg, kt, pos, sqh, sqm, m, d, Lq, G, scale, vs, vis_end, c_lo, c_hi, Tf, P,
                ties, MASKED: tl.constexpr, GROUP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """Scaled scores [BM, BN] of one key tile kt [BN, D] and the selection mask of the tile
    (from the group's summed scores with GROUP; MASKED as in ``_fwd_seg``)."""
    s = mm(q, tl.trans(kt), IEEE, UPCAST) * scale
    if GROUP:
        ssel = _group_scores(qg, sqh, sqm, m, d, Lq, G, kt, scale, BM, BN, IEEE, UPCAST)
    else:
        ssel = s
    if MASKED:
        sel = _sel_mask(ssel, pos, vs, vis_end, c_lo, c_hi, Tf, P)
    else:
        sel = _above_fast(ssel, pos, Tf, P, ties)
    return s, sel


@triton.jit
def _pv_nonfinite(acc, alpha, p, vt, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """acc * alpha + p @ vt for values vt [BN, D] that may hold NaN / inf, as the reference
    weighs them: an entry j with p_j = 0 (not selected) takes no part (no 0 * NaN); a selected one
    (p_j > 0) makes its output column NaN (a NaN, or +inf and -inf) or +/-inf. The product runs
    on the finite part; two 0/1 products count the NaN-or-+inf and NaN-or--inf entries taken."""
    vf = vt.to(tl.float32)  # (the interpreter compares bf16 NaN as equal to itself)
    nan = vf != vf
    pinf = vf == float("inf")
    ninf = vf == float("-inf")
    clean = tl.where(nan | pinf | ninf, tl.zeros_like(vt), vt)
    acc = tl.where(alpha[:, None] == 0, 0.0, acc * alpha[:, None])  # no inf * 0 (weight gone)
    acc += mm(p.to(vt.dtype), clean, IEEE, UPCAST)
    taken = tl.where(p > 0, 1.0, 0.0).to(vt.dtype)
    up = mm(taken, tl.where(nan | pinf, 1.0, 0.0).to(vt.dtype), IEEE, UPCAST)
    down = mm(taken, tl.where(nan | ninf, 1.0, 0.0).to(vt.dtype), IEEE, UPCAST)
    return acc + tl.where(up > 0, tl.where(down > 0, float("nan"), float("inf")),
                          tl.where(down > 0, float("-inf"), 0.0))


@triton.jit
def _fwd_seg(acc, m_i, l_i, q, qg, kbase, vbase, lo, hi, skn, svn, sqh, sqm, m, d, Lq, Lk, G,
             scale, vs, vis_end, c_lo, c_hi, Tf, P, ties, MASKED: tl.constexpr, GROUP: tl.constexpr,
             BM: tl.constexpr, BN: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
             SAFE: tl.constexpr):
    """Online-softmax update (acc [BM, D], m_i, l_i [BM]) over key tiles lo, lo+BN, ... < hi;
    MASKED: full visibility / sink / local mask, else every entry is a candidate (interior).
    SAFE: the values may hold NaN / inf (``_pv_nonfinite``)."""
    for start in range(lo, hi, BN):
        pos = start + tl.arange(0, BN)
        kt = _load_rows(kbase, start, skn, Lk, d, BN)
        s, sel = _scores_sel(q, qg, kt, pos, sqh, sqm, m, d, Lq, G, scale, vs, vis_end, c_lo,
                             c_hi, Tf, P, ties, MASKED, GROUP, BM, BN, IEEE, UPCAST)
        s = tl.where(sel, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m2 = tl.where(m_new == float("-inf"), 0.0, m_new) * LOG2E
        alpha = tl.math.exp2(m_i * LOG2E - m2)
        p = tl.math.exp2(tl.fma(s, LOG2E, -m2[:, None]))
        vt = _load_rows(vbase, start, svn, Lk, d, BN)
        if SAFE:
            acc = _pv_nonfinite(acc, alpha, p, vt, IEEE, UPCAST)
        else:
            acc = acc * alpha[:, None] + mm(p.to(vt.dtype), vt, IEEE, UPCAST)
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _fwd_segs(q, qg, kbase, vbase, n_lo, e0, e1, n_end, skn, svn, sqh, sqm, m, d, Lq, Lk, G,
              scale, vs, vis_end, c_lo, c_hi, Tf, P, ties, GROUP: tl.constexpr, BM: tl.constexpr,
              BN: tl.constexpr, D: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
              SAFE: tl.constexpr):
    """(acc [BM, D], m_i, l_i [BM]) over the masked / interior / masked key tiles of a row block."""
    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, D], tl.float32)
    acc, m_i, l_i = _fwd_seg(acc, m_i, l_i, q, qg, kbase, vbase, n_lo, e0, skn, svn, sqh, sqm, m,
                             d, Lq, Lk, G, scale, vs, vis_end, c_lo, c_hi, Tf, P, ties, True, GROUP,
                             BM, BN, IEEE, UPCAST, SAFE)
    acc, m_i, l_i = _fwd_seg(acc, m_i, l_i, q, qg, kbase, vbase, e0, e1, skn, svn, sqh, sqm, m,
                             d, Lq, Lk, G, scale, vs, vis_end, c_lo, c_hi, Tf, P, ties, False, GROUP,
                             BM, BN, IEEE, UPCAST, SAFE)
    acc, m_i, l_i = _fwd_seg(acc, m_i, l_i, q, qg, kbase, vbase, e1, n_end, skn, svn, sqh, sqm,
                             m, d, Lq, Lk, G, scale, vs, vis_end, c_lo, c_hi, Tf, P, ties, True,
                             GROUP, BM, BN, IEEE, UPCAST, SAFE)
    return acc, m_i, l_i


@triton.jit
def _head_thresholds(Q, TB, PB, bh, b, h, m, sqb, sqh, Hq, G, Lq, GROUP: tl.constexpr):
    """For query head (b, h) and rows m [BM]: output rows [BM] (int64), row mask, the group's
    first query head pointer (GROUP; else Q) and the selection threshold (fp32) and tie cutoff
    of each row (per (b, KV head) with GROUP)."""
    row = bh.to(tl.int64) * Lq + m
    rm = m < Lq
    if GROUP:  # thresholds per (b, KV head)
        trow = (b * (Hq // G) + h // G).to(tl.int64) * Lq + m
        qg = Q + b.to(tl.int64) * sqb + (h // G * G).to(tl.int64) * sqh
    else:
        trow = row
        qg = Q
    Tf = _thr_f32(tl.load(TB + trow, mask=rm, other=0).to(tl.uint32, bitcast=True))
    P = tl.load(PB + trow, mask=rm, other=0)
    return row, rm, qg, Tf, P


@triton.jit
def _fwd_kernel(Q, K, V, TB, PB, ST, EN, VBAD, O, LSE, sqb, sqh, sqm, skb, skh, skn, svb, svh,
                svn, Hq, G, Lq, Lk, sink, local, scale, CAUSAL: tl.constexpr,
                GROUP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr,
                IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """Flash attention over the selected keys (grid: B*Hq, query blocks, longest first): key
    tiles inside every row's candidate range skip the visibility / sink / local masks. VBAD
    int32 [B, Hkv]: nonzero where that KV head's values hold a NaN / inf (then the key loop
    weighs them as the reference does, ``_pv_nonfinite``; else the plain product)."""
    bh, pid_m, b, h, m, d, vs, vis_end, c_lo, c_hi = _sel_block(ST, EN, Hq, Lq, Lk, sink, local,
                                                                 CAUSAL, BM, D)
    row, rm, qg, Tf, P = _head_thresholds(Q, TB, PB, bh, b, h, m, sqb, sqh, Hq, G, Lq, GROUP)
    q = tl.load(Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh + m[:, None].to(tl.int64) * sqm
                + d[None, :], mask=rm[:, None], other=0.0)
    kbase = K + b.to(tl.int64) * skb + (h // G).to(tl.int64) * skh
    vbase = V + b.to(tl.int64) * svb + (h // G).to(tl.int64) * svh
    ties = _cuts_ties(P, rm)
    n_lo = vs // BN * BN
    n_end = tl.max(vis_end, 0)
    e0, e1 = _tile_ranges(rm, c_lo, c_hi, n_lo, n_end, BN)
    if tl.load(VBAD + b * (Hq // G) + h // G) != 0:
        acc, m_i, l_i = _fwd_segs(q, qg, kbase, vbase, n_lo, e0, e1, n_end, skn, svn, sqh, sqm, m,
                                  d, Lq, Lk, G, scale, vs, vis_end, c_lo, c_hi, Tf, P, ties, GROUP,
                                  BM, BN, D, IEEE, UPCAST, True)
    else:
        acc, m_i, l_i = _fwd_segs(q, qg, kbase, vbase, n_lo, e0, e1, n_end, skn, svn, sqh, sqm, m,
                                  d, Lq, Lk, G, scale, vs, vis_end, c_lo, c_hi, Tf, P, ties, GROUP,
                                  BM, BN, D, IEEE, UPCAST, False)
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    tl.store(O + row[:, None] * D + d[None, :], (acc / l_safe[:, None]).to(O.dtype.element_ty),
             mask=rm[:, None])
    # l_i is 0 where nothing (or only -inf scores) was selected: lse -inf; NaN where a selected
    # score is NaN or +inf (inf - inf): lse NaN, or +inf (the reference's logsumexp) for +inf
    lse = tl.where(l_i > 0, m_i + tl.log(l_safe),
                   tl.where(l_i == 0, float("-inf"),
                            tl.where(m_i == float("inf"), float("inf"), float("nan"))))
    tl.store(LSE + row, lse, mask=rm)


@triton.jit
def _dq_seg(dq, q, qg, do, lse2, delta, kbase, vbase, lo, hi, skn, svn, sqh, sqm, m, d, Lq, Lk,
            G, scale, vs, vis_end, c_lo, c_hi, Tf, P, ties, MASKED: tl.constexpr, GROUP: tl.constexpr,
            BM: tl.constexpr, BN: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """dq [BM, D] (unscaled) accumulated over key tiles lo, lo+BN, ... < hi (MASKED as in
    ``_fwd_seg``)."""
    for start in range(lo, hi, BN):
        pos = start + tl.arange(0, BN)
        kt = _load_rows(kbase, start, skn, Lk, d, BN)
        vt = _load_rows(vbase, start, svn, Lk, d, BN)
        s, sel = _scores_sel(q, qg, kt, pos, sqh, sqm, m, d, Lq, G, scale, vs, vis_end, c_lo,
                             c_hi, Tf, P, ties, MASKED, GROUP, BM, BN, IEEE, UPCAST)
        p = tl.where(sel, tl.math.exp2(tl.fma(s, LOG2E, -lse2[:, None])), 0.0)
        dp = mm(do, tl.trans(vt), IEEE, UPCAST)
        ds = p * (dp - delta[:, None])
        dq += mm(ds.to(kt.dtype), kt, IEEE, UPCAST)
    return dq


@triton.jit
def _bwd_dq_kernel(Q, K, V, TB, PB, ST, EN, DO, LSE, DELTA, DQ, sqb, sqh, sqm, skb, skh, skn,
                   svb, svh, svn, Hq, G, Lq, Lk, sink, local, scale, CAUSAL: tl.constexpr,
                   GROUP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr,
                   IEEE: tl.constexpr, UPCAST: tl.constexpr):
    bh, pid_m, b, h, m, d, vs, vis_end, c_lo, c_hi = _sel_block(ST, EN, Hq, Lq, Lk, sink, local,
                                                                 CAUSAL, BM, D)
    row, rm, qg, Tf, P = _head_thresholds(Q, TB, PB, bh, b, h, m, sqb, sqh, Hq, G, Lq, GROUP)
    lse = tl.load(LSE + row, mask=rm, other=0.0)
    lse2 = tl.where(lse == float("-inf"), 0.0, lse) * LOG2E
    delta = tl.load(DELTA + row, mask=rm, other=0.0)
    ties = _cuts_ties(P, rm)
    q = tl.load(Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh + m[:, None].to(tl.int64) * sqm
                + d[None, :], mask=rm[:, None], other=0.0)
    do = tl.load(DO + row[:, None] * D + d[None, :], mask=rm[:, None], other=0.0)
    kbase = K + b.to(tl.int64) * skb + (h // G).to(tl.int64) * skh
    vbase = V + b.to(tl.int64) * svb + (h // G).to(tl.int64) * svh
    dq = tl.zeros([BM, D], tl.float32)
    n_lo = vs // BN * BN
    n_end = tl.max(vis_end, 0)
    e0, e1 = _tile_ranges(rm, c_lo, c_hi, n_lo, n_end, BN)
    dq = _dq_seg(dq, q, qg, do, lse2, delta, kbase, vbase, n_lo, e0, skn, svn, sqh, sqm, m, d, Lq,
                 Lk, G, scale, vs, vis_end, c_lo, c_hi, Tf, P, ties, True, GROUP, BM, BN, IEEE, UPCAST)
    dq = _dq_seg(dq, q, qg, do, lse2, delta, kbase, vbase, e0, e1, skn, svn, sqh, sqm, m, d, Lq,
                 Lk, G, scale, vs, vis_end, c_lo, c_hi, Tf, P, ties, False, GROUP, BM, BN, IEEE, UPCAST)
    dq = _dq_seg(dq, q, qg, do, lse2, delta, kbase, vbase, e1, n_end, skn, svn, sqh, sqm, m, d, Lq,
                 Lk, G, scale, vs, vis_end, c_lo, c_hi, Tf, P, ties, True, GROUP, BM, BN, IEEE, UPCAST)
    tl.store(DQ + row[:, None] * D + d[None, :], (dq * scale).to(DQ.dtype.element_ty),
             mask=rm[:, None])


@triton.jit
def _dkdv_seg(dk, dv, kt, vt, pos, Q, TB, PB, DO, LSE, DELTA, b, hkv, bkv, lo, hi, sqb, sqh, sqm,
              Hq, G, Lq, Lk, sink, local, scale, vs, ve, CAUSAL: tl.constexpr,
              MASKED: tl.constexpr, GROUP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
              D: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """dk, dv [BN, D] of one key tile accumulated over the query blocks lo, lo+BM, ... < hi and
    the G query heads of the KV head (MASKED: full mask, else the tile is inside every row's
    candidate range)."""
    d = tl.arange(0, D)
    for ms in range(lo, hi, BM):
        m = ms + tl.arange(0, BM)
        rm = m < Lq
        vis_end, c_lo, c_hi = _row_info(m, Lq, Lk, sink, local, vs, ve, CAUSAL)
        if GROUP:  # one selection for the whole group, from the summed scores
            trow = bkv.to(tl.int64) * Lq + m
            Tf = _thr_f32(tl.load(TB + trow, mask=rm, other=0).to(tl.uint32, bitcast=True))
            P = tl.load(PB + trow, mask=rm, other=0)
            qg = Q + b.to(tl.int64) * sqb + (hkv * G).to(tl.int64) * sqh
            ssel = _group_scores(qg, sqh, sqm, m, d, Lq, G, kt, scale, BM, BN, IEEE, UPCAST)
            if MASKED:
                gsel = _sel_mask(ssel, pos, vs, vis_end, c_lo, c_hi, Tf, P)
            else:
                gsel = _above(ssel, pos, Tf, P)
        for g in range(0, G):
            h = hkv * G + g
            bh = b * Hq + h
            row = bh.to(tl.int64) * Lq + m
            lse = tl.load(LSE + row, mask=rm, other=0.0)
            lse2 = tl.where(lse == float("-inf"), 0.0, lse) * LOG2E
            delta = tl.load(DELTA + row, mask=rm, other=0.0)
            q = tl.load(Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
                        + m[:, None].to(tl.int64) * sqm + d[None, :], mask=rm[:, None], other=0.0)
            do = tl.load(DO + row[:, None] * D + d[None, :], mask=rm[:, None], other=0.0)
            s = mm(q, tl.trans(kt), IEEE, UPCAST) * scale
            if GROUP:
                sel = gsel
            else:
                Tf1 = _thr_f32(tl.load(TB + row, mask=rm, other=0).to(tl.uint32, bitcast=True))
                P1 = tl.load(PB + row, mask=rm, other=0)
                if MASKED:
                    sel = _sel_mask(s, pos, vs, vis_end, c_lo, c_hi, Tf1, P1)
                else:
                    sel = _above(s, pos, Tf1, P1)
            p = tl.where(sel, tl.math.exp2(tl.fma(s, LOG2E, -lse2[:, None])), 0.0)
            dv += mm(tl.trans(p.to(do.dtype)), do, IEEE, UPCAST)
            dp = mm(do, tl.trans(vt), IEEE, UPCAST)
            ds = p * (dp - delta[:, None])
            dk += mm(tl.trans(ds.to(q.dtype)), q, IEEE, UPCAST)
    return dk, dv


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, TB, PB, ST, EN, DO, LSE, DELTA, DK, DV, sqb, sqh, sqm, skb, skh,
                     skn, svb, svh, svn, Hq, Hkv, G, Lq, Lk, sink, local, scale,
                     CAUSAL: tl.constexpr, GROUP: tl.constexpr, BM: tl.constexpr,
                     BN: tl.constexpr, D: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """dk, dv of one key tile (grid: B*Hkv, key tiles; low tiles, which see the most query rows
    under causality, first). The query blocks whose rows all have the tile inside their
    candidate range (rows >= m_a causally, when sink/start <= tile and tile + local <= end) skip
    the masks."""
    bkv = tl.program_id(0)
    pid_n = tl.program_id(1)
    b = bkv // Hkv
    hkv = bkv % Hkv
    p0 = pid_n * BN
    pos = p0 + tl.arange(0, BN)
    d = tl.arange(0, D)
    vs = tl.load(ST + b)
    ve = tl.load(EN + b)
    kt = _load_rows(K + b.to(tl.int64) * skb + hkv.to(tl.int64) * skh, p0, skn, Lk, d, BN)
    vt = _load_rows(V + b.to(tl.int64) * svb + hkv.to(tl.int64) * svh, p0, svn, Lk, d, BN)
    dk = tl.zeros([BN, D], tl.float32)
    dv = tl.zeros([BN, D], tl.float32)
    m_start = 0
    m_a = 0
    if CAUSAL:  # first query row that sees this key block: position >= p0
        m_start = tl.maximum(p0 - (Lk - Lq), 0) // BM * BM
        m_a = tl.maximum(p0 + BN + local - 1 - (Lk - Lq), 0)
    full = (tl.maximum(sink, vs) <= p0) & (p0 + BN + local <= ve)
    ms_int = tl.where(full, tl.maximum((m_a + BM - 1) // BM * BM, m_start), Lq)
    ms_int = tl.minimum(ms_int, Lq)
    dk, dv = _dkdv_seg(dk, dv, kt, vt, pos, Q, TB, PB, DO, LSE, DELTA, b, hkv, bkv, m_start,
                       ms_int, sqb, sqh, sqm, Hq, G, Lq, Lk, sink, local, scale, vs, ve, CAUSAL,
                       True, GROUP, BM, BN, D, IEEE, UPCAST)
    dk, dv = _dkdv_seg(dk, dv, kt, vt, pos, Q, TB, PB, DO, LSE, DELTA, b, hkv, bkv, ms_int, Lq,
                       sqb, sqh, sqm, Hq, G, Lq, Lk, sink, local, scale, vs, ve, CAUSAL, False,
                       GROUP, BM, BN, D, IEEE, UPCAST)
    out = (bkv.to(tl.int64) * Lk + pos)[:, None] * D + d[None, :]
    tl.store(DK + out, (dk * scale).to(DK.dtype.element_ty), mask=pos[:, None] < Lk)
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=pos[:, None] < Lk)


def prefill_forward(q, k, v, *, starts, ends, topk, causal, scale, sink, local, group):
    """Forward of `topk_prefill` on checked, unit-stride inputs (starts, ends int32 [B]).
    Returns (o [B, Hq, Lq, D], lse fp32 [B, Hq, Lq], TB, PB int32 [rows, Lq]): TB, PB are the
    per-row thresholds the backward needs."""
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    t = prefill_tiles(q, group).fwd
    TB, PB = prefill_thresholds(q, k, topk=topk, causal=causal, scale=scale, sink=sink,
                                local=local, group=group, starts=starts, ends=ends,
                                method=current().prefill.method)
    o = torch.empty(B, Hq, Lq, D, dtype=q.dtype, device=q.device)
    lse = torch.empty(B, Hq, Lq, dtype=torch.float32, device=q.device)
    # [B, Hkv]: values with a NaN / inf (device-side; an fp32 sum propagates them, and a finite
    # sum that overflows only sends that head down the exact slow path)
    vbad = (~torch.isfinite(v.sum((2, 3), dtype=torch.float32))).to(torch.int32)
    _fwd_kernel[(B * Hq, triton.cdiv(Lq, t.bm))](
        q, k, v, TB, PB, starts, ends, vbad, o, lse, *qkv_strides(q, k, v), Hq, Hq // Hkv, Lq, Lk, sink,
        local, scale, CAUSAL=causal, GROUP=group, BM=t.bm, BN=t.bn, D=D,
        IEEE=q.dtype == torch.float32, UPCAST=INTERPRET, **launch_options(t),
    )
    return o, lse, TB, PB


def prefill_backward(do, q, k, v, o, lse, TB, PB, *, starts, ends, causal, scale, sink, local,
                     group):
    """Gradients (dq, dk, dv) of `prefill_forward` for the output gradient ``do``.

    Non-finite values and outputs are handled as the reference's backward does (device-side
    selects, no synchronisation): the products use the values with NaN / inf entries read as
    0, those entries get dv = 0, and the output entries that are NaN / inf (from such a value,
    or a NaN / +inf score) pass no gradient into delta or the products (dp = do.v)."""
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    G = Hq // Hkv
    tiles = prefill_tiles(q, group)
    tq, tkv = tiles.dq, tiles.dkdv
    o_fin = torch.isfinite(o)
    do = torch.where(o_fin, do, 0).contiguous()
    delta = (torch.where(o_fin, o, 0).float() * do.float()).sum(-1)  # [B, Hq, Lq]
    v_fin = torch.isfinite(v)
    v = torch.where(v_fin, v, 0)
    dq = torch.empty(B, Hq, Lq, D, dtype=q.dtype, device=q.device)
    dk = torch.empty(B, Hkv, Lk, D, dtype=k.dtype, device=k.device)
    dv = torch.empty(B, Hkv, Lk, D, dtype=v.dtype, device=v.device)
    ieee = q.dtype == torch.float32
    _bwd_dq_kernel[(B * Hq, triton.cdiv(Lq, tq.bm))](
        q, k, v, TB, PB, starts, ends, do, lse, delta, dq, *qkv_strides(q, k, v), Hq, G, Lq, Lk,
        sink, local, scale, CAUSAL=causal, GROUP=group, BM=tq.bm, BN=tq.bn, D=D, IEEE=ieee,
        UPCAST=INTERPRET, **launch_options(tq),
    )
    _bwd_dkdv_kernel[(B * Hkv, triton.cdiv(Lk, tkv.bn))](
        q, k, v, TB, PB, starts, ends, do, lse, delta, dk, dv, *qkv_strides(q, k, v), Hq, Hkv, G, Lq,
        Lk, sink, local, scale, CAUSAL=causal, GROUP=group, BM=tkv.bm, BN=tkv.bn, D=D,
        IEEE=ieee, UPCAST=INTERPRET, **launch_options(tkv),
    )
    return dq, dk, dv.masked_fill_(~v_fin, 0)


def topk_prefill(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    topk: int,
    causal: bool = True,
    scale: float | None = None,
    sink: int = 0,
    local: int = 0,
    granularity: str = "query_head",
    starts: torch.Tensor | None = None,
    ends: torch.Tensor | None = None,
    return_lse: bool = False,
):
    """Exact Top-k attention for every query row (prefill / training), differentiable.

    Args:
        q: [B, Hq, Lq, D]; k, v: [B, Hkv, Lk, D]; the queries sit at the last Lq positions.
        topk: keys per query row besides sink/local (per query head, or per KV head with
            ``granularity="kv_group"``: chosen from the scores summed over the group's query
            heads; each query head then attends over that set with its own scores).
        causal, scale, sink, local: as in `topk_attention_reference`.
        return_lse: also return fp32 [B, Hq, Lq] (not differentiable).
        starts, ends: int [B] or None: sequence b sees only keys in [starts[b], ends[b])
            (left / right padding; sink positions count from 0 as in the reference). Rows that
            see no key give zero output and lse -inf.

    Returns:
        out [B, Hq, Lq, D] [, lse]; gradients reach q, k, v through the selected entries.
        Memory: O(B*H*L*D), two int32 per query row kept for the backward, plus the threshold
        search's transient scratch (see the module docstring).
    """
    check_qkv(q, k, v)
    if isinstance(topk, bool) or not isinstance(topk, int) or topk <= 0:
        raise InputError(f"topk must be a positive integer, got {topk!r}")
    if sink < 0 or local < 0:
        raise InputError(f"sink and local must be >= 0; got sink={sink}, local={local}")
    if granularity not in ("query_head", "kv_group"):
        raise InputError(f"granularity must be 'query_head' or 'kv_group', got {granularity!r}")
    B, Hq, _, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    for name, t in (("starts", starts), ("ends", ends)):
        if t is not None and (t.dim() != 1 or t.shape[0] != B):
            raise InputError(f"{name} must be [B={B}], got {tuple(t.shape)}")
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    q, k, v = unit_stride(q, k, v)
    topk = min(topk, Lk)
    group = granularity == "kv_group" and Hq != Hkv
    starts, ends = seq_bounds(starts, ends, B=B, Lk=Lk, device=q.device)
    from topkattn.ops.topk.custom_ops import prefill_op

    out, lse = prefill_op(q, k, v, starts, ends, topk, causal, scale, sink, local, group)
    return (out, lse) if return_lse else out
