"""Choose the Triton kernel for a `topk_attention` call, or None when no kernel fits.

Lq == 1 and no indices -> `triton_decode.topk_decode`; indices given -> `triton_sparse`;
otherwise (prefill / training) -> `triton_prefill` (autograd-aware). Unsupported inputs return
None so the caller falls back to the reference: float64, CPU tensors (unless
TRITON_INTERPRET=1), head_dim not in {16, 32, 64, 128, 256}, an ``attn_mask`` that is not a
right-padding key mask [B, 1, 1, Lk], ``topk=None`` (dense), gradients through decode/sparse,
and ``kv_group`` prefill.
"""

from __future__ import annotations

import os

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


def run(q, k, v, topk, causal, scale, sink, local, granularity, indices, attn_mask, return_lse):
    """Run the kernel that fits these inputs; None when none does (see module docstring)."""
    interp = os.environ.get("TRITON_INTERPRET", "0") == "1"
    if not (q.is_cuda or interp):
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
    lens = None
    if attn_mask is not None:
        lens = _padding_lens(attn_mask, B, Lk)
        if lens is None:
            return None
    if indices is not None:
        if needs_grad:
            return None
        from topkattn.ops.topk.triton_sparse import sparse_attention

        return sparse_attention(q, k, v, indices, causal, scale, sink, local, lens, return_lse)
    if topk is None:
        return None
    if Lq == 1 and not needs_grad:
        from topkattn.ops.topk.triton_decode import topk_decode

        # causal or not, one query at the last position sees every (unpadded) key
        return topk_decode(q, k, v, topk, scale, sink, local, granularity, lens, return_lse)
    if granularity != "query_head" or lens is not None:
        return None
    try:
        from topkattn.ops.topk.triton_prefill import topk_prefill
    except ImportError:
        return None
    return topk_prefill(q, k, v, topk, causal, scale, sink, local, return_lse)
