"""One CUDA graph per layer for the eager decode step: the host cost of a launch, not of six.

In eager decoding a sparsified layer's attention is about six Triton launches plus the Python
around them (argument checks, scratch allocations, specialisation keys), several hundred
microseconds of host time per layer and step, while the GPU work is tens of microseconds.
Batch-1 decoding is bound by that host time. When a layer's keys and values stay at one
address from step to step (a `growing_cache` buffer, or a `StaticCache`), its decode attention
is captured once as a CUDA graph over the buffer's whole capacity (the per-sequence key ranges,
read on the device, keep the unfilled tail out) and replayed at every later step: a copy of the
query, of the key ranges and of any extra inputs (a selector's hidden states) in and one replay
(the output is the graph's own buffer). A selector with a graph-safe range path (the Lightning
Indexer) is captured with its selection: its per-sequence state is made ready for the buffer's
capacity before, and identified in the graph's signature.

A graph is captured the second time a layer sees the same buffers, shapes and settings in a
row (a cache that moves every step, transformers' own ``DynamicCache``, never is); after
`MAX_CAPTURES` captures in a row whose graphs were dropped before `PAYOFF_REPLAYS` replays
(settings that change every step or two) the layer stops capturing, while a graph that paid
for itself resets the count (a new cache per prompt, as an evaluation makes, keeps its graphs);
and never while `torch.compile` traces or another capture is running (a
graph of the whole step, `topkattn bench`'s ``graph`` path). Each graph has its own memory
pool (its scratch: one layer's scores, a few MB to tens of MB at 128k), freed with the graph
when the buffer moves. (A pool shared by all graphs tripped an internal assertion of PyTorch's
caching allocator in capture_begin: torch 2.11, H200, 2026-12-03.) A capture that fails (an
operation CUDA graphs cannot hold) warns once and leaves the layer on plain launches.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Callable

import torch

from topkattn.errors import warn_once
from topkattn.integrations.growing_cache import buffer_of
from topkattn.ops.tuning import current

MAX_CAPTURES = 8  # captures in a row that did not pay off before a layer stays on plain launches
PAYOFF_REPLAYS = 4  # replays after which a graph has paid for its capture

# body(query, keys, values, ranges, *extra) -> out
Body = Callable[..., torch.Tensor]


@dataclass
class DecodeGraph:
    """A captured decode attention: replay after copying the query into ``q``, the extra
    inputs into ``extra`` (and the key ranges into the shared buffer); the result is in
    ``out``."""

    signature: tuple
    graph: torch.cuda.CUDAGraph
    q: torch.Tensor
    out: torch.Tensor
    extra: tuple = ()
    replays: int = 0
    # the step's fast check (`_same_inputs`): weak references to the key and value tensors
    # the graph reads, and what else the signature holds besides their addresses and shapes
    anchors: tuple = ()
    rest: tuple = ()


@dataclass
class GraphSlot:
    """A layer's graph state: the current graph, the last signature seen, and the captures in
    a row whose graphs did not pay off."""

    graph: DecodeGraph | None = None
    seen: tuple | None = None
    captures: int = 0


_RANGES: dict[tuple, torch.Tensor] = {}  # (device, shape) -> the key ranges every graph reads
_LAST_RANGES: dict[tuple, torch.Tensor] = {}  # what was last copied there
_LAST_COPY: list = [None, None]  # the ranges tensor copied last, and the buffer it went to


def stable_base(t: torch.Tensor) -> torch.Tensor | None:
    """The tensor a decode graph may read for a layer's keys or values [B, H, n, D]: the growth
    buffer ``t`` is a prefix view of, ``t`` itself when it is its own storage (a static
    cache's layer), else None."""
    buf = buffer_of(t)
    if buf is not None:
        return buf
    return t if t._base is None and t.dim() == 4 else None


def eligible(query: torch.Tensor) -> bool:
    """Whether this call may use a decode graph: a CUDA query, eager (not traced by
    `torch.compile`), no gradient asked for, no capture running on the current stream."""
    return (query.is_cuda and not torch.compiler.is_compiling()
            and not (torch.is_grad_enabled() and query.requires_grad)
            and not torch.cuda.is_current_stream_capturing())


def _device_key(device: torch.device) -> str:
    if device.type == "cuda" and device.index is None:
        return f"cuda:{torch.cuda.current_device()}"
    return str(device)


def _shared_ranges(ranges: torch.Tensor) -> torch.Tensor:
    """The device's key-range buffer of ``ranges``' shape, holding ``ranges`` (copied only
    when another tensor was copied there last; a forward's layers share one)."""
    if _LAST_COPY[0] is ranges:  # the forward's other layers: nothing to look up
        return _LAST_COPY[1]
    key = (_device_key(ranges.device), tuple(ranges.shape))
    buf = _RANGES.get(key)
    if buf is None:
        buf = _RANGES[key] = torch.empty_like(ranges)
    if _LAST_RANGES.get(key) is not ranges:
        buf.copy_(ranges)
        _LAST_RANGES[key] = ranges
    _LAST_COPY[:] = ranges, buf
    return buf


def _anchor(t: torch.Tensor) -> torch.Tensor:
    """The tensor object that stays the same from step to step for a layer's keys or values:
    a growth buffer's views share their ``_base``; a static cache's layer is itself."""
    return t._base if t._base is not None else t


def _same_inputs(g: DecodeGraph, query, key, value, rest: tuple) -> bool:
    """Whether this step gives graph ``g`` the very key and value tensors it was captured on
    (by identity: a tensor object keeps its address and shape), a query of the same shape and
    dtype, and the same ``rest`` (key-range shape, tuning, settings). The cheap check of every step; when it fails, `run`
    compares the full signature."""
    ka, va = g.anchors
    return (ka() is _anchor(key) and va() is _anchor(value) and query.shape == g.q.shape
            and query.dtype == g.q.dtype and rest == g.rest)


class CaptureFailed(RuntimeError):
    """The body ran eagerly but could not be captured as a CUDA graph."""


def _capture(signature: tuple, body: Body, query: torch.Tensor, key: torch.Tensor,
             value: torch.Tensor, ranges: torch.Tensor, extra: tuple = ()) -> DecodeGraph:
    q = query.clone()
    xs = tuple(t.clone() for t in extra)
    r = _shared_ranges(ranges)
    body(q, key, value, r, *xs)  # compiles every kernel variant before the capture
    graph = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream(device=query.device)
    side.wait_stream(torch.cuda.current_stream(query.device))
    try:
        with torch.cuda.stream(side):
            graph.capture_begin()
            try:
                out = body(q, key, value, r, *xs)
            finally:
                graph.capture_end()
    except RuntimeError as e:  # an eager run that worked, but not under capture
        raise CaptureFailed(f"{type(e).__name__}: {str(e)[:200]}") from e
    finally:
        torch.cuda.current_stream(query.device).wait_stream(side)
    return DecodeGraph(signature, graph, q, out, xs)


def run(slot: GraphSlot, body: Body, query: torch.Tensor, key: torch.Tensor,
        value: torch.Tensor, ranges: torch.Tensor, settings: tuple,
        extra: tuple[torch.Tensor, ...] = ()) -> torch.Tensor | None:
    """``body(query, key_base, value_base, ranges, *extra)`` through the layer's graph, or None
    when this call should run the plain eager path (see the module docstring).

    query [B, Hq, 1, D]; key, value [B, Hkv, n, D] (the layer's cache); ranges: the step's
    key ranges (`key_ranges.topk_mask`); ``settings``: everything else ``body`` depends on
    (hashable: device state it reads or writes is identified there by address and shape);
    ``extra``: further inputs that change every step (copied in like the query). ``body``
    must read keys only inside the ranges, since it is given the whole buffers (their
    capacity, not n)."""
    rest = (tuple(ranges.shape), id(current()), settings,
            tuple((tuple(t.shape), t.dtype) for t in extra))
    g = slot.graph
    if g is not None and g.anchors and _same_inputs(g, query, key, value, rest):
        return _replay(g, query, ranges, extra)
    kb, vb = stable_base(key), stable_base(value)
    if kb is None or vb is None:
        slot.graph = slot.seen = None
        return None
    signature = (kb.data_ptr(), vb.data_ptr(), tuple(kb.shape), kb.stride(), tuple(vb.shape),
                 vb.stride(), kb.dtype, tuple(query.shape), query.stride(), query.dtype) + rest
    if g is None or g.signature != signature:
        if g is not None and g.replays >= PAYOFF_REPLAYS:
            slot.captures = 0  # that graph paid for itself: keep capturing
        slot.graph = None  # never replay a graph of another buffer (it may be freed)
        if slot.seen != signature or slot.captures >= MAX_CAPTURES:
            slot.seen = signature
            return None
        slot.captures += 1
        try:
            g = slot.graph = _capture(signature, body, query, kb, vb, ranges, extra)
        except CaptureFailed as e:
            slot.captures = MAX_CAPTURES  # this layer stays on plain launches
            warn_once(f"a decode step could not be captured as a CUDA graph ({e}); such layers "
                      "launch their kernels from Python (slower, same results)", stacklevel=4)
            return None
        g.rest = rest
    g.anchors = (weakref.ref(_anchor(key)), weakref.ref(_anchor(value)))
    return _replay(g, query, ranges, extra)


def _replay(g: DecodeGraph, query: torch.Tensor, ranges: torch.Tensor,
            extra: tuple = ()) -> torch.Tensor:
    g.q.copy_(query)
    for buf, t in zip(g.extra, extra):
        buf.copy_(t)
    _shared_ranges(ranges)
    g.graph.replay()
    g.replays += 1
    # the graph's own output buffer, no copy: the layer's output projection reads it at once,
    # and only this layer's next replay (after that read, in stream order) overwrites it
    return g.out
