"""Sparse attention by indices in Triton: each query row attends to the listed key rows only.

``sparse_attention(q, k, v, indices)`` with indices [B, Hq or Hkv, Lq, n] (entries < 0 are
padding): a program takes one query row (one query head, or all G query heads of a KV head when
the indices are per KV head, so the group shares one gather of K/V rows), walks a slice of its
index list in blocks, gathers those K and V rows, and keeps an online softmax (flash-decoding).
Long index lists are split over several programs and combined by ``_combine_kernel`` from the
partial (max, sum, acc). The decode kernel reuses this with precomputed fp32 scores (``S``)
instead of gathered K rows. This is the primitive that approximate selectors reuse.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from topkattn.ops.launch import cached_launch
from topkattn.ops.select import _interp  # noqa: F401  (interpreter shim)
from topkattn.errors import InputError
from topkattn.ops.select.triton_select import pdl_launch, wait_prior
# INTERPRET: the CPU interpreter mis-computes tl.dot on bf16 operands, so `mm` upcasts under it
from topkattn.ops.topk.triton_env import INTERPRET, num_sms


@triton.jit
def mm(a, b, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """a @ b with fp32 accumulation (exact fp32 for fp32 inputs; fp32 operands under the
    interpreter)."""
    if IEEE:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    elif UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32))
    else:
        return tl.dot(a, b)


@triton.jit
def online_softmax_step(m_i, l_i, acc, s, vt, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """One block of an online softmax: running max m_i [G], sum l_i [G] and output acc [G, D]
    updated with scores s [G, N] (-inf = not attended) and values vt [N, D]."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(m_i - m_safe)
    p = tl.exp(s - m_safe[:, None])
    acc = acc * alpha[:, None] + mm(p.to(vt.dtype), vt, IEEE, UPCAST)
    return m_new, l_i * alpha + tl.sum(p, 1), acc


@triton.jit
def softmax_lse(m, l):
    """Log-sum-exp of the scores an online softmax took, from its running max m and sum l
    (same shape), as the reference's logsumexp gives it: -inf where nothing, or only -inf
    scores, was taken (l == 0); where a taken score is NaN or +inf, l is NaN (exp(inf - inf)):
    +inf when the max is +inf, else NaN."""
    l_safe = tl.where(l > 0, l, 1.0)
    return tl.where(l > 0, m + tl.log(l_safe),
                    tl.where(l == 0, float("-inf"),
                             tl.where(m == float("inf"), float("inf"), float("nan"))))


def row_unit_strides(D: int, *strides: int) -> tuple[int, tuple[int, ...]]:
    """(SU, strides // SU) for kernels that take cache strides in units of SU elements: SU = D
    when every stride is a multiple of D (transformers' caches, paged caches), else 1. The
    kernel multiplies them by the constexpr SU (`scale_strides`), so the compiler knows that
    every row starts D-aligned and vectorises the loads, while the unit strides, which grow
    with the cache, stay unspecialised (no recompilation as the cache grows)."""
    su = D if D > 0 and all(int(x) % D == 0 for x in strides) else 1
    return su, tuple(int(x) // su for x in strides)


@triton.jit
def scale_strides(a, b, c, SU: tl.constexpr):
    """Element strides (int64) from strides in units of SU (`row_unit_strides`)."""
    return a.to(tl.int64) * SU, b.to(tl.int64) * SU, c.to(tl.int64) * SU


@triton.jit
def kv_rows(b64, pos, skb, skn, BT, sbt, PS, valid, PAGED: tl.constexpr):
    """int64 offsets [N] of the cache rows at positions pos [N] of sequence b (head offset not
    included). Contiguous cache: b*skb + pos*skn. PAGED (block table BT [B, pages], page size
    PS): the page BT[b, pos // PS] times the page stride skb plus the slot pos % PS times skn.
    Rows where not ``valid`` get offset 0 (never read)."""
    if PAGED:
        pg = tl.load(BT + b64 * sbt + pos // PS, mask=valid, other=0).to(tl.int64)
        return tl.where(valid, pg * skb + (pos % PS).to(tl.int64) * skn, 0)
    else:
        return tl.where(valid, b64 * skb + pos.to(tl.int64) * skn, 0)


@cached_launch
@triton.jit(do_not_specialize=["Lk", "ssb", "ssh", "skb", "skh", "skn", "svb", "svh", "svn"])
def _sparse_fwd_kernel(
    Q, K, V, IDX, S, LENS, O, LSE, PM, PL, PACC, BT,
    sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sib, sih, sim, ssb, ssh, sbt, PS,
    Hq, Hi, Lq, Lk, NIDX, G, CHUNK, scale,
    CAUSAL: tl.constexpr, HEADS: tl.constexpr, GP: tl.constexpr, D: tl.constexpr,
    BLOCK: tl.constexpr, SPLITS: tl.constexpr, HAS_S: tl.constexpr, HAS_LENS: tl.constexpr,
    IEEE: tl.constexpr, UPCAST: tl.constexpr, PAGED: tl.constexpr, SU: tl.constexpr = 1,
    PDL: tl.constexpr = False,
):
    wait_prior(PDL)
    skb, skh, skn = scale_strides(skb, skh, skn, SU)
    svb, svh, svn = scale_strides(svb, svh, svn, SU)
    row = tl.program_id(0)  # (b, hi, m)
    split = tl.program_id(1)
    m = row % Lq
    bh = row // Lq
    hi = bh % Hi
    b = bh // Hi
    h0 = hi * HEADS  # first query head of this program
    hkv = h0 // G
    b64 = b.to(tl.int64)
    Lb = Lk
    if HAS_LENS:
        Lb = tl.minimum(tl.load(LENS + b), Lk)
    vis_end = Lb
    if CAUSAL:
        vis_end = tl.minimum(Lk - Lq + m + 1, Lb)
    g = tl.arange(0, GP)
    gm = g < HEADS
    d = tl.arange(0, D)
    q = tl.load(Q + b64 * sqb + (h0 + g)[:, None].to(tl.int64) * sqh + m.to(tl.int64) * sqm
                + d[None, :], mask=gm[:, None], other=0.0)
    vbase = V + hkv.to(tl.int64) * svh
    ibase = IDX + b64 * sib + hi.to(tl.int64) * sih + m.to(tl.int64) * sim
    m_i = tl.full([GP], float("-inf"), tl.float32)
    l_i = tl.zeros([GP], tl.float32)
    acc = tl.zeros([GP, D], tl.float32)
    lo = split * CHUNK
    hi_end = tl.minimum(lo + CHUNK, NIDX)
    offs = tl.arange(0, BLOCK)
    for j in range(lo, hi_end, BLOCK):
        jj = j + offs
        idx = tl.load(ibase + jj, mask=jj < hi_end, other=-1)
        valid = (idx >= 0) & (idx < vis_end)
        idx64 = tl.where(valid, idx, 0).to(tl.int64)
        if HAS_S:
            s = tl.load(S + b64 * ssb + (h0 + g)[:, None].to(tl.int64) * ssh + idx64[None, :],
                        mask=gm[:, None] & valid[None, :], other=0.0)
        else:
            kr = kv_rows(b64, idx64, skb, skn, BT, sbt, PS, valid, PAGED)
            kt = tl.load(K + hkv.to(tl.int64) * skh + kr[:, None] + d[None, :],
                         mask=valid[:, None], other=0.0)
            s = mm(q, tl.trans(kt), IEEE, UPCAST) * scale
        s = tl.where(gm[:, None] & valid[None, :], s, float("-inf"))
        vr = kv_rows(b64, idx64, svb, svn, BT, sbt, PS, valid, PAGED)
        vt = tl.load(vbase + vr[:, None] + d[None, :], mask=valid[:, None], other=0.0)
        m_i, l_i, acc = online_softmax_step(m_i, l_i, acc, s, vt, IEEE, UPCAST)
    orow = (b64 * Hq + (h0 + g).to(tl.int64)) * Lq + m  # [GP] rows of [B, Hq, Lq]
    if SPLITS == 1:
        l_safe = tl.where(l_i > 0, l_i, 1.0)
        out = acc / l_safe[:, None]
        lse = softmax_lse(m_i, l_i)
        tl.store(O + orow[:, None] * D + d[None, :], out.to(O.dtype.element_ty), mask=gm[:, None])
        tl.store(LSE + orow, lse, mask=gm)
    else:
        prow = orow * SPLITS + split
        tl.store(PM + prow, m_i, mask=gm)
        tl.store(PL + prow, l_i, mask=gm)
        tl.store(PACC + prow[:, None] * D + d[None, :], acc, mask=gm[:, None])


@cached_launch
@triton.jit
def _combine_kernel(PM, PL, PACC, O, LSE, SPLITS, SP: tl.constexpr, D: tl.constexpr,
                    PDL: tl.constexpr = False):
    wait_prior(PDL)
    row = tl.program_id(0).to(tl.int64)
    sp = tl.arange(0, SP)
    d = tl.arange(0, D)
    sm = sp < SPLITS
    pm = tl.load(PM + row * SPLITS + sp, mask=sm, other=float("-inf"))
    pl = tl.load(PL + row * SPLITS + sp, mask=sm, other=0.0)
    pacc = tl.load(PACC + (row * SPLITS + sp)[:, None] * D + d[None, :], mask=sm[:, None], other=0.0)
    mx = tl.max(pm, 0)
    mx_safe = tl.where(mx == float("-inf"), 0.0, mx)
    w = tl.where(pm == float("-inf"), 0.0, tl.exp(pm - mx_safe))
    l = tl.sum(w * pl, 0)
    acc = tl.sum(w[:, None] * pacc, 0)
    l_safe = tl.where(l > 0, l, 1.0)
    tl.store(O + row * D + d, (acc / l_safe).to(O.dtype.element_ty))
    tl.store(LSE + row, softmax_lse(mx, l))


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Shape / dtype checks shared by the kernels (ValueError naming the value)."""
    from topkattn.ops.topk.naive import check_inputs

    check_inputs(q, k, v, None)
    if q.dtype == torch.float64:
        raise InputError("Triton kernels support float32, float16 and bfloat16, not float64")
    D = q.shape[-1]
    if D not in (16, 32, 64, 128, 256):
        raise InputError(f"head_dim must be one of 16, 32, 64, 128, 256 for the kernels; got {D}")


def unit_stride(*ts: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors with a contiguous last dim (the kernels' loads assume stride 1 there);
    copies only those that need it."""
    return tuple(t if t.stride(-1) == 1 else t.contiguous() for t in ts)


def check_paged(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_table: torch.Tensor) -> int:
    """Checks of a paged KV cache (ValueError naming the value); returns the positions a
    sequence can hold, pages * page_size. q [B, Hq, Lq, D]; k, v [num_pages, page_size, Hkv, D];
    block_table int [B, pages] of page numbers in [0, num_pages)."""
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape:
        raise InputError("paged cache: q must be [B, Hq, Lq, D] and k, v [num_pages, page_size, "
                         f"Hkv, D] of one shape; got q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise InputError(f"q, k, v must share one of float32/float16/bfloat16; got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.device != k.device or q.device != v.device:
        raise InputError(f"q, k, v must be on one device; got {q.device}, {k.device}, {v.device}")
    B, Hq, _, D = q.shape
    if k.shape[-1] != D or Hq % k.shape[2]:
        raise InputError(f"paged cache: head_dim {k.shape[-1]} must equal q's {D} and Hkv "
                         f"{k.shape[2]} divide Hq {Hq}")
    if D not in (16, 32, 64, 128, 256):
        raise InputError(f"head_dim must be one of 16, 32, 64, 128, 256 for the kernels; got {D}")
    if block_table.dim() != 2 or block_table.shape[0] != B or block_table.dtype not in (torch.int32, torch.int64):
        raise InputError(f"block_table must be int32/int64 [B={B}, pages]; got "
                         f"{block_table.dtype} {tuple(block_table.shape)}")
    if block_table.numel() and (block_table.min() < 0 or block_table.max() >= k.shape[0]):
        raise InputError(f"block_table entries must lie in [0, num_pages={k.shape[0]}); got "
                         f"[{int(block_table.min())}, {int(block_table.max())}]")
    return block_table.shape[1] * k.shape[1]


def check_cache(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                block_table: torch.Tensor | None) -> tuple[int, int]:
    """Checks q, k, v for the kernels (a contiguous cache k, v [B, Hkv, n, D], or a paged one
    with ``block_table``); returns (Hkv, n), n the positions a sequence can hold."""
    if block_table is None:
        check_qkv(q, k, v)
        return k.shape[1], k.shape[2]
    return k.shape[2], check_paged(q, k, v, block_table)


def check_bounds(B: int, device: torch.device, **bounds: torch.Tensor | None
                 ) -> tuple[torch.Tensor | None, ...]:
    """Per-sequence key bounds (``starts=``, ``ends=``: int [B] or None) as int32 [B] on
    ``device``, contiguous, in the order given; None stays None. InputError naming a bound of
    another shape."""
    out = []
    for name, t in bounds.items():
        if t is not None:
            if t.shape != (B,):
                raise InputError(f"{name} must be [B={B}]; got {tuple(t.shape)}")
            t = t.to(device=device, dtype=torch.int32).contiguous()
        out.append(t)
    return tuple(out)


def forced_indices(Lq: int, Lk: int, B: int, device: torch.device, *, causal: bool, sink: int,
                   local: int, starts: torch.Tensor | None = None,
                   ends: torch.Tensor | None = None) -> torch.Tensor:
    """Sink / local positions of every query row as indices [B, 1, Lq, sink + local] (-1 = none)
    for keys [starts[b], ends[b]) of each sequence (int [B] or None: 0 and Lk); positions before
    a sequence's start are not visible."""
    Lb = ends.long().clamp(max=Lk).view(B, 1) if ends is not None else torch.full(
        (B, 1), Lk, device=device, dtype=torch.long)
    if causal:
        vis_end = torch.minimum(torch.arange(Lk - Lq + 1, Lk + 1, device=device).view(1, Lq), Lb)
    else:
        vis_end = Lb.expand(B, Lq)
    st = (starts.long().view(B, 1, 1).to(device) if starts is not None
          else torch.zeros(B, 1, 1, device=device, dtype=torch.long))
    parts = []
    if sink > 0:
        p = torch.arange(sink, device=device).view(1, 1, sink)
        parts.append(torch.where((p < vis_end[..., None]) & (p >= st), p, -1))
    if local > 0:
        p = vis_end[..., None] - local + torch.arange(local, device=device).view(1, 1, local)
        parts.append(torch.where(p >= st, p, -1))
    return torch.cat(parts, -1).unsqueeze(1)


def dedupe_indices(indices: torch.Tensor) -> torch.Tensor:
    """Sort each row and replace repeated positions by -1 (the reference treats the index list
    as a set). int32, same shape."""
    srt = indices.long().sort(dim=-1).values
    dup = torch.zeros_like(srt, dtype=torch.bool)
    dup[..., 1:] = srt[..., 1:] == srt[..., :-1]
    return torch.where(dup | (srt < 0), -1, srt).to(torch.int32)


def sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    indices: torch.Tensor,
    *,
    causal: bool = True,
    scale: float | None = None,
    sink: int = 0,
    local: int = 0,
    starts: torch.Tensor | None = None,
    ends: torch.Tensor | None = None,
    return_lse: bool = False,
    assume_unique: bool = False,
    scores: torch.Tensor | None = None,
    block: int = 64,
    splits: int | None = None,
    block_table: torch.Tensor | None = None,
):
    """Attention of each query row over the key rows named by ``indices`` (plus sink/local).

    Args:
        q: [B, Hq, Lq, D]; k, v: [B, Hkv, Lk, D] (last dim contiguous).
        indices: int [B, Hq or Hkv, Lq, n]; entries < 0 are padding; positions the query may
            not see (causality, ``starts`` / ``ends``) are dropped, as in the reference.
        causal: query i sits at position Lk - Lq + i.
        scale: default 1/sqrt(D).
        sink, local: first / most recent visible positions always attended.
        starts, ends: int [B] first visible key (left padding) and one past the last (a
            right-padding mask) of each sequence, or None (0, Lk): indices outside
            [starts[b], ends[b]) are dropped.
        return_lse: also return fp32 [B, Hq, Lq] log-sum-exp of the selected scores.
        assume_unique: skip de-duplication (each row's indices already distinct and without
            the sink/local positions, e.g. from an exact selector).
        scores: optional precomputed fp32 scores [B, Hq, Lk] (decode, Lq == 1), read instead of
            gathering K rows.
        block_table: int [B, pages] for a paged KV cache (vLLM / FlashInfer style): then k, v
            are [num_pages, page_size, Hkv, D] and position p of sequence b lives in page
            ``block_table[b, p // page_size]``, slot ``p % page_size``; Lk = pages * page_size.

    Returns:
        out [B, Hq, Lq, D] in q's dtype (zero rows where nothing is selected) [, lse].
    """
    Hkv, Lk = check_cache(q, k, v, block_table)
    B, Hq, Lq, D = q.shape
    G = Hq // Hkv
    if indices.dim() != 4 or indices.shape[0] != B or indices.shape[2] != Lq or indices.shape[1] not in (Hq, Hkv):
        raise InputError(f"indices must be [B={B}, Hq={Hq} or Hkv={Hkv}, Lq={Lq}, n]; got {tuple(indices.shape)}")
    if indices.dtype not in (torch.int32, torch.int64):
        raise InputError(f"indices must be int32 or int64, got {indices.dtype}")
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    starts, ends = check_bounds(B, q.device, starts=starts, ends=ends)
    if starts is not None:
        indices = torch.where(indices < starts.to(indices.dtype).view(B, 1, 1, 1), -1, indices)
    if sink or local:
        f = forced_indices(Lq, Lk, B, q.device, causal=causal, sink=sink, local=local,
                           starts=starts, ends=ends)
        indices = torch.cat([indices.long(), f.expand(B, indices.shape[1], Lq, -1)], -1)
        assume_unique = False
    if not assume_unique:
        indices = dedupe_indices(indices)
    indices = indices.to(torch.int32).contiguous()
    q, k, v = unit_stride(q, k, v)
    if block_table is None:  # [B, H, L, D]: batch, head, position strides
        kst = (k.stride(0), k.stride(1), k.stride(2))
        vst = (v.stride(0), v.stride(1), v.stride(2))
        bt, sbt, ps = None, 0, 1
    else:  # [pages, page_size, H, D]: page, head, slot strides
        kst = (k.stride(0), k.stride(2), k.stride(1))
        vst = (v.stride(0), v.stride(2), v.stride(1))
        bt = block_table.to(device=q.device, dtype=torch.int32).contiguous()
        sbt, ps = bt.stride(0), k.shape[1]
    su, kvst = row_unit_strides(D, *kst, *vst)
    Hi = indices.shape[1]
    heads = G if (Hi == Hkv and G > 1) else 1
    gp = max(16, triton.next_power_of_2(heads))
    nidx = indices.shape[-1]
    rows = B * Hi * Lq
    if splits is None:
        want = max(1, (2 * num_sms(q.device)) // max(rows, 1))
        splits = max(1, min(want, triton.cdiv(nidx, block), 64))
    chunk = triton.cdiv(triton.cdiv(nidx, splits), block) * block
    splits = max(1, triton.cdiv(nidx, chunk))
    out = torch.empty(B, Hq, Lq, D, dtype=q.dtype, device=q.device)
    lse = torch.empty(B, Hq, Lq, dtype=torch.float32, device=q.device)
    if splits > 1:
        pm = torch.empty(B * Hq * Lq * splits, dtype=torch.float32, device=q.device)
        pl = torch.empty_like(pm)
        pacc = torch.empty(B * Hq * Lq * splits, D, dtype=torch.float32, device=q.device)
    else:
        pm = pl = pacc = lse
    lens = ends if ends is not None else lse
    s_arg = scores if scores is not None else lse
    ss = (scores.stride(0), scores.stride(1)) if scores is not None else (0, 0)
    _sparse_fwd_kernel[(rows, splits)](
        q, k, v, indices, s_arg, lens, out, lse, pm, pl, pacc, bt if bt is not None else lens,
        q.stride(0), q.stride(1), q.stride(2), *kvst,
        indices.stride(0), indices.stride(1), indices.stride(2), ss[0], ss[1], sbt, ps,
        Hq, Hi, Lq, Lk, nidx, G, chunk, scale,
        CAUSAL=causal, HEADS=heads, GP=gp, D=D, BLOCK=block, SPLITS=splits,
        HAS_S=scores is not None, HAS_LENS=ends is not None,
        IEEE=q.dtype == torch.float32, UPCAST=INTERPRET, PAGED=bt is not None, SU=su, num_warps=4,
        **pdl_launch(q.device),
    )
    if splits > 1:
        _combine_kernel[(B * Hq * Lq,)](
            pm, pl, pacc, out, lse, splits, SP=triton.next_power_of_2(splits), D=D, num_warps=4,
            **pdl_launch(q.device),
        )
    return (out, lse) if return_lse else out
