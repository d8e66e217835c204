"""Dense decode over per-sequence key ranges in Triton (flash-decoding).

One query per sequence, q [B, Hq, 1, D], against a KV cache k, v [B, Hkv, n, D] of which
sequence b sees only positions [starts[b], ends[b]). This is full attention through the same
machinery as Top-k decoding: no mask tensor, no host synchronisation, lengths as runtime
arguments (one compilation for every cache length), and a static cache's unfilled tail is never
read. A program takes one (sequence, KV head) and one chunk of the key range and serves all G
query heads of that KV head from one read of each K/V tile; chunks are combined by
`triton_sparse._combine_kernel`. The reference is `naive.dense_attention_reference` with the
range as a padding mask.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from topkattn.ops.launch import cached_launch
from topkattn.ops.select import _interp  # noqa: F401  (interpreter shim)
from topkattn.ops.select.triton_select import pdl_launch, wait_prior
from topkattn.ops.topk.triton_env import num_sms
from topkattn.ops.topk.triton_sparse import (
    INTERPRET, _combine_kernel, check_qkv, mm, online_softmax_step, row_unit_strides,
    scale_strides, softmax_lse, unit_stride,
)
from topkattn.errors import InputError
from topkattn.ops.tuning import current

# knobs: `topkattn.ops.tuning.DenseTuning` (read from `current().dense` at each launch)


@cached_launch
@triton.jit(do_not_specialize=["n", "CHUNK", "skb", "skh", "skn", "svb", "svh", "svn"])
def _range_decode_kernel(
    Q, K, V, STARTS, ENDS, O, LSE, PM, PL, PACC,
    sqb, sqh, skb, skh, skn, svb, svh, svn, Hkv, n, G, CHUNK, scale,
    GP: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr, SPLITS: tl.constexpr,
    IEEE: tl.constexpr, UPCAST: tl.constexpr, SU: tl.constexpr = 1, PDL: tl.constexpr = False,
):
    """Program (b * Hkv + hkv, split): online softmax of the G query heads of KV head hkv over
    keys [lo, hi) = [starts[b], ends[b]) cut to this split's chunk of [0, n). K/V strides in
    units of SU elements (`triton_sparse.row_unit_strides`)."""
    wait_prior(PDL)
    skb, skh, skn = scale_strides(skb, skh, skn, SU)
    svb, svh, svn = scale_strides(svb, svh, svn, SU)
    bh = tl.program_id(0)
    split = tl.program_id(1)
    b = bh // Hkv
    hkv = bh % Hkv
    b64 = b.to(tl.int64)
    st = tl.maximum(tl.load(STARTS + b), 0)
    en = tl.minimum(tl.load(ENDS + b), n)
    lo = tl.maximum(split * CHUNK, st)
    hi = tl.minimum(split * CHUNK + CHUNK, en)
    g = tl.arange(0, GP)
    gm = g < G
    d = tl.arange(0, D)
    hq = (hkv * G + g).to(tl.int64)
    q = tl.load(Q + b64 * sqb + hq[:, None] * sqh + d[None, :], mask=gm[:, None], other=0.0)
    kbase = K + b64 * skb + hkv.to(tl.int64) * skh
    vbase = V + b64 * svb + hkv.to(tl.int64) * svh
    m_i = tl.full([GP], float("-inf"), tl.float32)
    l_i = tl.zeros([GP], tl.float32)
    acc = tl.zeros([GP, D], tl.float32)
    offs = tl.arange(0, BLOCK)
    for j in range(lo, hi, BLOCK):
        pos = j + offs
        pm = pos < hi
        p64 = pos.to(tl.int64)
        kt = tl.load(kbase + p64[:, None] * skn + d[None, :], mask=pm[:, None], other=0.0)
        s = mm(q, tl.trans(kt), IEEE, UPCAST) * scale
        s = tl.where(gm[:, None] & pm[None, :], s, float("-inf"))
        vt = tl.load(vbase + p64[:, None] * svn + d[None, :], mask=pm[:, None], other=0.0)
        m_i, l_i, acc = online_softmax_step(m_i, l_i, acc, s, vt, IEEE, UPCAST)
    orow = b64 * (Hkv * G) + hq  # rows of [B, Hq] (Lq = 1)
    if SPLITS == 1:
        l_safe = tl.where(l_i > 0, l_i, 1.0)
        tl.store(O + orow[:, None] * D + d[None, :], (acc / l_safe[:, None]).to(O.dtype.element_ty),
                 mask=gm[:, None])
        tl.store(LSE + orow, softmax_lse(m_i, l_i), mask=gm)
    else:
        prow = orow * SPLITS + split
        tl.store(PM + prow, m_i, mask=gm)
        tl.store(PL + prow, l_i, mask=gm)
        tl.store(PACC + prow[:, None] * D + d[None, :], acc, mask=gm[:, None])


def range_splits(rows: int, device: torch.device) -> int:
    """Chunks the key range of each of ``rows`` (sequence, KV head) programs is split over:
    enough programs for ``DenseTuning.waves`` per SM, at most 64. Independent of the cache length, so
    a growing cache never recompiles (chunks past a sequence's range exit at once)."""
    return max(1, min(current().dense.waves * num_sms(device) // max(rows, 1), 64))


def range_decode(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    starts: torch.Tensor,
    ends: torch.Tensor,
    scale: float | None = None,
    return_lse: bool = False,
):
    """Full attention of one query per sequence over keys [starts[b], ends[b]).

    Args:
        q: [B, Hq, 1, D]; k, v: [B, Hkv, n, D] (last dim contiguous; fp32/fp16/bf16).
        starts, ends: int32 [B] on q's device (clamped to [0, n] in the kernel); a sequence
            with ends <= starts sees nothing and gets a zero output, lse -inf.
        scale: default 1/sqrt(D).
        return_lse: also return fp32 [B, Hq, 1] log-sum-exp.

    Returns:
        out [B, Hq, 1, D] in q's dtype [, lse].
    """
    check_qkv(q, k, v)
    B, Hq, Lq, D = q.shape
    Hkv, n = k.shape[1], k.shape[2]
    if Lq != 1:
        raise InputError(f"range_decode takes one query per sequence (Lq=1); got Lq={Lq}")
    for name, t in (("starts", starts), ("ends", ends)):
        if t.shape != (B,) or t.dtype != torch.int32 or t.device != q.device:
            raise InputError(f"{name} must be int32 [B={B}] on {q.device}; got {t.dtype} "
                             f"{tuple(t.shape)} on {t.device}")
    G = Hq // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    q, k, v = unit_stride(q, k, v)
    starts, ends = starts.contiguous(), ends.contiguous()
    su, kvst = row_unit_strides(D, *k.stride()[:3], *v.stride()[:3])
    tune = current().dense
    splits = range_splits(B * Hkv, q.device)
    chunk = triton.cdiv(triton.cdiv(max(n, 1), splits), tune.block_n) * tune.block_n
    out = torch.empty(B, Hq, 1, D, dtype=q.dtype, device=q.device)
    lse = torch.empty(B, Hq, 1, dtype=torch.float32, device=q.device)
    if splits > 1:
        pm = torch.empty(B * Hq * splits, dtype=torch.float32, device=q.device)
        pl = torch.empty_like(pm)
        pacc = torch.empty(B * Hq * splits, D, dtype=torch.float32, device=q.device)
    else:
        pm = pl = pacc = lse
    _range_decode_kernel[(B * Hkv, splits)](
        q, k, v, starts, ends, out, lse, pm, pl, pacc,
        q.stride(0), q.stride(1), *kvst, Hkv, n, G, chunk, scale,
        GP=max(16, triton.next_power_of_2(G)), D=D, BLOCK=tune.block_n, SPLITS=splits,
        IEEE=q.dtype == torch.float32, UPCAST=INTERPRET, SU=su, num_warps=tune.warps,
        num_stages=tune.stages, **pdl_launch(q.device),
    )
    if splits > 1:
        _combine_kernel[(B * Hq,)](
            pm, pl, pacc, out, lse, splits, SP=triton.next_power_of_2(splits), D=D, num_warps=4,
            **pdl_launch(q.device),
        )
    return (out, lse) if return_lse else out
