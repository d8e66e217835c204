"""Key ranges: the attention mask of a sparsified model, kept on the device as a few integers.

transformers builds one attention mask per forward through the mask function registered for
the model's attention implementation. For ``"topk"`` that is `topk_mask`: instead of a bool
[B, 1, Lq, Lk] tensor it returns an int32 tensor of shape [FIELDS, 1, 1, B] (4-D, so that
transformers passes it through unchanged, as it does any prepared mask), built on the device
with no host synchronisation:

- ``lo``, ``hi`` [B]: sequence b sees key slots [lo, hi) (left / right padding of the 2-D
  ``attention_mask``). For a one-query step (decode) they are also cut by causality and the
  sliding window, so they are the step's exact bounds and the kernels take them as they are.
- ``q_first`` [B]: the key slot of the first query (``q_offset - kv_offset``; the queries sit
  at slots q_first .. q_first + Lq - 1). A static cache's unfilled tail lies past it.
- ``window`` [B]: the sliding window (keys q - window < p <= q), 0 for none.
- ``ok`` [B]: 1 where the 2-D padding mask is one contiguous run of ones (a key range); 0
  where it has holes, which a key range cannot express (outputs of such rows are NaN at decode;
  at prefill `topk_mask` returns the ordinary bool mask instead).
- ``poison`` [B]: the bits of 0.0 where ``ok``, of NaN where not, in fp32, bf16 and fp16 alike
  (`poison_as`): the attention function adds it to a decode output, one kernel per layer.

A mask function other than plain causal or sliding-window causal (packed sequences, image
tokens, chunked attention) gets transformers' own bool mask, which the attention function
handles on its general path.
"""

from __future__ import annotations

import torch
from transformers.masking_utils import causal_mask_function, prepare_padding_mask, sdpa_mask

FIELDS = ("lo", "hi", "q_first", "window", "ok", "poison")
LO, HI, Q_FIRST, WINDOW, OK, POISON = range(len(FIELDS))
# NaN read as fp32 and, in each half, as bf16 (0x7FC0) and as fp16 (0x7FC0: exponent all ones,
# mantissa not zero)
NAN_BITS = 0x7FC07FC0


def is_key_ranges(mask) -> bool:
    """Whether ``mask`` is a key-range tensor made by `topk_mask` (not a bool / float mask)."""
    return (isinstance(mask, torch.Tensor) and mask.dtype == torch.int32 and mask.dim() == 4
            and mask.shape[0] == len(FIELDS) and mask.shape[1] == 1 and mask.shape[2] == 1)


def field(ranges: torch.Tensor, i: int) -> torch.Tensor:
    """Field i of a key-range tensor as a contiguous int32 [B] view (no copy)."""
    return ranges[i, 0, 0]


def poison_as(ranges: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The ``poison`` field as [B] of a float ``dtype`` (fp32, bf16, fp16): 0.0 or NaN, a view
    of its bits (no kernel). While `torch.compile` traces, computed from ``ok`` instead
    (Inductor cannot view the int32 field, which it may give a zero stride, as a narrower
    float; the compiled graph fuses the computation anyway)."""
    if torch.compiler.is_compiling():
        ok = ranges[OK, 0, 0]
        return torch.where(ok != 0, 0.0, float("nan")).to(dtype)
    bits = ranges[POISON, 0, 0]
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return bits.view(torch.float32).to(dtype)
    return bits.view(dtype)[:: 4 // dtype.itemsize]


def padding_bounds(padding: torch.Tensor | None, B: int, kv_length: int, device
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(lo, hi, ok) int32 [B] of a 2-D bool padding mask [B, kv_length] (None: all keys):
    the first and one past the last True slot, and whether the True slots are contiguous."""
    if padding is None:
        lo = torch.zeros(B, dtype=torch.int32, device=device)
        return lo, torch.full_like(lo, kv_length), torch.ones_like(lo)
    m = padding.to(device=device, dtype=torch.bool)
    mi = m.to(torch.int32)
    anyv = m.any(-1)
    lo = torch.where(anyv, mi.argmax(-1), 0)
    hi = torch.where(anyv, kv_length - mi.flip(-1).argmax(-1), 0)
    ok = mi.sum(-1) == hi - lo
    return lo.to(torch.int32), hi.to(torch.int32), ok.to(torch.int32)


def make_ranges(lo, hi, q_first, window: int, ok) -> torch.Tensor:
    """Stack the fields (int32 [B] tensors; ``window`` an int) into [FIELDS, 1, 1, B]."""
    # the window becomes a fill on the device (a host-to-device copy would break graph capture)
    win = torch.full_like(lo, window)
    ok = ok.to(dtype=torch.int32)
    poison = torch.where(ok != 0, 0, NAN_BITS).to(torch.int32)
    cols = [c.to(dtype=torch.int32) for c in (lo, hi, q_first, win, ok, poison)]
    return torch.stack(cols).view(len(FIELDS), 1, 1, lo.shape[0]).contiguous()


def topk_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset=0,
    kv_offset: int = 0,
    mask_function=causal_mask_function,
    attention_mask: torch.Tensor | None = None,
    local_size: int | None = None,
    allow_is_causal_skip: bool = True,
    use_vmap: bool = False,
    device="cpu",
    **kwargs,
) -> torch.Tensor | None:
    """transformers' mask interface for ``"topk"``: key ranges (see the module docstring), or
    `sdpa_mask`'s bool mask for mask patterns that key ranges cannot express."""
    plain = mask_function is causal_mask_function or local_size is not None
    if not plain or use_vmap:
        return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length,
                         q_offset=q_offset, kv_offset=kv_offset, mask_function=mask_function,
                         attention_mask=attention_mask, local_size=local_size,
                         allow_is_causal_skip=allow_is_causal_skip, use_vmap=use_vmap,
                         device=device, **kwargs)
    padding = prepare_padding_mask(attention_mask, kv_length, kv_offset)
    lo, hi, ok = padding_bounds(padding, batch_size, kv_length, device)
    q_first = q_offset - kv_offset  # an int, or a device tensor for a static cache
    if isinstance(q_first, torch.Tensor):
        q_first = q_first.to(device=device, dtype=torch.int32).reshape(-1)[:1].expand(batch_size)
    else:  # a fill on the device (a host-to-device copy would break graph capture)
        q_first = torch.full_like(lo, q_first)
    window = int(local_size or 0)
    if q_length == 1:  # decode: cut by causality and the window now, once per forward
        hi = torch.minimum(hi, q_first + 1)
        if window:
            lo = torch.maximum(lo, q_first + 1 - window)
    elif padding is not None and not _host_all(ok):
        # prefill (a host synchronisation is acceptable here): holes in the padding mask
        return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length,
                         q_offset=q_offset, kv_offset=kv_offset, mask_function=mask_function,
                         attention_mask=attention_mask, local_size=local_size,
                         allow_is_causal_skip=False, use_vmap=use_vmap, device=device, **kwargs)
    return make_ranges(lo, hi, q_first, window, ok)


def _host_all(t: torch.Tensor) -> bool:
    """t.all() on the host, except while tracing or capturing (then assume True)."""
    if torch.compiler.is_compiling() or (t.is_cuda and torch.cuda.is_current_stream_capturing()):
        return True
    return bool(t.all())


def ranges_to_bool_mask(ranges: torch.Tensor, Lq: int, Lk: int) -> torch.Tensor:
    """The bool mask [B, 1, Lq, Lk] that key ranges stand for (True = may attend), queries at
    slots q_first .. q_first + Lq - 1 (for Lq == 1 lo / hi already hold causality)."""
    lo, hi = field(ranges, LO).long(), field(ranges, HI).long()
    qf, win = field(ranges, Q_FIRST).long(), field(ranges, WINDOW).long()
    pos = torch.arange(Lk, device=ranges.device).view(1, 1, Lk)
    qpos = qf.view(-1, 1, 1) + torch.arange(Lq, device=ranges.device).view(1, Lq, 1)
    m = (pos >= lo.view(-1, 1, 1)) & (pos < hi.view(-1, 1, 1)) & (pos <= qpos)
    m = m & ((win.view(-1, 1, 1) == 0) | (pos > qpos - win.view(-1, 1, 1)))
    return m.unsqueeze(1)
