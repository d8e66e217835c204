"""Top-k attention: one entry point that dispatches to a Triton kernel or the reference.

`topk_attention` is the functional form used by the Hugging Face integration, the selectors
and the benchmarks. On CUDA tensors with Triton available it runs the fused kernels
(`triton_decode`, `triton_prefill`, `triton_sparse`); elsewhere the pure-PyTorch reference
(`naive`). ``backend="reference"`` or the environment variable ``TOPKATTN_BACKEND=reference``
forces the reference (tests use this to compare).
"""

from __future__ import annotations

import os

import torch

from topkattn.ops.topk.naive import topk_attention_reference

BACKENDS = ("auto", "reference", "triton")


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
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    env = os.environ.get("TOPKATTN_BACKEND")
    if backend == "auto" and env:
        if env not in BACKENDS:
            raise ValueError(f"TOPKATTN_BACKEND must be one of {BACKENDS}, got {env!r}")
        backend = env
    args = (q, k, v, topk, causal, scale, sink, local, granularity, indices, attn_mask, return_lse)
    if backend == "triton" or (backend == "auto" and q.is_cuda):
        out = _kernel_dispatch(*args)
        if out is not None:
            return out
        if backend == "triton":
            raise ValueError(
                "backend='triton' but no Triton kernel fits these inputs "
                f"(device={q.device}, dtype={q.dtype}, q {tuple(q.shape)}, k {tuple(k.shape)})"
            )
    return topk_attention_reference(*args)


__all__ = ["topk_attention", "topk_attention_reference", "BACKENDS"]
