"""What every Top-k prefill kernel shares: the selection scores (one helper, the same operands,
one mma chain over the head dim, so that the threshold search and the attention kernels see
bit-identical keys), the per-row visible / candidate ranges, the row-block prologue, and the
per-call tiles (`prefill_tiles`, from `topkattn.ops.tuning.PrefillTuning`).

Used by the threshold search (`topkattn.ops.select.prefill_threshold`) and the attention
kernels (`topkattn.ops.topk.triton_prefill`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from topkattn.ops.select import _interp  # noqa: F401  (interpreter shim)
from topkattn.ops.topk.triton_sparse import INTERPRET, mm
from topkattn.ops.tuning import PrefillTile, PrefillTiles, PrefillTuning, current

P_INF: tl.constexpr = tl.constexpr(2**31 - 1)  # tie cutoff position "no cut"


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
def _load_rows(base, start, stride, lim, d, BN: tl.constexpr):
    """[BN, D] rows start .. start+BN-1 of a row-major matrix (row stride ``stride``, rows >= lim
    read as 0). (64-bit row offsets: a loop-invariant 32-bit [BN, D] offset tensor would pin
    BN*D/threads registers.)"""
    pos = start + tl.arange(0, BN)
    return tl.load(base + pos[:, None].to(tl.int64) * stride + d[None, :], mask=pos[:, None] < lim,
                   other=0.0)


@triton.jit
def _group_scores(qg, sqh, sqm, m, d, Lq, G, kt, scale, BM: tl.constexpr, BN: tl.constexpr,
                  IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """kv_group selection scores [BM, BN]: sum over the G query heads (from ``qg``, the group's
    first head) of the scaled scores, in head order. Every kernel uses this same helper. A NaN
    sum (a NaN query or key, or +inf and -inf scores in one group) reads as +inf: it ranks first,
    as in the reference (ties among such keys go to the lowest positions)."""
    ssum = tl.zeros([BM, BN], tl.float32)
    qp = qg + m[:, None].to(tl.int64) * sqm + d[None, :]
    for g in range(0, G):
        qh = tl.load(qp, mask=m[:, None] < Lq, other=0.0)
        ssum += mm(qh, tl.trans(kt), IEEE, UPCAST) * scale
        qp += sqh
    return tl.where(ssum != ssum, float("inf"), ssum)


@triton.jit
def _sel_operands(Q, K, b, h, m, d, sqb, sqh, sqm, skb, skh, G, Lq, GROUP: tl.constexpr,
                  BM: tl.constexpr, D: tl.constexpr):
    """Operands of one selection row block: q [BM, D] of query head h (a dummy with GROUP), qg
    (the group's first query head, for ``_group_scores``) and the K base of the row's KV head."""
    if GROUP:
        qg = Q + b.to(tl.int64) * sqb + (h * G).to(tl.int64) * sqh
        kbase = K + b.to(tl.int64) * skb + h.to(tl.int64) * skh
        q = tl.zeros([BM, D], tl.float32)
    else:
        qg = Q
        q = tl.load(Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
                    + m[:, None].to(tl.int64) * sqm + d[None, :], mask=m[:, None] < Lq, other=0.0)
        kbase = K + b.to(tl.int64) * skb + (h // G).to(tl.int64) * skh
    return q, qg, kbase


@triton.jit
def _sel_scores(q, qg, kbase, start, skn, sqh, sqm, m, d, Lq, Lk, G, scale, GROUP: tl.constexpr,
                BM: tl.constexpr, BN: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """Selection scores [BM, BN] of the row block against keys start .. start+BN-1, exactly as
    the attention kernels compute them (same helper, same tile)."""
    kt = _load_rows(kbase, start, skn, Lk, d, BN)
    if GROUP:
        s = _group_scores(qg, sqh, sqm, m, d, Lq, G, kt, scale, BM, BN, IEEE, UPCAST)
    else:
        s = mm(q, tl.trans(kt), IEEE, UPCAST) * scale
    return s


@triton.jit
def _tile_ranges(use, c_lo, c_hi, n_lo, n_end, BN: tl.constexpr):
    """Split the key tiles [n_lo, n_end) of a row block into masked / interior / masked ranges:
    returns (e0, e1) such that every tile in [e0, e1) lies inside the candidate range of every
    row flagged in ``use``."""
    lo_full = tl.max(tl.where(use, c_lo, 0), 0)
    hi_full = tl.min(tl.where(use, c_hi, 2**30), 0)
    e0 = tl.maximum(tl.minimum((lo_full + BN - 1) // BN * BN, n_end), n_lo)
    e1 = tl.maximum(hi_full // BN * BN, e0)
    e1 = tl.minimum(e1, tl.maximum(n_end, e0))
    return e0, e1


@triton.jit
def _sel_block(ST, EN, Hr, Lq, Lk, sink, local, CAUSAL: tl.constexpr, BM: tl.constexpr,
               D: tl.constexpr):
    """Prologue of the row-block kernels (grid: B*Hr rows — selection rows or query heads —,
    query blocks, the longest causal blocks first): (bh, pid_m, b, h, m [BM], d [D], vs, vis_end, c_lo, c_hi [BM])."""
    bh = tl.program_id(0)
    pid_m = tl.num_programs(1) - 1 - tl.program_id(1)
    b = bh // Hr
    h = bh % Hr
    m = pid_m * BM + tl.arange(0, BM)
    d = tl.arange(0, D)
    vs = tl.load(ST + b)
    ve = tl.load(EN + b)
    vis_end, c_lo, c_hi = _row_info(m, Lq, Lk, sink, local, vs, ve, CAUSAL)
    return bh, pid_m, b, h, m, d, vs, vis_end, c_lo, c_hi


@triton.jit
def _scores_kernel(Q, K, S, sqb, sqh, sqm, skb, skh, skn, Hr, G, Lq, Lk, scale,
                   GROUP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr,
                   IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """S [B*Hr, Lq, Lk] fp32: the selection scores of one (row block, key tile) per program
    (grid: B*Hr, query blocks, key tiles), with the prefill kernels' helpers and operands."""
    bh = tl.program_id(0)
    b = bh // Hr
    h = bh % Hr
    m = tl.program_id(1) * BM + tl.arange(0, BM)
    start = tl.program_id(2) * BN
    d = tl.arange(0, D)
    q, qg, kbase = _sel_operands(Q, K, b, h, m, d, sqb, sqh, sqm, skb, skh, G, Lq, GROUP, BM, D)
    s = _sel_scores(q, qg, kbase, start, skn, sqh, sqm, m, d, Lq, Lk, G, scale, GROUP, BM, BN,
                    IEEE, UPCAST)
    pos = start + tl.arange(0, BN)
    tl.store(S + (bh.to(tl.int64) * Lq + m[:, None]) * Lk + pos[None, :], s,
             mask=(m[:, None] < Lq) & (pos[None, :] < Lk))


def prefill_tiles(q: torch.Tensor, group: bool, tuning: PrefillTuning | None = None) -> PrefillTiles:
    """Per-kernel tiles of one call, from ``tuning`` (default: the one in force)."""
    t = tuning or current().prefill
    if INTERPRET or not q.is_cuda:
        return t.tiles_cpu
    if q.shape[-1] > 128:
        return t.tiles_wide
    return t.tiles("kv_group" if group else "query_head")


def launch_options(t: PrefillTile) -> dict:
    """Launch options of a tile (num_stages only on the GPU)."""
    opt = {"num_warps": t.warps}
    if t.stages is not None and not INTERPRET:
        opt["num_stages"] = t.stages
    return opt


def qkv_strides(q, k, v):
    return (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2))


def seq_bounds(starts, ends, *, B, Lk, device):
    """Per-sequence visible key range [start, end) as two int32 [B] (whole range when None)."""
    st = torch.zeros(B, dtype=torch.int32, device=device) if starts is None else starts
    en = torch.full((B,), Lk, dtype=torch.int32, device=device) if ends is None else ends
    return tuple(t.to(device=device, dtype=torch.int32).contiguous() for t in (st, en))


def selection_scores(q: torch.Tensor, k: torch.Tensor, *, scale: float, group: bool = False,
                     tile: PrefillTile | None = None) -> torch.Tensor:
    """The scores the prefill kernels select on, computed with ``tile``: fp32 [B*Hq, Lq, Lk]
    (per query head), or [B*Hkv, Lq, Lk] with ``group`` (summed over each KV head's query
    heads). O(L^2) memory: for tests and the device's tile checks
    (scripts/device_prefill_tiles.py), not for long sequences."""
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    t = tile or prefill_tiles(q, group).search
    Hr = Hkv if group else Hq
    S = torch.empty(B * Hr, Lq, Lk, dtype=torch.float32, device=q.device)
    _scores_kernel[(B * Hr, triton.cdiv(Lq, t.bm), triton.cdiv(Lk, t.bn))](
        q, k, S, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2), Hr,
        Hq // Hkv, Lq, Lk, scale, GROUP=group, BM=t.bm, BN=t.bn, D=D,
        IEEE=q.dtype == torch.float32, UPCAST=INTERPRET, **launch_options(t))
    return S
