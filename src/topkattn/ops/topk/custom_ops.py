"""The kernels as PyTorch custom operators (`torch.library.custom_op`).

Registered ops, each with a fake (meta) implementation so that `torch.compile` traces through
them with no graph break, and CUDA graphs capture them (no host synchronisation inside):

- ``topkattn::topk_decode``: exact Top-k attention for one query per sequence over keys
  [starts[b], ends[b]) of a contiguous cache (`triton_decode.topk_decode`).
- ``topkattn::range_decode``: full attention for one query per sequence over the same ranges
  (`triton_dense.range_decode`): the dense path of a sparsified model.
- ``topkattn::sparse_decode``: attention of one query per sequence to given key indices
  (plus sink / local) over the same ranges (`triton_sparse.sparse_attention`): the attention
  of a selector's decode step.
- ``topkattn::index_topk``: the k positions of each sequence's range [starts[b], ends[b])
  with the highest Lightning-Indexer scores (`triton_index.index_scores`, then
  `triton_select.select_rows`): the selection of the Lightning Indexer's decode step.
- ``topkattn::prefill_fwd`` / ``topkattn::prefill_bwd``: Top-k prefill / training attention
  (`triton_prefill`), differentiable through `torch.library.register_autograd`.

Each op runs its Triton kernel on CUDA tensors (and on CPU under ``TRITON_INTERPRET=1``);
decode ops run the pure-PyTorch reference on other CPU tensors, so the same model code works,
compiled or not, on any device. Ranges are int32 [B] tensors on the query's device.
"""

from __future__ import annotations

import torch

from topkattn.ops.topk.naive import topk_attention_reference
from topkattn.ops.topk.triton_env import kernels_run_on


def range_mask(starts: torch.Tensor, ends: torch.Tensor, n: int) -> torch.Tensor:
    """bool [B, 1, 1, n]: key p of sequence b is visible iff starts[b] <= p < ends[b]."""
    pos = torch.arange(n, device=starts.device)
    return ((pos >= starts[:, None].long()) & (pos < ends[:, None].long()))[:, None, None, :]


def topk_decode_ranges(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, starts: torch.Tensor,
                       ends: torch.Tensor, topk: int, scale: float, sink: int, local: int,
                       kv_group: bool, use_kernel: bool = True) -> torch.Tensor:
    """q [B, Hq, 1, D]; k, v [B, Hkv, n, D]; starts, ends int32 [B] -> out [B, Hq, 1, D].
    ``use_kernel``: the Triton kernel where it can run (else, and when False: the reference).
    The body of ``topkattn::topk_decode``; eager callers call it directly (`decode_ops`)."""
    granularity = "kv_group" if kv_group else "query_head"
    if use_kernel and kernels_run_on(q):
        from topkattn.ops.topk.triton_decode import topk_decode

        return topk_decode(q, k, v, topk=topk, scale=scale, sink=sink, local=local,
                           granularity=granularity, starts=starts, ends=ends)
    mask = range_mask(starts, ends, k.shape[2])
    return topk_attention_reference(q, k, v, topk, causal=False, scale=scale, sink=sink,
                                    local=local, granularity=granularity, attn_mask=mask)


topk_decode_op = torch.library.custom_op("topkattn::topk_decode", topk_decode_ranges,
                                         mutates_args=())


@topk_decode_op.register_fake
def _(q, k, v, starts, ends, topk, scale, sink, local, kv_group, use_kernel=True):
    return torch.empty_like(q)


def range_decode_ranges(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, starts: torch.Tensor,
                        ends: torch.Tensor, scale: float, use_kernel: bool = True) -> torch.Tensor:
    """q [B, Hq, 1, D]; k, v [B, Hkv, n, D]; starts, ends int32 [B] -> out [B, Hq, 1, D].
    ``use_kernel``: the Triton kernel where it can run (else, and when False: the reference).
    The body of ``topkattn::range_decode``; eager callers call it directly (`decode_ops`)."""
    if use_kernel and kernels_run_on(q):
        from topkattn.ops.topk.triton_dense import range_decode

        return range_decode(q, k, v, starts=starts, ends=ends, scale=scale)
    mask = range_mask(starts, ends, k.shape[2])
    return topk_attention_reference(q, k, v, None, causal=False, scale=scale, attn_mask=mask)


range_decode_op = torch.library.custom_op("topkattn::range_decode", range_decode_ranges,
                                          mutates_args=())


@range_decode_op.register_fake
def _(q, k, v, starts, ends, scale, use_kernel=True):
    return torch.empty_like(q)


def sparse_decode_ranges(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, indices: torch.Tensor,
                         starts: torch.Tensor, ends: torch.Tensor, scale: float, sink: int,
                         local: int, use_kernel: bool = True) -> torch.Tensor:
    """Attention of one query per sequence to a selector's ``indices`` [B, Hkv or Hq, 1, m]
    (int32, -1 = none) plus ``sink`` / ``local`` positions, over keys [starts[b], ends[b]):
    q [B, Hq, 1, D]; k, v [B, Hkv, n, D] -> out [B, Hq, 1, D]. The sparse kernel where it runs
    (no synchronisation), else the reference with the ranges' mask. The body of
    ``topkattn::sparse_decode``."""
    if use_kernel and kernels_run_on(q):
        from topkattn.ops.topk.triton_sparse import sparse_attention

        return sparse_attention(q, k, v, indices, causal=False, scale=scale, sink=sink,
                                local=local, starts=starts, ends=ends,
                                assume_unique=not (sink or local))
    mask = range_mask(starts, ends, k.shape[2])
    granularity = "kv_group" if indices.shape[1] != q.shape[1] else "query_head"
    return topk_attention_reference(q, k, v, None, causal=False, scale=scale, sink=sink,
                                    local=local, granularity=granularity,
                                    indices=indices.long(), attn_mask=mask)


sparse_decode_op = torch.library.custom_op("topkattn::sparse_decode", sparse_decode_ranges,
                                           mutates_args=())


@sparse_decode_op.register_fake
def _(q, k, v, indices, starts, ends, scale, sink, local, use_kernel=True):
    return torch.empty_like(q)


def index_topk_ranges(q: torch.Tensor, w: torch.Tensor, keys: torch.Tensor, starts: torch.Tensor,
                      ends: torch.Tensor, topk: int, use_kernel: bool = True) -> torch.Tensor:
    """Lightning-Indexer selection of one query per sequence: q [B, H, d] (scaled), w [B, H],
    indexer keys [B, cap, d]; starts, ends int32 [B] -> int32 [B, min(topk, cap)], the
    positions in [starts[b], ends[b]) of the highest index scores (ties: lowest position;
    -1 where the range holds fewer). ``use_kernel``: the Triton kernels where they run (else,
    and when False: the reference). The body of ``topkattn::index_topk``."""
    from topkattn.ops.topk.naive import topk_indices
    from topkattn.ops.topk.triton_index import index_scores, index_scores_reference

    cap = keys.shape[1]
    kk = min(topk, cap)
    if use_kernel and kernels_run_on(keys):
        from topkattn.ops.select.triton_select import select_rows

        scores = index_scores(q, w, keys, starts=starts, ends=ends)  # written inside the ranges only
        return select_rows(scores, k=kk, starts=starts, ends=ends)
    scores = index_scores_reference(q, w, keys)
    pos = torch.arange(cap, device=keys.device)
    vis = (pos >= starts[:, None]) & (pos < ends[:, None])
    return topk_indices(scores, kk, vis).to(torch.int32)


index_topk_op = torch.library.custom_op("topkattn::index_topk", index_topk_ranges,
                                        mutates_args=())


@index_topk_op.register_fake
def _(q, w, keys, starts, ends, topk, use_kernel=True):
    return keys.new_empty(keys.shape[0], min(topk, keys.shape[1]), dtype=torch.int32)


@torch.library.custom_op("topkattn::prefill_fwd", mutates_args=())
def prefill_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, starts: torch.Tensor,
                   ends: torch.Tensor, topk: int, causal: bool, scale: float, sink: int,
                   local: int, kv_group: bool
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k prefill forward (checked, unit-stride inputs): (out, lse, TB, PB), see
    `triton_prefill.prefill_forward`."""
    from topkattn.ops.topk.triton_prefill import prefill_forward

    return prefill_forward(q, k, v, starts=starts, ends=ends, topk=topk, causal=causal,
                           scale=scale, sink=sink, local=local, group=kv_group)


@prefill_fwd_op.register_fake
def _(q, k, v, starts, ends, topk, causal, scale, sink, local, kv_group):
    B, Hq, Lq, _ = q.shape
    rows = B * (k.shape[1] if kv_group else Hq)
    thresholds = q.new_empty(rows, Lq, dtype=torch.int32)
    return (torch.empty_like(q), q.new_empty(B, Hq, Lq, dtype=torch.float32), thresholds,
            torch.empty_like(thresholds))


@torch.library.custom_op("topkattn::prefill_bwd", mutates_args=())
def prefill_bwd_op(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   o: torch.Tensor, lse: torch.Tensor, tb: torch.Tensor, pb: torch.Tensor,
                   starts: torch.Tensor, ends: torch.Tensor, causal: bool, scale: float,
                   sink: int, local: int, kv_group: bool
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq, dk, dv) of ``topkattn::prefill_fwd``."""
    from topkattn.ops.topk.triton_prefill import prefill_backward

    return prefill_backward(do, q, k, v, o, lse, tb, pb, starts=starts, ends=ends,
                            causal=causal, scale=scale, sink=sink, local=local, group=kv_group)


@prefill_bwd_op.register_fake
def _(do, q, k, v, o, lse, tb, pb, starts, ends, causal, scale, sink, local, kv_group):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _prefill_setup_context(ctx, inputs, output):
    q, k, v, starts, ends, topk, causal, scale, sink, local, kv_group = inputs
    o, lse, tb, pb = output
    ctx.save_for_backward(q, k, v, o, lse, tb, pb, starts, ends)
    ctx.args = (causal, scale, sink, local, kv_group)
    ctx.mark_non_differentiable(lse, tb, pb)


def _prefill_backward(ctx, do, _dlse, _dtb, _dpb):
    q, k, v, o, lse, tb, pb, starts, ends = ctx.saved_tensors
    dq, dk, dv = prefill_bwd_op(do, q, k, v, o, lse, tb, pb, starts, ends, *ctx.args)
    return dq, dk, dv, None, None, None, None, None, None, None, None


torch.library.register_autograd("topkattn::prefill_fwd", _prefill_backward,
                                setup_context=_prefill_setup_context)


def prefill_op(q, k, v, starts, ends, topk, causal, scale, sink, local, kv_group):
    """(out, lse) of Top-k prefill, differentiable in q, k, v (lse is not)."""
    out, lse, _, _ = prefill_fwd_op(q, k, v, starts, ends, topk, causal, scale, sink, local,
                                    kv_group)
    return out, lse


OPS = {
    "topk_decode": topk_decode_op,
    "range_decode": range_decode_op,
    "sparse_decode": sparse_decode_op,
    "index_topk": index_topk_op,
    "prefill_fwd": prefill_fwd_op,
    "prefill_bwd": prefill_bwd_op,
}


def index_topk():
    """The Lightning-Indexer selection over key ranges: the custom op while `torch.compile`
    traces (its Triton kernels are opaque to the tracer), else its body (see `decode_ops`)."""
    return index_topk_op if torch.compiler.is_compiling() else index_topk_ranges


def sparse_decode():
    """Attention to a selector's indices over key ranges: the custom op while `torch.compile`
    traces, else its body (see `decode_ops`)."""
    return sparse_decode_op if torch.compiler.is_compiling() else sparse_decode_ranges


def decode_ops():
    """(Top-k decode, full-attention decode) over key ranges: the custom ops while
    `torch.compile` traces, else their bodies. The op dispatcher costs about 45 us per call on
    the host in eager mode (H200, torch 2.11, 2026-12-02), which eager decoding pays once per
    layer and step."""
    if torch.compiler.is_compiling():
        return topk_decode_op, range_decode_op
    return topk_decode_ranges, range_decode_ranges
