"""Top-k prefill / training attention in Triton, forward and backward, memory linear in length.

Every query row attends to its own ``topk`` highest-scoring visible keys (plus sink/local)
without materialising the n x n scores:

1. ``_thresh_kernel`` (grid query blocks x B*Hq): exact k-th largest candidate key per row by
   radix search on the order-preserving uint32 key of the fp32 score, 4 bits per pass (a
   16-bin histogram per row, counted with packed 8-bit fields in two int64 words per tile),
   at most 8 passes recomputing q.K^T (a block stops early once every row's bin is fully
   selected); then, only where ties at the k-th score must be cut, one pass finds the tie
   cutoff position P (lowest positions win, as in the reference). Per row it stores the
   threshold key T and P: selected = key > T or (key == T and pos <= P).
2. ``_fwd_kernel``: flash attention masked by (T, P) and sink/local; stores the LSE.
3. ``_bwd_dq_kernel`` / ``_bwd_dkdv_kernel``: flash-attention backward through the same mask
   (dk, dv summed over the query heads of each KV head).

``granularity="kv_group"``: one selected set per (b, KV head), the threshold search running on
the scores summed over the group's G query heads (``_group_scores``, recomputed alike by every
kernel for the mask); each query head then attends with its own scores and softmax. Padding:
sequence b sees only keys in [starts[b], ends[b]) (left / right padding; rows that see none
give zero output).

All kernels compute scores with the same tile shapes and the same helper so that the keys
compared against T are bit-identical to those used to find it.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from topkattn.ops.select import _interp  # noqa: F401  (interpreter shim)
from topkattn.ops.select.triton_select import _f32_key
from topkattn.ops.topk.triton_sparse import INTERPRET, check_qkv, mm

P_INF: tl.constexpr = tl.constexpr(2**31 - 1)


@triton.jit
def _row_info(m, Lq, Lk, sink, local, vs, ve, CAUSAL: tl.constexpr):
    """Per query row: visible end, candidate range [c_lo, c_hi). Visible keys are
    [vs, vis_end) (vs, ve: the sequence's first / one-past-last unpadded key)."""
    if CAUSAL:
        vis_end = Lk - Lq + m + 1
    else:
        vis_end = m * 0 + Lk
    vis_end = tl.minimum(vis_end, ve)
    vis_end = tl.where(m < Lq, vis_end, 0)
    c_lo = tl.minimum(tl.maximum(sink, vs), vis_end)
    c_hi = tl.maximum(c_lo, vis_end - local)
    return vis_end, c_lo, c_hi


@triton.jit
def _sel_mask(s, pos, vs, vis_end, c_lo, c_hi, T, P):
    """bool [BM, BN]: selected entries (forced or candidate with key >= (T, P))."""
    key = _f32_key(s)
    vis = (pos[None, :] >= vs) & (pos[None, :] < vis_end[:, None])
    cand = (pos[None, :] >= c_lo[:, None]) & (pos[None, :] < c_hi[:, None])
    forced = vis & ~cand
    above = (key > T[:, None]) | ((key == T[:, None]) & (pos[None, :] <= P[:, None]))
    return forced | (cand & above)


@triton.jit
def _group_scores(qg, sqh, sqm, m, d, Lq, G, kt, scale, BM: tl.constexpr, BN: tl.constexpr,
                  IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """kv_group selection scores [BM, BN]: sum over the G query heads (from ``qg``, the group's
    first head) of the scaled scores, in head order. Every kernel uses this same helper."""
    ssum = tl.zeros([BM, BN], tl.float32)
    qp = qg + m[:, None].to(tl.int64) * sqm + d[None, :]
    for g in range(0, G):
        qh = tl.load(qp, mask=m[:, None] < Lq, other=0.0)
        ssum += mm(qh, tl.trans(kt), IEEE, UPCAST) * scale
        qp += sqh
    return ssum


@triton.jit
def _thresh_kernel(Q, K, TB, PB, ST, EN, sqb, sqh, sqm, skb, skh, skn, Hr, G, Lq, Lk, topk,
                   sink, local, scale, CAUSAL: tl.constexpr, GROUP: tl.constexpr,
                   BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr, IEEE: tl.constexpr,
                   UPCAST: tl.constexpr):
    # one row per (b, query head), or per (b, KV head) with GROUP (summed group scores)
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // Hr
    h = bh % Hr
    m = pid_m * BM + tl.arange(0, BM)
    d = tl.arange(0, D)
    vs = tl.load(ST + b)
    ve = tl.load(EN + b)
    vis_end, c_lo, c_hi = _row_info(m, Lq, Lk, sink, local, vs, ve, CAUSAL)
    if GROUP:
        qg = Q + b.to(tl.int64) * sqb + (h * G).to(tl.int64) * sqh
        kbase = K + b.to(tl.int64) * skb + h.to(tl.int64) * skh
    else:
        q = tl.load(Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
                    + m[:, None].to(tl.int64) * sqm + d[None, :], mask=m[:, None] < Lq, other=0.0)
        kbase = K + b.to(tl.int64) * skb + (h // G).to(tl.int64) * skh
    active = (c_hi - c_lo) > topk
    n_end = tl.max(c_hi, 0)
    n_lo = vs // BN * BN
    want = tl.zeros([BM], tl.uint32)
    rem = tl.where(active, topk, 0)
    nd = rem
    done = ~active
    f = tl.arange(0, 16)
    for it in tl.static_range(8):
        SHIFT = 28 - 4 * it
        if tl.sum((~done).to(tl.int32), 0) > 0:
            h16 = tl.zeros([BM, 16], tl.int32)
            for start in range(n_lo, n_end, BN):
                pos = start + tl.arange(0, BN)
                kt = tl.load(kbase + pos[:, None].to(tl.int64) * skn + d[None, :],
                             mask=pos[:, None] < Lk, other=0.0)
                if GROUP:
                    s = _group_scores(qg, sqh, sqm, m, d, Lq, G, kt, scale, BM, BN, IEEE, UPCAST)
                else:
                    s = mm(q, tl.trans(kt), IEEE, UPCAST) * scale
                key = _f32_key(s)
                match = (pos[None, :] >= c_lo[:, None]) & (pos[None, :] < c_hi[:, None])
                if SHIFT < 28:
                    match = match & ((key >> (SHIFT + 4)) == (want >> (SHIFT + 4))[:, None])
                dg = ((key >> SHIFT) & 15).to(tl.int32)
                one = tl.where(match, tl.full([BM, BN], 1, tl.int64) << (8 * (dg & 7)).to(tl.int64), 0)
                lo = tl.sum(tl.where(dg < 8, one, 0), 1)
                hi = tl.sum(tl.where(dg >= 8, one, 0), 1)
                word = tl.where(f[None, :] < 8, lo[:, None], hi[:, None])
                h16 += ((word >> (8 * (f % 8)).to(tl.int64)[None, :]) & 255).to(tl.int32)
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
            done = done | (cnt == rem)
    # ties at T that must be cut: find the position of the rem-th tie
    P = tl.full([BM], P_INF, tl.int32)
    need_cut = active & (nd > rem)
    if tl.sum(need_cut.to(tl.int32), 0) > 0:
        seen = tl.zeros([BM], tl.int32)
        for start in range(n_lo, n_end, BN):
            pos = start + tl.arange(0, BN)
            kt = tl.load(kbase + pos[:, None].to(tl.int64) * skn + d[None, :],
                         mask=pos[:, None] < Lk, other=0.0)
            if GROUP:
                s = _group_scores(qg, sqh, sqm, m, d, Lq, G, kt, scale, BM, BN, IEEE, UPCAST)
            else:
                s = mm(q, tl.trans(kt), IEEE, UPCAST) * scale
            key = _f32_key(s)
            cand = (pos[None, :] >= c_lo[:, None]) & (pos[None, :] < c_hi[:, None])
            tie = (cand & (key == want[:, None])).to(tl.int32)
            c = seen[:, None] + tl.cumsum(tie, 1)
            hit = tl.min(tl.where((tie > 0) & (c == rem[:, None]), pos[None, :], P_INF), 1)
            P = tl.where(need_cut, tl.minimum(P, hit), P)
            seen += tl.sum(tie, 1)
    row = bh.to(tl.int64) * Lq + m
    tl.store(TB + row, want.to(tl.int32, bitcast=True), mask=m < Lq)
    tl.store(PB + row, P, mask=m < Lq)


@triton.jit
def _fwd_kernel(Q, K, V, TB, PB, ST, EN, O, LSE, sqb, sqh, sqm, skb, skh, skn, svb, svh, svn,
                Hq, G, Lq, Lk, sink, local, scale, CAUSAL: tl.constexpr, GROUP: tl.constexpr,
                BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr, IEEE: tl.constexpr,
                UPCAST: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // Hq
    h = bh % Hq
    m = pid_m * BM + tl.arange(0, BM)
    d = tl.arange(0, D)
    vs = tl.load(ST + b)
    ve = tl.load(EN + b)
    vis_end, c_lo, c_hi = _row_info(m, Lq, Lk, sink, local, vs, ve, CAUSAL)
    row = bh.to(tl.int64) * Lq + m
    if GROUP:  # thresholds per (b, KV head)
        trow = (b * (Hq // G) + h // G).to(tl.int64) * Lq + m
        qg = Q + b.to(tl.int64) * sqb + (h // G * G).to(tl.int64) * sqh
    else:
        trow = row
    T = tl.load(TB + trow, mask=m < Lq, other=0).to(tl.uint32, bitcast=True)
    P = tl.load(PB + trow, mask=m < Lq, other=0)
    q = tl.load(Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh + m[:, None].to(tl.int64) * sqm
                + d[None, :], mask=m[:, None] < Lq, other=0.0)
    kbase = K + b.to(tl.int64) * skb + (h // G).to(tl.int64) * skh
    vbase = V + b.to(tl.int64) * svb + (h // G).to(tl.int64) * svh
    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, D], tl.float32)
    n_end = tl.max(vis_end, 0)
    for start in range(vs // BN * BN, n_end, BN):
        pos = start + tl.arange(0, BN)
        kt = tl.load(kbase + pos[:, None].to(tl.int64) * skn + d[None, :], mask=pos[:, None] < Lk, other=0.0)
        s = mm(q, tl.trans(kt), IEEE, UPCAST) * scale
        if GROUP:
            ssel = _group_scores(qg, sqh, sqm, m, d, Lq, G, kt, scale, BM, BN, IEEE, UPCAST)
            sel = _sel_mask(ssel, pos, vs, vis_end, c_lo, c_hi, T, P)
        else:
            sel = _sel_mask(s, pos, vs, vis_end, c_lo, c_hi, T, P)
        s = tl.where(sel, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(s - m_safe[:, None])
        vt = tl.load(vbase + pos[:, None].to(tl.int64) * svn + d[None, :], mask=pos[:, None] < Lk, other=0.0)
        acc = acc * alpha[:, None] + mm(p.to(vt.dtype), vt, IEEE, UPCAST)
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    tl.store(O + row[:, None] * D + d[None, :], (acc / l_safe[:, None]).to(O.dtype.element_ty),
             mask=m[:, None] < Lq)
    tl.store(LSE + row, tl.where(l_i > 0, m_i + tl.log(l_safe), float("-inf")), mask=m < Lq)


@triton.jit
def _bwd_dq_kernel(Q, K, V, TB, PB, ST, EN, DO, LSE, DELTA, DQ, sqb, sqh, sqm, skb, skh, skn,
                   svb, svh, svn, Hq, G, Lq, Lk, sink, local, scale, CAUSAL: tl.constexpr,
                   GROUP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr,
                   IEEE: tl.constexpr, UPCAST: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // Hq
    h = bh % Hq
    m = pid_m * BM + tl.arange(0, BM)
    d = tl.arange(0, D)
    vs = tl.load(ST + b)
    ve = tl.load(EN + b)
    vis_end, c_lo, c_hi = _row_info(m, Lq, Lk, sink, local, vs, ve, CAUSAL)
    row = bh.to(tl.int64) * Lq + m
    rm = m < Lq
    if GROUP:
        trow = (b * (Hq // G) + h // G).to(tl.int64) * Lq + m
        qg = Q + b.to(tl.int64) * sqb + (h // G * G).to(tl.int64) * sqh
    else:
        trow = row
    T = tl.load(TB + trow, mask=rm, other=0).to(tl.uint32, bitcast=True)
    P = tl.load(PB + trow, mask=rm, other=0)
    lse = tl.load(LSE + row, mask=rm, other=0.0)
    lse = tl.where(lse == float("-inf"), 0.0, lse)
    delta = tl.load(DELTA + row, mask=rm, other=0.0)
    q = tl.load(Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh + m[:, None].to(tl.int64) * sqm
                + d[None, :], mask=rm[:, None], other=0.0)
    do = tl.load(DO + row[:, None] * D + d[None, :], mask=rm[:, None], other=0.0)
    kbase = K + b.to(tl.int64) * skb + (h // G).to(tl.int64) * skh
    vbase = V + b.to(tl.int64) * svb + (h // G).to(tl.int64) * svh
    dq = tl.zeros([BM, D], tl.float32)
    n_end = tl.max(vis_end, 0)
    for start in range(vs // BN * BN, n_end, BN):
        pos = start + tl.arange(0, BN)
        kt = tl.load(kbase + pos[:, None].to(tl.int64) * skn + d[None, :], mask=pos[:, None] < Lk, other=0.0)
        vt = tl.load(vbase + pos[:, None].to(tl.int64) * svn + d[None, :], mask=pos[:, None] < Lk, other=0.0)
        s = mm(q, tl.trans(kt), IEEE, UPCAST) * scale
        if GROUP:
            ssel = _group_scores(qg, sqh, sqm, m, d, Lq, G, kt, scale, BM, BN, IEEE, UPCAST)
            sel = _sel_mask(ssel, pos, vs, vis_end, c_lo, c_hi, T, P)
        else:
            sel = _sel_mask(s, pos, vs, vis_end, c_lo, c_hi, T, P)
        p = tl.where(sel, tl.exp(s - lse[:, None]), 0.0)
        dp = mm(do, tl.trans(vt), IEEE, UPCAST)
        ds = p * (dp - delta[:, None])
        dq += mm(ds.to(kt.dtype), kt, IEEE, UPCAST)
    tl.store(DQ + row[:, None] * D + d[None, :], (dq * scale).to(DQ.dtype.element_ty), mask=rm[:, None])


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, TB, PB, ST, EN, DO, LSE, DELTA, DK, DV, sqb, sqh, sqm, skb, skh,
                     skn, svb, svh, svn, Hq, Hkv, G, Lq, Lk, sink, local, scale,
                     CAUSAL: tl.constexpr, GROUP: tl.constexpr, BM: tl.constexpr,
                     BN: tl.constexpr, D: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    pid_n = tl.program_id(0)
    bkv = tl.program_id(1)
    b = bkv // Hkv
    hkv = bkv % Hkv
    pos = pid_n * BN + tl.arange(0, BN)
    d = tl.arange(0, D)
    vs = tl.load(ST + b)
    ve = tl.load(EN + b)
    kt = tl.load(K + b.to(tl.int64) * skb + hkv.to(tl.int64) * skh + pos[:, None].to(tl.int64) * skn
                 + d[None, :], mask=pos[:, None] < Lk, other=0.0)
    vt = tl.load(V + b.to(tl.int64) * svb + hkv.to(tl.int64) * svh + pos[:, None].to(tl.int64) * svn
                 + d[None, :], mask=pos[:, None] < Lk, other=0.0)
    dk = tl.zeros([BN, D], tl.float32)
    dv = tl.zeros([BN, D], tl.float32)
    m_start = 0
    if CAUSAL:  # first query row that sees this key block: position >= pid_n*BN
        m_start = tl.maximum(pid_n * BN - (Lk - Lq), 0) // BM * BM
    for ms in range(m_start, Lq, BM):
        m = ms + tl.arange(0, BM)
        rm = m < Lq
        vis_end, c_lo, c_hi = _row_info(m, Lq, Lk, sink, local, vs, ve, CAUSAL)
        if GROUP:  # one selection for the whole group, from the summed scores
            trow = bkv.to(tl.int64) * Lq + m
            T = tl.load(TB + trow, mask=rm, other=0).to(tl.uint32, bitcast=True)
            P = tl.load(PB + trow, mask=rm, other=0)
            qg = Q + b.to(tl.int64) * sqb + (hkv * G).to(tl.int64) * sqh
            ssel = _group_scores(qg, sqh, sqm, m, d, Lq, G, kt, scale, BM, BN, IEEE, UPCAST)
            gsel = _sel_mask(ssel, pos, vs, vis_end, c_lo, c_hi, T, P)
        for g in range(0, G):
            h = hkv * G + g
            bh = b * Hq + h
            row = bh.to(tl.int64) * Lq + m
            lse = tl.load(LSE + row, mask=rm, other=0.0)
            lse = tl.where(lse == float("-inf"), 0.0, lse)
            delta = tl.load(DELTA + row, mask=rm, other=0.0)
            q = tl.load(Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh + m[:, None].to(tl.int64) * sqm
                        + d[None, :], mask=rm[:, None], other=0.0)
            do = tl.load(DO + row[:, None] * D + d[None, :], mask=rm[:, None], other=0.0)
            s = mm(q, tl.trans(kt), IEEE, UPCAST) * scale
            if GROUP:
                sel = gsel
            else:
                T1 = tl.load(TB + row, mask=rm, other=0).to(tl.uint32, bitcast=True)
                P1 = tl.load(PB + row, mask=rm, other=0)
                sel = _sel_mask(s, pos, vs, vis_end, c_lo, c_hi, T1, P1)
            p = tl.where(sel, tl.exp(s - lse[:, None]), 0.0)
            dv += mm(tl.trans(p.to(do.dtype)), do, IEEE, UPCAST)
            dp = mm(do, tl.trans(vt), IEEE, UPCAST)
            ds = p * (dp - delta[:, None])
            dk += mm(tl.trans(ds.to(q.dtype)), q, IEEE, UPCAST)
    out = (bkv.to(tl.int64) * Lk + pos)[:, None] * D + d[None, :]
    tl.store(DK + out, (dk * scale).to(DK.dtype.element_ty), mask=pos[:, None] < Lk)
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=pos[:, None] < Lk)


def _blocks(q: torch.Tensor) -> tuple[int, int, int]:
    if INTERPRET or not q.is_cuda:
        return 16, 16, 4
    D = q.shape[-1]
    return (64, 64, 4) if D <= 128 else (32, 32, 4)


def _strides(q, k, v):
    return (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2))


def _bounds(starts, ends, B, Lk, device):
    """Per-sequence visible key range [start, end) as two int32 [B] (whole range when None)."""
    st = torch.zeros(B, dtype=torch.int32, device=device) if starts is None else starts
    en = torch.full((B,), Lk, dtype=torch.int32, device=device) if ends is None else ends
    return tuple(t.to(device=device, dtype=torch.int32).contiguous() for t in (st, en))


def prefill_thresholds(q, k, topk, causal, scale, sink, local, group=False, starts=None,
                       ends=None):
    """Per selection row, threshold key T (int32 bit pattern of the uint32 key) and tie cutoff
    P, both [B*Hq, Lq] ([B*Hkv, Lq] with ``group``: one set per KV head from the summed group
    scores)."""
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    BM, BN, nw = _blocks(q)
    st, en = _bounds(starts, ends, B, Lk, q.device)
    Hr = Hkv if group else Hq
    TB = torch.empty(B * Hr, Lq, dtype=torch.int32, device=q.device)
    PB = torch.empty_like(TB)
    _thresh_kernel[(triton.cdiv(Lq, BM), B * Hr)](
        q, k, TB, PB, st, en, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1),
        k.stride(2), Hr, Hq // Hkv, Lq, Lk, topk, sink, local, scale, CAUSAL=causal,
        GROUP=group, BM=BM, BN=BN, D=D, IEEE=q.dtype == torch.float32, UPCAST=INTERPRET,
        num_warps=nw,
    )
    return TB, PB


class _TopkPrefill(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, topk, causal, scale, sink, local, group, st, en):
        B, Hq, Lq, D = q.shape
        Hkv, Lk = k.shape[1], k.shape[2]
        BM, BN, nw = _blocks(q)
        TB, PB = prefill_thresholds(q, k, topk, causal, scale, sink, local, group, st, en)
        o = torch.empty(B, Hq, Lq, D, dtype=q.dtype, device=q.device)
        lse = torch.empty(B, Hq, Lq, dtype=torch.float32, device=q.device)
        _fwd_kernel[(triton.cdiv(Lq, BM), B * Hq)](
            q, k, v, TB, PB, st, en, o, lse, *_strides(q, k, v), Hq, Hq // Hkv, Lq, Lk, sink,
            local, scale, CAUSAL=causal, GROUP=group, BM=BM, BN=BN, D=D,
            IEEE=q.dtype == torch.float32, UPCAST=INTERPRET, num_warps=nw,
        )
        ctx.save_for_backward(q, k, v, o, lse, TB, PB, st, en)
        ctx.args = (causal, scale, sink, local, group)
        ctx.mark_non_differentiable(lse)
        return o, lse

    @staticmethod
    def backward(ctx, do, _dlse):
        q, k, v, o, lse, TB, PB, st, en = ctx.saved_tensors
        causal, scale, sink, local, group = ctx.args
        B, Hq, Lq, D = q.shape
        Hkv, Lk = k.shape[1], k.shape[2]
        G = Hq // Hkv
        BM, BN, nw = _blocks(q)
        do = do.contiguous()
        delta = (o.float() * do.float()).sum(-1)  # [B, Hq, Lq]
        dq = torch.empty(B, Hq, Lq, D, dtype=q.dtype, device=q.device)
        dk = torch.empty(B, Hkv, Lk, D, dtype=k.dtype, device=k.device)
        dv = torch.empty(B, Hkv, Lk, D, dtype=v.dtype, device=v.device)
        ieee = q.dtype == torch.float32
        _bwd_dq_kernel[(triton.cdiv(Lq, BM), B * Hq)](
            q, k, v, TB, PB, st, en, do, lse, delta, dq, *_strides(q, k, v), Hq, G, Lq, Lk,
            sink, local, scale, CAUSAL=causal, GROUP=group, BM=BM, BN=BN, D=D, IEEE=ieee,
            UPCAST=INTERPRET, num_warps=nw,
        )
        _bwd_dkdv_kernel[(triton.cdiv(Lk, BN), B * Hkv)](
            q, k, v, TB, PB, st, en, do, lse, delta, dk, dv, *_strides(q, k, v), Hq, Hkv, G, Lq,
            Lk, sink, local, scale, CAUSAL=causal, GROUP=group, BM=BM, BN=BN, D=D, IEEE=ieee,
            UPCAST=INTERPRET, num_warps=nw,
        )
        return dq, dk, dv, None, None, None, None, None, None, None, None


def topk_prefill(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    topk: int,
    causal: bool = True,
    scale: float | None = None,
    sink: int = 0,
    local: int = 0,
    return_lse: bool = False,
    granularity: str = "query_head",
    starts: torch.Tensor | None = None,
    ends: torch.Tensor | None = None,
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
        Memory: O(B*H*L*D) plus two int32 per query row.
    """
    check_qkv(q, k, v)
    if isinstance(topk, bool) or not isinstance(topk, int) or topk <= 0:
        raise ValueError(f"topk must be a positive integer, got {topk!r}")
    if sink < 0 or local < 0:
        raise ValueError(f"sink and local must be >= 0; got sink={sink}, local={local}")
    if granularity not in ("query_head", "kv_group"):
        raise ValueError(f"granularity must be 'query_head' or 'kv_group', got {granularity!r}")
    B, Hq, _, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    for name, t in (("starts", starts), ("ends", ends)):
        if t is not None and (t.dim() != 1 or t.shape[0] != B):
            raise ValueError(f"{name} must be [B={B}], got {tuple(t.shape)}")
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    topk = min(topk, Lk)
    group = granularity == "kv_group" and Hq != Hkv
    st, en = _bounds(starts, ends, B, Lk, q.device)
    out, lse = _TopkPrefill.apply(q, k, v, topk, causal, scale, sink, local, group, st, en)
    return (out, lse) if return_lse else out
