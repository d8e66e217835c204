"""Choose the Triton kernel for a `topk_attention` call, or None when no kernel fits.

Lq == 1 and no indices -> `triton_decode.topk_decode`; indices given -> `triton_sparse`;
otherwise (prefill / training) -> `triton_prefill` (autograd-aware). Unsupported inputs return
None so the caller falls back to the reference: float64, CPU tensors (unless
TRITON_INTERPRET=1), head_dim not in {16, 32, 64, 128, 256}, ``topk=None`` (dense), gradients
through decode/sparse, and an ``attn_mask`` of another form than a per-sequence key range,
i.e. a mask [B or 1, 1, Lq or 1, Lk] that equals exactly ``start[b] <= key < end[b]`` (left or
right padding), optionally AND causality (the form transformers passes for left-padded
batches).
"""

from __future__ import annotations

from topkattn.ops.topk.triton_env import kernels_run_on


import torch

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _padding_lens(attn_mask: torch.Tensor, B: int, Lk: int) -> torch.Tensor | None:
    """Lengths int32 [B] when ``attn_mask`` is a right-padding key mask, else None."""
    if attn_mask.dtype != torch.bool or attn_mask.dim() != 4 or attn_mask.shape[1] != 1 or attn_mask.shape[2] != 1:
        return None
    if attn_mask.shape[-1] != Lk or attn_mask.shape[0] not in (1, B):
        return None
    m = attn_mask[:, 0, 0, :].expand(B, Lk)
    lens = m.sum(-1)
    prefix = torch.arange(Lk, device=m.device)[None, :] < lens[:, None]
    if not torch.equal(prefix, m):
        return None
    return lens.to(torch.int32)


def _padding_bounds(attn_mask, B, Lq, Lk, causal, chunk=1024):
    """(starts, ends, causal) when ``attn_mask`` (AND ``causal``) equals exactly
    ``starts[b] <= key < ends[b]`` (AND causality, queries at the last Lq positions), else None.
    ``causal`` comes back True when the mask itself holds causality. Checked in row chunks."""
    if attn_mask.dtype != torch.bool or attn_mask.dim() != 4 or attn_mask.shape[1] != 1:
        return None
    if attn_mask.shape[0] not in (1, B) or attn_mask.shape[2] not in (1, Lq) or attn_mask.shape[3] != Lk:
        return None
    m = attn_mask[:, 0].expand(B, Lq, Lk)
    pos = torch.arange(Lk, device=m.device)

    def cvis(r0, r1):  # [r1 - r0, Lk]: query i (at position Lk - Lq + i) sees keys <= it
        return pos[None, :] <= torch.arange(Lk - Lq + r0, Lk - Lq + r1, device=m.device)[:, None]

    def rows(r0, r1):
        return m[:, r0:r1] & cvis(r0, r1) if causal else m[:, r0:r1]

    union = torch.zeros(B, Lk, dtype=torch.bool, device=m.device)
    for r0 in range(0, Lq, chunk):
        union |= rows(r0, min(Lq, r0 + chunk)).any(1)
    anyv = union.any(-1)
    starts = torch.where(anyv, union.int().argmax(-1), 0)
    ends = torch.where(anyv, Lk - union.flip(-1).int().argmax(-1), 0)
    key = (pos[None, :] >= starts[:, None]) & (pos[None, :] < ends[:, None])  # [B, Lk]
    for form_causal in ((True,) if causal else (True, False)):
        ok = True
        for r0 in range(0, Lq, chunk):
            r1 = min(Lq, r0 + chunk)
            want = key[:, None, :] & cvis(r0, r1) if form_causal else key[:, None, :].expand(B, r1 - r0, Lk)
            if not torch.equal(rows(r0, r1), want):
                ok = False
                break
        if ok:
            return starts.to(torch.int32), ends.to(torch.int32), form_causal
    return None


def run(q, k, v, *, topk, causal, scale, sink, local, granularity, indices, attn_mask, return_lse):
    """Run the kernel that fits these inputs; None when none does (see module docstring)."""
    if not kernels_run_on(q):
        return None
    if q.dtype not in SUPPORTED_DTYPES or not (q.dtype == k.dtype == v.dtype):
        return None
    if q.dim() != 4 or k.dim() != 4 or q.shape[-1] not in (16, 32, 64, 128, 256):
        return None
    try:
        import triton  # noqa: F401
    except ImportError:
        return None
    B, Hq, Lq, _ = q.shape
    Lk = k.shape[2]
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    prefill = indices is None and topk is not None and not (Lq == 1 and not needs_grad)
    lens = starts = None
    if attn_mask is not None and not prefill:
        lens = _padding_lens(attn_mask, B, Lk)
        if lens is None:  # left padding (transformers' mask for left-padded batches)
            bounds = _padding_bounds(attn_mask, B, Lq, Lk, causal)
            if bounds is None:
                return None
            starts, lens, causal = bounds
    if indices is not None:
        if needs_grad:
            return None
        from topkattn.ops.topk.triton_sparse import sparse_attention

        return sparse_attention(q, k, v, indices, causal=causal, scale=scale, sink=sink,
                                local=local, starts=starts, ends=lens, return_lse=return_lse)
    if topk is None:
        return None
    if Lq == 1 and not needs_grad:
        from topkattn.ops.topk.triton_decode import topk_decode

        # causal or not, one query at the last position sees every (unpadded) key
        return topk_decode(q, k, v, topk=topk, scale=scale, sink=sink, local=local,
                           granularity=granularity, starts=starts, ends=lens,
                           return_lse=return_lse)
    if granularity not in ("query_head", "kv_group"):
        return None
    starts = ends = None
    if attn_mask is not None:
        bounds = _padding_bounds(attn_mask, B, Lq, Lk, causal)
        if bounds is None:
            return None
        starts, ends, causal = bounds
    try:
        from topkattn.ops.topk.triton_prefill import topk_prefill
    except ImportError:
        return None
    res = topk_prefill(q, k, v, topk=topk, causal=causal, scale=scale, sink=sink, local=local,
                       granularity=granularity, starts=starts, ends=ends, return_lse=return_lse)
    bad = _nan_rows(q, k, causal, starts, ends)[..., None]  # the NaN policy, see _nan_rows
    if return_lse:
        return res[0].masked_fill(bad, float("nan")), res[1].masked_fill(bad[..., 0], float("nan"))
    return res.masked_fill(bad, float("nan"))


def _nan_rows(q, k, causal, starts=None, ends=None) -> torch.Tensor:
    """bool [B, Hq, Lq]: rows whose query, or a key they see, holds a NaN.

    The reference (and SDPA) give NaN there: a NaN score ranks first. The prefill kernels
    select NaN scores themselves (see `triton_prefill`'s NaN / inf policy); the wrapper writes
    these rows as well (device-side, no sync) so that the guarantee does not rest on how the
    compiler treats NaN in the kernels' compares.
    q [B, Hq, Lq, D] at the last Lq positions; k [B, Hkv, Lk, D]; starts, ends int [B] or None.
    """
    B, Hq, Lq, _ = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    pos = torch.arange(Lk, device=k.device)
    kn = k.isnan().any(-1)  # [B, Hkv, Lk]
    if starts is not None:
        kn = kn & (pos >= starts.view(B, 1, 1))
    if ends is not None:
        kn = kn & (pos < ends.view(B, 1, 1))
    first = torch.where(kn, pos, Lk).amin(-1).repeat_interleave(Hq // Hkv, 1)  # [B, Hq]
    if causal:
        bad = torch.arange(Lk - Lq, Lk, device=q.device) >= first[..., None]
    else:
        bad = (first < Lk)[..., None].expand(B, Hq, Lq)
    return bad | q.isnan().any(-1)
