"""Fused exact Top-k decode in Triton (Top-k Decoding, arXiv 2512.03494).

A batch of single-token queries q [B, Hq, 1, D] against a contiguous KV cache k, v
[B, Hkv, n, D] with optional per-sequence key bounds [starts, ends). Three stages:

1. ``_scores_kernel`` (grid B*Hkv x key blocks): each program reads one K tile once and scores
   it against all G query heads of its KV head (one tl.dot). ``query_head`` writes fp32 scores
   [B, Hq, n] (Hq*n*4 bytes per sequence, 1/16 of K for Llama-3-8B shapes); ``kv_group``
   writes only the group sum [B, Hkv, n].
2. `topkattn.ops.select.triton_select.select_rows`: sampled histogram, scan, and exact finish of the k-th largest score of every row, writing the
   selected positions (ties: lowest position wins) plus sink/local.
3. `topkattn.ops.topk.triton_sparse.sparse_attention`: gathers the selected rows (V, and the
   stored scores for ``query_head`` or the K rows of the group for ``kv_group``), online
   softmax split over programs (flash-decoding), then a combine. K is read once in full; V
   only at selected rows.

NaN / inf policy, the reference's (`topkattn.ops.topk.naive`), with no extra pass: the
selection reads a NaN score or group sum (of either sign: 0 * inf is a negative NaN on x86) as
+inf (`triton_select._f32_skey`), so a NaN or +inf score is selected and its row comes out
NaN, and with kv_group a NaN group sum (a NaN query, or +inf and -inf scores in one group)
ranks first while each head attends with its own score; lse is NaN, or +inf where the max
selected score is +inf (`triton_sparse.softmax_lse`); values are read at selected rows only,
so a NaN / inf value outside the selection takes no part.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from topkattn.ops.launch import cached_launch
from topkattn.ops.select import _interp  # noqa: F401  (interpreter shim)
from topkattn.ops.select.triton_select import row_range, pdl_launch, select_rows, wait_prior, workspace
from topkattn.ops.topk.triton_env import num_sms
from topkattn.ops.topk.triton_sparse import (
    INTERPRET, check_bounds, check_cache, kv_rows, mm, row_unit_strides, scale_strides,
    sparse_attention, unit_stride,
)
from topkattn.errors import InputError
from topkattn.ops.tuning import current

GRANULARITIES = ("query_head", "kv_group")
# knobs: `topkattn.ops.tuning.DecodeTuning` (read from `current().decode` at each launch)


@cached_launch
@triton.jit(do_not_specialize=["n", "ssb", "ssh", "sgb", "sgh", "skb", "skh", "skn"])
def _scores_kernel(
    Q, K, S, SG, LENS, BT, sqb, sqh, skb, skh, skn, ssb, ssh, sgb, sgh, sbt, PS, Hkv, n, G, scale,
    GP: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr, TILES: tl.constexpr,
    HAS_LENS: tl.constexpr, WRITE_S: tl.constexpr, WRITE_G: tl.constexpr,
    IEEE: tl.constexpr, UPCAST: tl.constexpr, PAGED: tl.constexpr, SU: tl.constexpr = 1,
    PDL: tl.constexpr = False,
):
    """Each program scores TILES consecutive tiles of BLOCK_N keys of one (sequence, KV head),
    up to the sequence's length. K rows come from a contiguous [B, Hkv, n, D] cache or, PAGED,
    from pages through the block table BT (see `triton_sparse.kv_rows`); K strides in units of
    SU elements (`triton_sparse.row_unit_strides`)."""
    wait_prior(PDL)
    skb, skh, skn = scale_strides(skb, skh, skn, SU)
    bh = tl.program_id(0)
    b = bh // Hkv
    hkv = bh % Hkv
    b64 = b.to(tl.int64)
    _, L = row_range(LENS, LENS, bh, Hkv, n, HAS_LENS, False)  # sequence bh // Hkv = b
    g = tl.arange(0, GP)
    gm = g < G
    d = tl.arange(0, D)
    hq = (hkv * G + g).to(tl.int64)
    first = tl.program_id(1) * (BLOCK_N * TILES)
    if first < L:
        q = tl.load(Q + b64 * sqb + hq[:, None] * sqh + d[None, :], mask=gm[:, None], other=0.0)
        for t in range(TILES):
            pos = first + t * BLOCK_N + tl.arange(0, BLOCK_N)
            pm = pos < L
            kr = kv_rows(b64, pos, skb, skn, BT, sbt, PS, pm, PAGED)
            kt = tl.load(K + hkv.to(tl.int64) * skh + kr[:, None] + d[None, :],
                         mask=pm[:, None], other=0.0)
            s = mm(q, tl.trans(kt), IEEE, UPCAST) * scale  # [GP, BLOCK_N] fp32
            if WRITE_S:
                tl.store(S + b64 * ssb + hq[:, None] * ssh + pos[None, :], s,
                         mask=gm[:, None] & pm[None, :])
            if WRITE_G:
                sg = tl.sum(tl.where(gm[:, None], s, 0.0), 0)
                tl.store(SG + b64 * sgb + hkv.to(tl.int64) * sgh + pos, sg, mask=pm)


def decode_scores(q: torch.Tensor, k: torch.Tensor, *, scale: float,
                  ends: torch.Tensor | None = None, group_sum: bool = False, block_n: int = 64,
                  write_s: bool = True, block_table: torch.Tensor | None = None,
                  ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """fp32 scores [B, Hq, n] (unless not ``write_s``) and the KV-group sum [B, Hkv, n] when
    ``group_sum``, for q [B, Hq, 1, D] against k [B, Hkv, n, D].

    ``ends``: int32 [B] on q's device, one past the last key of each sequence (None: n);
    positions at or past it are left unwritten (never read later). With ``block_table``
    (int32 [B, pages]) k is a paged cache [num_pages, page_size, Hkv, D]."""
    B, Hq, _, D = q.shape
    if block_table is None:
        Hkv, n = k.shape[1], k.shape[2]
        kst, bt, sbt, ps = (k.stride(0), k.stride(1), k.stride(2)), None, 0, 1
    else:
        Hkv, n = k.shape[2], block_table.shape[1] * k.shape[1]
        kst, bt, sbt, ps = (k.stride(0), k.stride(2), k.stride(1)), block_table, block_table.stride(0), k.shape[1]
    G = Hq // Hkv
    su, kst = row_unit_strides(D, *kst)
    S = torch.empty(B, Hq, n, dtype=torch.float32, device=q.device) if write_s else None
    SG = torch.empty(B, Hkv, n, dtype=torch.float32, device=q.device) if group_sum else None
    dummy = S if S is not None else SG if SG is not None else q
    s_arg = S if S is not None else dummy
    sg_arg = SG if SG is not None else dummy
    lens = ends if ends is not None else dummy
    tune = current().decode
    _scores_kernel[(B * Hkv, triton.cdiv(n, block_n * tune.tiles))](
        q, k, s_arg, sg_arg, lens, bt if bt is not None else dummy,
        q.stride(0), q.stride(1), *kst,
        S.stride(0) if S is not None else 0, S.stride(1) if S is not None else 0,
        SG.stride(0) if SG is not None else 0, SG.stride(1) if SG is not None else 0, sbt, ps,
        Hkv, n, G, scale,
        GP=max(16, triton.next_power_of_2(G)), D=D, BLOCK_N=block_n, TILES=tune.tiles,
        HAS_LENS=ends is not None, WRITE_S=write_s, WRITE_G=group_sum,
        IEEE=q.dtype == torch.float32, UPCAST=INTERPRET, PAGED=bt is not None, SU=su,
        num_warps=tune.scores_warps, num_stages=tune.scores_stages, **pdl_launch(q.device),
    )
    return S, SG


def topk_decode(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    topk: int,
    scale: float | None = None,
    sink: int = 0,
    local: int = 0,
    granularity: str = "query_head",
    starts: torch.Tensor | None = None,
    ends: torch.Tensor | None = None,
    return_lse: bool = False,
    block_table: torch.Tensor | None = None,
):
    """Exact Top-k attention for one new token per sequence.

    Args:
        q: [B, Hq, 1, D]; k, v: [B, Hkv, n, D] (KV cache, last dim contiguous).
        topk: keys selected per query head (or per KV group) besides sink/local.
        scale: default 1/sqrt(D).
        sink, local: always kept: key slots 0 .. sink-1 inside [starts, ends), and the
            ``local`` last positions of the range.
        granularity: "query_head" or "kv_group" (one set per KV head from the summed scores
            of its query heads).
        starts, ends: int [B] first valid cache position (left padding; None: 0) and one
            past the last (the valid length; None: n) of each sequence. Sequence b sees
            positions [starts[b], ends[b]); one that sees none gives a zero output and
            lse -inf.
        return_lse: also return fp32 [B, Hq, 1] log-sum-exp of the selected scores.
        block_table: int [B, pages] for a paged KV cache (vLLM / FlashInfer style): k, v are
            then [num_pages, page_size, Hkv, D] and position p of sequence b is slot
            p % page_size of page block_table[b, p // page_size]; n = pages * page_size, and
            ``ends`` gives the filled length of each sequence.

    Returns:
        out [B, Hq, 1, D] in q's dtype [, lse]; matches `topk_attention_reference` with the
        padding mask of ``starts`` / ``ends``.
    """
    Hkv, n = check_cache(q, k, v, block_table)
    B, Hq, Lq, D = q.shape
    if block_table is not None:
        block_table = block_table.to(device=q.device, dtype=torch.int32).contiguous()
    if Lq != 1:
        raise InputError(f"topk_decode takes one query per sequence (Lq=1); got Lq={Lq}")
    if isinstance(topk, bool) or not isinstance(topk, int) or topk <= 0:
        raise InputError(f"topk must be a positive integer, got {topk!r}")
    if granularity not in GRANULARITIES:
        raise InputError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if sink < 0 or local < 0:
        raise InputError(f"sink and local must be >= 0; got sink={sink}, local={local}")
    G = Hq // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    q, k, v = unit_stride(q, k, v)
    starts, ends = check_bounds(B, q.device, starts=starts, ends=ends)  # kernels clamp
    group = granularity == "kv_group" and G > 1
    hsel = Hkv if group else Hq
    kk = min(topk, n)
    R = B * hsel
    work = workspace(R, q.device)
    # kv_group: the per-head scores are not stored; the sparse pass re-gathers the selected K
    # rows (one gather per KV group, as cheap as the V gather) instead of writing and
    # gathering B*Hq*n fp32 scores.
    tune = current().decode
    S, SG = decode_scores(q, k, scale=scale, ends=ends, group_sum=group, block_n=tune.block_n,
                          write_s=not group, block_table=block_table)
    sel_scores = SG if group else S
    idx = select_rows(sel_scores.view(R, n), k=kk, starts=starts, ends=ends, rows_per_seq=hsel,
                      sink=sink, local=local, work=work)
    nidx = idx.shape[-1]
    idx = idx.view(B, hsel, 1, nidx)
    splits = max(1, min(tune.sparse_waves * num_sms(q.device) // R, triton.cdiv(nidx, 64), 64))
    return sparse_attention(q, k, v, idx, causal=True, scale=scale, ends=ends,
                            return_lse=return_lse, assume_unique=True,
                            scores=None if group else S, splits=splits,
                            block_table=block_table)
