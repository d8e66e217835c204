"""Amortised growth of transformers' `DynamicCache`: a buffer with room, not a copy per step.

transformers' ``DynamicLayer.update`` concatenates: every decode step copies the layer's whole
cache into a new tensor (2 x the cache's bytes moved per step, and a new address every step).
Inside `amortized_growth` a plain ``DynamicLayer`` keeps its keys and values, from its first
one-token step on, in buffers [B, H, capacity, D] with room to spare, and hands out views
``buffer[:, :, :n]`` as ``layer.keys`` / ``layer.values``. A step then writes only its new
tokens; the cache is copied only when the room runs out (the capacity grows by
`GrowthPolicy`). The stable addresses are what lets `decode_graphs` replay one captured CUDA
graph per layer and step.

Everything else transformers does with a layer keeps working, because the layer's tensors are
ordinary views: a prompt (an update of several tokens into an empty or unbuffered layer) is
concatenated as before; ``crop`` leaves a shorter view of the same buffer, which the next step
keeps using; ``reorder_cache``, ``batch_select_indices``, ``batch_repeat_interleave``, offloading
and ``reset`` replace the tensors, and the next step copies them into a new buffer. Subclasses
of ``DynamicLayer`` (sliding window, quantised, ...) and updates that need gradients or run
under ``torch.compile`` keep transformers' own ``update``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from transformers.cache_utils import DynamicLayer

from topkattn.errors import InputError


@dataclass(frozen=True)
class GrowthPolicy:
    """How much room a layer buffer gets: ``needed + max(min_room, needed * room)`` tokens,
    rounded up to a multiple of ``align``, whenever ``needed`` tokens do not fit."""

    room: float = 0.125
    min_room: int = 1024
    align: int = 256

    def __post_init__(self):
        if not (isinstance(self.room, (int, float)) and 0.0 <= self.room <= 4.0):
            raise InputError(f"GrowthPolicy.room must be in [0, 4], got {self.room!r}")
        for name in ("min_room", "align"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"GrowthPolicy.{name} must be a positive integer, got {v!r}")

    def capacity(self, needed: int) -> int:
        """Tokens to allocate when ``needed`` tokens must fit."""
        want = needed + max(self.min_room, int(needed * self.room))
        return -(-want // self.align) * self.align


_ORIGINAL_UPDATE = DynamicLayer.update
_ACTIVE: list[GrowthPolicy] = []  # the policies of the open `amortized_growth` blocks


def _is_prefix_view(t: torch.Tensor, buf: torch.Tensor) -> bool:
    """Whether ``t`` is ``buf[:, :, :m]`` for some m (same address, strides and other dims)."""
    return (t.dim() == 4 and t.data_ptr() == buf.data_ptr() and t.stride() == buf.stride()
            and t.shape[:2] == buf.shape[:2] and t.shape[3] == buf.shape[3]
            and t.shape[2] <= buf.shape[2] and t.dtype == buf.dtype and t.device == buf.device)


def buffer_of(t: torch.Tensor) -> torch.Tensor | None:
    """The growth buffer [B, H, capacity, D] that ``t`` (a layer's keys or values) is a prefix
    view of, or None (a tensor of transformers' own ``update``)."""
    base = t._base
    if base is not None and getattr(base, "_topkattn_growth", False) and _is_prefix_view(t, base):
        return base
    return None


def _new_buffer(like: torch.Tensor, length: int) -> torch.Tensor:
    buf = like.new_empty(like.shape[0], like.shape[1], length, like.shape[3])
    buf._topkattn_growth = True  # marks it for `buffer_of`
    return buf


def _buffered(layer: DynamicLayer, t: torch.Tensor, new: torch.Tensor, policy: GrowthPolicy
              ) -> torch.Tensor:
    """``t`` (a layer's keys or values [B, H, n, D], a prefix view of a buffer or not) with
    ``new`` [B, H, L, D] appended, as a prefix view of a buffer with room for them."""
    n = t.shape[2] if t.numel() else 0
    needed = n + new.shape[2]
    buf = buffer_of(t) if t.numel() else None
    if (buf is None or needed > buf.shape[2] or buf.shape[:2] != new.shape[:2]
            or buf.shape[3] != new.shape[3] or buf.dtype != new.dtype or buf.device != new.device):
        grown = _new_buffer(new, policy.capacity(needed))
        if n:
            _span(grown, 0, n).copy_(t)
        buf = grown
    _span(buf, n, new.shape[2]).copy_(new)
    return _span(buf, 0, needed)


def _span(buf: torch.Tensor, start: int, length: int) -> torch.Tensor:
    """``buf.narrow(2, start, length)`` for a growth buffer [B, H, capacity, D], built with
    ``as_strided`` (half of narrow's host time; a decode step makes four per layer)."""
    B, H, _, D = buf.shape
    return buf.as_strided((B, H, length, D), buf.stride(),
                          buf.storage_offset() + start * buf.stride(2))


def _update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
    """``DynamicLayer.update`` inside `amortized_growth` (see the module docstring)."""
    policy = _ACTIVE[-1] if _ACTIVE else None
    if (policy is None or type(self) is not DynamicLayer or torch.compiler.is_compiling()
            or (torch.is_grad_enabled() and (key_states.requires_grad or value_states.requires_grad))
            or key_states.dim() != 4):
        return _ORIGINAL_UPDATE(self, key_states, value_states, *args, **kwargs)
    if not self.is_initialized:
        self.lazy_initialization(key_states, value_states)
    keys, values = self.keys, self.values
    # the common step: the layer still holds the views this function returned last time
    # (their ids, so that nothing here keeps a buffer alive after `reset`)
    kb, vb = keys._base, values._base
    if (getattr(self, "_topkattn_views", None) == (id(keys), id(values)) and kb is not None
            and vb is not None and getattr(kb, "_topkattn_growth", False)
            and getattr(vb, "_topkattn_growth", False)):
        n, L = keys.shape[2], key_states.shape[2]
        needed = n + L
        if (needed <= kb.shape[2] and key_states.dtype == kb.dtype
                and key_states.shape[:2] == kb.shape[:2]):
            _span(kb, n, L).copy_(key_states)
            _span(vb, n, L).copy_(value_states)
            self.keys, self.values = _span(kb, 0, needed), _span(vb, 0, needed)
            self._topkattn_views = (id(self.keys), id(self.values))
            return self.keys, self.values
    buffered = keys.numel() and buffer_of(keys) is not None and buffer_of(values) is not None
    if key_states.shape[2] != 1 and not buffered:  # a prompt: concatenated as transformers does
        return _ORIGINAL_UPDATE(self, key_states, value_states, *args, **kwargs)
    self.keys = _buffered(self, keys, key_states, policy)
    self.values = _buffered(self, values, value_states, policy)
    self._topkattn_views = (id(self.keys), id(self.values))
    return self.keys, self.values


@contextlib.contextmanager
def amortized_growth(policy: GrowthPolicy | None = None) -> Iterator[GrowthPolicy]:
    """Inside the block, plain ``DynamicLayer`` caches grow into buffers with room (see the
    module docstring). Blocks nest (the innermost policy applies); on exit transformers'
    ``update`` is back once no block is open, and the layers' views stay valid tensors."""
    policy = policy if policy is not None else GrowthPolicy()
    if not isinstance(policy, GrowthPolicy):
        raise InputError(f"policy must be a GrowthPolicy, got {type(policy).__name__}")
    _ACTIVE.append(policy)
    DynamicLayer.update = _update
    try:
        yield policy
    finally:
        _ACTIVE.remove(policy)
        if not _ACTIVE:
            DynamicLayer.update = _ORIGINAL_UPDATE
