"""Operators: Top-k attention (`ops.topk`) and top-k selection (`ops.select`).

Conventions of the Python wrappers that launch the Triton kernels (`topk.triton_*`,
`select.triton_select`, `select.prefill_threshold`): the main tensors (q, k, v, indices,
scores, ...) are positional and every other argument is keyword-only. Per-sequence key bounds
are named ``starts`` and ``ends`` everywhere: int [B] (int32 on the query's device where a
kernel reads them), sequence b sees key positions [starts[b], ends[b]), i.e. ``starts`` is the
first visible slot and ``ends`` one past the last; None means 0 and the full length. The
`torch.library.custom_op` operators of `topk.custom_ops` keep their positional schemas
(compiled graphs call them).
"""
