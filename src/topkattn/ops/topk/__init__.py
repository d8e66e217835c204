"""Top-k attention: one entry point that dispatches to a Triton kernel or the reference.

`topk_attention` is the functional form used by the Hugging Face integration, the selectors
and the benchmarks. On CUDA tensors with Triton available it runs the fused kernels
(`triton_decode`, `triton_prefill`, `triton_sparse`); elsewhere the pure-PyTorch reference
(`naive`). ``backend="reference"`` or the environment variable ``TOPKATTN_BACKEND=reference``
forces the reference (tests use this to compare). An unknown ``TOPKATTN_BACKEND`` is an
`InputError` wherever it is read (`resolve_backend`, `env_backend`), whatever ``backend`` is.

Every argument is checked before any work (`InputError` naming the value). NaN / inf inputs
follow the reference's policy (`topkattn.ops.topk.naive` module docstring).
"""

from __future__ import annotations

import os

import torch

from topkattn.ops.topk.naive import check_arguments, check_indices_shape, topk_attention_reference
from topkattn.errors import InputError, warn_once

BACKENDS = ("auto", "reference", "triton")


def env_backend() -> str | None:
    """``TOPKATTN_BACKEND`` (None when unset or empty); `InputError` naming the variable, its
    value and the allowed values when it is set to anything else."""
    env = os.environ.get("TOPKATTN_BACKEND")
    if not env:
        return None
    if env not in BACKENDS:
        raise InputError(f"environment variable TOPKATTN_BACKEND={env!r} is not a backend: "
                         f"allowed values are {', '.join(BACKENDS)} (or unset it)")
    return env


def resolve_backend(backend: str) -> str:
    """``backend`` with ``TOPKATTN_BACKEND`` applied to "auto" (`InputError` for an unknown
    ``backend``, and for an unknown ``TOPKATTN_BACKEND`` even when ``backend`` is explicit)."""
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {BACKENDS}, got {backend!r}")
    env = env_backend()
    if backend == "auto" and env:
        backend = env
    return backend


def check_indices(indices: torch.Tensor, Lk: int) -> None:
    """Explicit selections: int32 / int64 entries in [-1, Lk) (-1 = padding). Costs one device
    synchronisation (the range is read on the host), so only the public `topk_attention` runs
    it; generation's exact decode path calls the custom ops directly and never pays it."""
    if not isinstance(indices, torch.Tensor):
        raise InputError(f"indices must be an int tensor or None, got {type(indices).__name__}")
    if indices.dtype not in (torch.int32, torch.int64):
        raise InputError(f"indices must be int32 or int64, got {indices.dtype}")
    if indices.numel() == 0:
        return
    lo, hi = (int(x) for x in torch.stack([indices.min(), indices.max()]).tolist())
    if lo < -1 or hi >= Lk:
        bad = lo if lo < -1 else hi
        raise InputError(f"indices must be key positions in [0, {Lk}) or -1 (padding); got "
                         f"{bad} (min {lo}, max {hi})")


def use_kernels(q: torch.Tensor, backend: str = "auto") -> bool:
    """Whether the Triton kernels should take tensors like ``q`` under ``backend``: "auto" on
    CUDA, "triton" anywhere they can run (CUDA, or CPU under the interpreter), never for
    "reference"."""
    from topkattn.ops.topk.triton_env import kernels_run_on

    backend = resolve_backend(backend)
    if backend == "reference":
        return False
    return kernels_run_on(q) and (backend == "triton" or q.is_cuda)


def _kernel_dispatch(q, k, v, **kw):
    """Run the Triton kernel that fits, or return None when none does (``kw``: the keyword
    arguments of `dispatch_triton.run`)."""
    try:
        from topkattn.ops.topk import dispatch_triton
    except ImportError:
        return None
    return dispatch_triton.run(q, k, v, **kw)


def topk_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    topk: int | None = 64,
    *,
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

    Checked first (`InputError` naming the bad value): ``sink`` and ``local`` integers >= 0,
    ``scale`` None or finite > 0, and ``indices`` int32 / int64 in [-1, Lk) where -1 is padding
    (the value `naive.topk_indices` and every selector emit; other negative values are refused,
    a Python-style index from the end would otherwise count as padding). The indices range
    check reads two numbers on the host: one device synchronisation per call with indices
    (generation's exact decode calls the custom ops, not this function, and pays none).
    A selected position the query cannot see (causality, ``attn_mask``) is dropped, never an
    error: selectors rely on it (`topkattn.selectors.base`); a row left with nothing selected
    is zero.
    """
    check_arguments(scale, sink, local)
    if indices is not None:
        if q.dim() == 4 and k.dim() == 4:  # other shapes: the shape checks below name them
            check_indices_shape(indices, q, k)
            check_indices(indices, k.shape[2])
    backend = resolve_backend(backend)
    kw = dict(topk=topk, causal=causal, scale=scale, sink=sink, local=local,
              granularity=granularity, indices=indices, attn_mask=attn_mask, return_lse=return_lse)
    if backend == "triton" or (backend == "auto" and q.is_cuda):
        out = _kernel_dispatch(q, k, v, **kw)
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
            warn_once(msg, stacklevel=2)
        if backend == "triton":
            raise InputError(
                "backend='triton' but no Triton kernel fits these inputs "
                f"(device={q.device}, dtype={q.dtype}, q {tuple(q.shape)}, k {tuple(k.shape)})"
            )
    return topk_attention_reference(q, k, v, **kw)


__all__ = ["topk_attention", "topk_attention_reference", "BACKENDS", "use_kernels", "resolve_backend",
           "env_backend", "check_indices"]
