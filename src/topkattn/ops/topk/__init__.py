"""Top-k attention: one entry point that dispatches to a Triton kernel or the reference.

`topk_attention` is the functional form used by the Hugging Face integration, the selectors
and the benchmarks. On CUDA tensors with Triton available it runs the fused kernels
(`triton_decode`, `triton_prefill`, `triton_sparse`); elsewhere the pure-PyTorch reference
(`naive`). ``backend="reference"`` or the environment variable ``TOPKATTN_BACKEND=reference``
forces the reference (tests use this to compare).
"""

from __future__ import annotations

import os
import warnings

import torch

from topkattn.ops.topk.naive import topk_attention_reference
from topkattn.errors import InputError

BACKENDS = ("auto", "reference", "triton")
_warned: set[str] = set()


def resolve_backend(backend: str) -> str:
    """``backend`` with ``TOPKATTN_BACKEND`` applied to "auto" (ValueError for unknown ones)."""
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {BACKENDS}, got {backend!r}")
    env = os.environ.get("TOPKATTN_BACKEND")
    if backend == "auto" and env:
        if env not in BACKENDS:
            raise InputError(f"TOPKATTN_BACKEND must be one of {BACKENDS}, got {env!r}")
        backend = env
    return backend


def use_kernels(q: torch.Tensor, backend: str = "auto") -> bool:
    """Whether the Triton kernels should take tensors like ``q`` under ``backend``: "auto" on
    CUDA, "triton" anywhere they can run (CUDA, or CPU under the interpreter), never for
    "reference"."""
    from topkattn.ops.topk.triton_env import kernels_run_on

    backend = resolve_backend(backend)
    if backend == "reference":
        return False
    return kernels_run_on(q) and (backend == "triton" or q.is_cuda)


def _kernel_dispatch(q, k, v, topk, causal, scale, sink, local, granularity, indices, attn_mask, return_lse):
    """Run the Triton kernel that fits, or return None when none does."""
    try:
        from topkattn.ops.topk import dispatch_triton
    except ImportError:
        return None
    return dispatch_triton.run(
        q, k, v, topk, causal, scale, sink, local, granularity, indices, attn_mask, return_lse
    )


def topk_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    topk: int | None = 64,
    causal: bool = True,
    scale: float | None = None,
    sink: int = 0,
    local: int = 0,
    granularity: str = "query_head",
    indices: torch.Tensor | None = None,
    attn_mask: torch.Tensor | None = None,
    return_lse: bool = False,
    backend: str = "auto",
):
    """Top-k attention. q [B, Hq, Lq, D]; k, v [B, Hkv, Lk, D] -> out [B, Hq, Lq, D].

    See `topkattn.ops.topk.naive.topk_attention_reference` for the exact definition of every
    argument; kernels match it. ``backend`` is "auto", "reference" or "triton" ("triton"
    fails when no kernel fits the inputs).
    """
    backend = resolve_backend(backend)
    args = (q, k, v, topk, causal, scale, sink, local, granularity, indices, attn_mask, return_lse)
    if backend == "triton" or (backend == "auto" and q.is_cuda):
        out = _kernel_dispatch(*args)
        if out is not None:
            return out
        if backend == "auto":
            mask = "none" if attn_mask is None else f"{attn_mask.dtype} {attn_mask.dim()}-D"
            msg = ("topk_attention: no Triton kernel takes these CUDA inputs (dtype "
                   f"{q.dtype}, head_dim {q.shape[-1]}, mask {mask} (kernels take key-range "
                   f"masks only), granularity {granularity!r}, indices "
                   f"{'given' if indices is not None else 'none'}, gradients "
                   f"{torch.is_grad_enabled() and (q.requires_grad or k.requires_grad)}); running "
                   "the slow pure-PyTorch reference")
            if msg not in _warned:
                _warned.add(msg)
                warnings.warn(msg, stacklevel=2)
        if backend == "triton":
            raise InputError(
                "backend='triton' but no Triton kernel fits these inputs "
                f"(device={q.device}, dtype={q.dtype}, q {tuple(q.shape)}, k {tuple(k.shape)})"
            )
    return topk_attention_reference(*args)


__all__ = ["topk_attention", "topk_attention_reference", "BACKENDS", "use_kernels", "resolve_backend"]
