"""Hugging Face integration: Top-k attention inside any `AttentionInterface` causal LM.

`sparsify(model, cfg)` registers the attention function ``"topk"`` with transformers'
`AttentionInterface` (and its mask function with `AttentionMaskInterface`), attaches the
config to every attention module, switches the model to it, and switches back on exit.
Layers, phases and contexts that `TopKConfig.applies_to` leaves dense run transformers' own
SDPA path, so they are bit-for-bit the dense model.

Phase: a call with one query (Lq == 1) is a decode step; more queries are prefill (a prompt,
a chunk of one, or a training sequence). Works with ``model.generate`` and plain forward calls,
the default `DynamicCache` and a `StaticCache` (``cache_implementation="static"``), eager or
under ``torch.compile`` (also ``mode="reduce-overhead"``, CUDA graphs).

Masks: the mask function registered for ``"topk"`` (`key_ranges.topk_mask`) turns transformers'
masks into per-sequence key ranges on the device, so a decode step makes no host
synchronisation: exact Top-k decode and full attention (dense layers, phases left dense,
``TopKConfig(k=None)``) run as custom operators (`topkattn.ops.topk.custom_ops`) over
[lo, hi) of the cache, and a static cache's unfilled tail is never read. Prefill reads the
ranges on the host once per layer (it slices a static cache to its filled prefix).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from topkattn.config import TopKConfig
from topkattn.integrations import decode_graphs, key_ranges as kr
from topkattn.integrations.growing_cache import amortized_growth
from topkattn.ops.topk import topk_attention, use_kernels
from topkattn.ops.topk.custom_ops import decode_ops, sparse_decode
from topkattn.selectors import ExactSelector, SelectionContext, Selector
from topkattn.compat import UnsupportedModelError, attention_modules, check_supported  # noqa: F401
from topkattn.errors import InputError, warn_once

ATTENTION_NAME = "topk"
_STATE_ATTR = "_topkattn_state"


@dataclass
class LayerState:
    """What one attention module needs while sparsified."""

    cfg: TopKConfig
    selector: Selector | None  # None = exact top-k done by the operator itself
    layer_idx: int | None
    store: dict = field(default_factory=dict)
    hidden_states: torch.Tensor | None = None
    module: torch.nn.Module | None = None
    calls: dict = field(default_factory=lambda: {"sparse": 0, "dense": 0})
    graphs: decode_graphs.GraphSlot = field(default_factory=decode_graphs.GraphSlot)


def _to_bool_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """transformers' mask (None, bool True=attend, or additive float) -> bool or None."""
    if attention_mask is None or attention_mask.dtype == torch.bool:
        return attention_mask
    return attention_mask > torch.finfo(attention_mask.dtype).min / 2


def _count(state, sparse: bool) -> None:
    """Count a call in ``state.calls`` (not while torch.compile traces: a counter in the graph
    would make it recompile every step; compiled calls are not counted)."""
    if state is not None and not torch.compiler.is_compiling():
        state.calls["sparse" if sparse else "dense"] += 1


def _dense_sdpa(module, query, key, value, attention_mask, dropout, scaling, **kwargs):
    """transformers' SDPA function with the flash / memory-efficient backends preferred over
    cuDNN (which on Hopper with torch 2.11 rebuilds its plan for every new key length)."""
    with _sdpa_priority():
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)


def _sdpa_priority():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
             SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH]
    try:
        return sdpa_kernel(order, set_priority=True)
    except TypeError:  # pragma: no cover - torch without set_priority
        return sdpa_kernel(order)


def _ranges_decode(state, query, key, value, ranges, scale):
    """One query per sequence over key ranges: exact Top-k or full attention as custom ops,
    no host synchronisation (unless k_ratio / min_context need the context length). Exact
    Top-k and full attention replay the layer's CUDA graph where `decode_graphs` allows.
    query [B, Hq, 1, D]; key, value [B, Hkv, n, D] -> [B, 1, Hq, D]."""
    n = key.shape[2]
    cfg = state.cfg if state is not None else None
    backend = cfg.backend if cfg is not None else "auto"
    kernel = use_kernels(query, backend)
    sparse, topk = False, None
    if cfg is not None and not cfg.dense:
        context = n
        if cfg.k_ratio is not None or cfg.min_context:  # needs the visible length on the host
            context = int((kr.field(ranges, kr.HI) - kr.field(ranges, kr.LO)).max())
        decision = cfg.decode_decision(context, state.layer_idx)
        sparse, topk = decision[0], (decision[1] if decision[0] else None)
    _count(state, sparse)
    if sparse and state.selector is not None:
        return _selector_decode(state, query, key, value, ranges, scale, topk, kernel)
    group = cfg is not None and cfg.granularity == "kv_group"
    sink, local = (cfg.sink, cfg.local) if cfg is not None else (0, 0)

    def body(q, k, v, r):
        topk_decode, range_decode = decode_ops()
        lo, hi = kr.field(r, kr.LO), kr.field(r, kr.HI)
        if sparse:
            out = topk_decode(q, k, v, lo, hi, topk, scale, sink, local, group, kernel)
        else:
            out = range_decode(q, k, v, lo, hi, scale, kernel)
        return _poisoned(out, r)

    if kernel and cfg is not None and cfg.decode_graphs and decode_graphs.eligible(query):
        out = decode_graphs.run(state.graphs, body, query, key, value, ranges,
                                (sparse, topk, scale, sink, local, group))
        if out is not None:
            return out
    return body(query, key, value, ranges)


def _poisoned(out, ranges):
    """out [B, Hq, 1, D] -> [B, 1, Hq, D] contiguous, NaN rows where the padding mask has
    holes (no key range expresses it: loud, never silently wrong; + NaN there, + 0.0
    elsewhere, one kernel)."""
    B = out.shape[0]
    return (out + kr.poison_as(ranges, out.dtype).view(B, 1, 1, 1)).transpose(1, 2).contiguous()


def _selector_decode(state, query, key, value, ranges, scale, topk, kernel):
    """A selector's decode step over key ranges: its own graph-safe range path where it has
    one (replayed as the layer's CUDA graph where `decode_graphs` allows), else its selection
    and `topk_attention` over the ranges' mask. -> [B, 1, Hq, D]."""
    cfg, n = state.cfg, key.shape[2]
    sel = _selection_context(state, topk, scale, "decode")
    selector = state.selector

    def body(q, k, v, r, *hidden):
        lo, hi = kr.field(r, kr.LO), kr.field(r, kr.HI)
        ctx = replace(sel, hidden_states=hidden[0]) if hidden else sel
        indices = selector.range_indices(q, k, lo, hi, ctx)
        if indices is None:
            return None
        out = sparse_decode()(q, k, v, indices, lo, hi, scale, cfg.sink, cfg.local, kernel)
        return _poisoned(out, r)

    if (kernel and cfg.decode_graphs and selector.has_range_path
            and decode_graphs.eligible(query)):
        base = decode_graphs.stable_base(key)  # `run` checks the values' buffer itself
        if base is not None:
            token = selector.prepare_range_graph(query, base, sel)
            hidden = ((sel.hidden_states,) if selector.needs_hidden_states
                      and sel.hidden_states is not None else ())
            out = decode_graphs.run(state.graphs, body, query, key, value, ranges,
                                    (True, topk, scale, cfg.sink, cfg.local, "selector", token),
                                    hidden)
            if out is not None:
                return out
    out = body(query, key, value, ranges)
    if out is not None:  # the selector's own graph-safe path, launched from Python
        return out
    mask = kr.ranges_to_bool_mask(ranges, 1, n)
    indices = selector.select(query, key, sel)
    out = topk_attention(query, key, value, topk=topk, causal=False, scale=scale,
                         sink=cfg.sink, local=cfg.local, granularity=cfg.granularity,
                         indices=indices, attn_mask=mask, backend=cfg.backend)
    return _poisoned(out, ranges)


def _ranges_prefill(module, state, query, key, value, ranges, dropout, scale, kwargs):
    """Several queries over key ranges (prompt, chunk, training sequence). Reads the ranges
    on the host, cuts a static cache to its filled prefix, then runs the general path."""
    Lq = query.shape[2]
    vals = ranges[:, 0, 0].tolist()  # [FIELDS][B]
    q_first, window = vals[kr.Q_FIRST][0], vals[kr.WINDOW][0]
    end = q_first + Lq
    if end > key.shape[2] or q_first < 0:
        raise InputError(f"queries at key slots [{q_first}, {end}) do not fit the {key.shape[2]} "
                         "cached keys")
    if state is not None and state.cfg.sink and not state.cfg.dense:
        _refuse_padded_sink(state.cfg.sink, vals[kr.LO])
    if state is not None and q_first == 0:
        state.store.clear()  # a new sequence starts: selectors' per-sequence state is stale
    if state is not None and state.selector is not None:
        state.selector.observe_prefill(query, key, end, _selection_context(
            state, state.cfg.k_for(end), scale, "prefill"))
    key, value = key[:, :, :end], value[:, :, :end]
    plain = (all(lo == 0 for lo in vals[kr.LO]) and all(hi >= end for hi in vals[kr.HI])
             and not (window and end > window))
    mask = None if plain else kr.ranges_to_bool_mask(ranges, Lq, end)
    # the store was cleared above for a new sequence (and may hold the prefill just observed)
    return _general(module, state, query, key, value, mask, dropout, scale, kwargs,
                    new_sequence_clears=False)


def _refuse_padded_sink(sink: int, firsts: list[int]) -> None:
    """Sink positions are key slots 0 .. sink-1 (kernels and reference alike): in a row whose
    first key sits later (left padding) they are padding, and its sink would silently be
    empty. ``firsts``: each row's first key slot."""
    padded = [b for b, lo in enumerate(firsts) if lo > 0]
    if padded:
        rows = ", ".join(f"{b} (first key at slot {firsts[b]})" for b in padded[:4])
        more = f" and {len(padded) - 4} more" if len(padded) > 4 else ""
        raise InputError(
            f"TopKConfig(sink={sink}) keeps key slots 0..{sink - 1}, but rows {rows}{more} are "
            "left padded, so their sink would be padding; batch rows of one length only, run "
            "such rows one at a time, or use sink=0")


def _selection_context(state, topk, scale, phase):
    return SelectionContext(layer_idx=state.layer_idx, topk=topk, granularity=state.cfg.granularity,
                            scale=scale, phase=phase, store=state.store, module=state.module,
                            hidden_states=state.hidden_states)


def _general(module, state, query, key, value, mask, dropout, scale, kwargs,
             new_sequence_clears: bool = True):
    """Any mask transformers may pass (None, bool, additive float), queries at the last Lq
    key positions when there is none. Returns [B, Lq, Hq, D] like transformers' SDPA function.
    ``new_sequence_clears``: a call without a mask whose queries are all the keys starts a new
    sequence and clears the selectors' store (`_ranges_prefill` has done that itself)."""
    Lq, Lk = query.shape[2], key.shape[2]
    phase = "decode" if Lq == 1 else "prefill"
    if new_sequence_clears and state is not None and mask is None and Lq == Lk:
        state.store.clear()  # a new sequence starts: selectors' per-sequence state is stale
    if state is None or not state.cfg.applies_to(state.layer_idx, phase, Lk):
        _count(state, False)
        out, _ = _dense_sdpa(module, query, key, value, mask, dropout, scale, **kwargs)
        return out
    cfg = state.cfg
    _count(state, True)
    mask = _to_bool_mask(mask)
    topk = cfg.k_for(Lk)
    indices = None
    if state.selector is not None:
        indices = state.selector.select(query, key, _selection_context(state, topk, scale, phase))
    out = topk_attention(
        query, key, value, topk=topk,
        # transformers' mask already holds causality; without one, the queries are the last Lq
        causal=mask is None, scale=scale, sink=cfg.sink, local=cfg.local,
        granularity=cfg.granularity, indices=indices, attn_mask=mask, backend=cfg.backend,
    )
    return out.transpose(1, 2)


def topk_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """The ``"topk"`` attention function.

    query [B, Hq, Lq, D]; key, value [B, Hkv, Lk, D] (the whole cache of this layer, a static
    cache's unfilled slots included); attention_mask: key ranges from `key_ranges.topk_mask`,
    or None / a bool or additive mask. Returns (out [B, Lq, Hq, D], None) like transformers'
    SDPA function.
    """
    state: LayerState | None = getattr(module, _STATE_ATTR, None)
    if state is not None and dropout and module.training:
        warn_once("topk attention ignores attention dropout", stacklevel=2)
    if query.dtype != value.dtype or key.dtype != value.dtype:
        # under autocast RoPE may leave q/k in fp32 while v is bf16 (SDPA casts alike)
        query, key = query.to(value.dtype), key.to(value.dtype)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if state is not None:
        state.module = module
    if kr.is_key_ranges(attention_mask):
        if query.shape[2] == 1:
            out = _ranges_decode(state, query, key, value, attention_mask, scale)
        else:
            out = _ranges_prefill(module, state, query, key, value, attention_mask, dropout,
                                  scale, kwargs)
    else:
        out = _general(module, state, query, key, value, attention_mask, dropout, scale, kwargs)
    return out.contiguous(), None


def _set_hidden_states(state: LayerState, hidden: torch.Tensor | None) -> None:
    state.hidden_states = hidden


def _input_hidden_states(args: tuple, kwargs: dict) -> torch.Tensor | None:
    return kwargs.get("hidden_states", args[0] if args else None)


@contextlib.contextmanager
def attention_override(
    model: torch.nn.Module,
    name: str,
    fn: Callable,
    make_record: Callable[[int | None, torch.nn.Module], Any],
    attr: str,
    on_hidden: Callable[[Any, torch.Tensor | None], None] | None = None,
    mask_fn: Callable = sdpa_mask,
) -> Iterator[dict[int | None, Any]]:
    """Route ``model``'s attention through ``fn`` (registered as ``name``) inside a block.

    Every attention module gets ``make_record(layer_idx, module)`` as attribute ``attr`` (the
    attention function reads it from its ``module`` argument); with ``on_hidden``, a forward
    pre-hook passes each call's input hidden states [B, L, hidden] to
    ``on_hidden(record, hidden)``. ``mask_fn`` is registered as the mask function of ``name``
    (transformers' bool SDPA mask by default; `sparsify` uses key ranges). Yields layer index -> record. On exit (also after an
    exception) hooks, attributes and the previous attention implementation are restored.
    """
    AttentionInterface.register(name, fn)
    AttentionMaskInterface.register(name, mask_fn)
    modules = attention_modules(model)
    previous = [getattr(m, attr, None) for _, m in modules]
    records: dict[int | None, Any] = {}
    hooks = []
    for layer_idx, mod in modules:
        rec = make_record(layer_idx, mod)
        setattr(mod, attr, rec)
        records[layer_idx] = rec
        if on_hidden is not None:
            def pre(module, args, kwargs, rec=rec):
                on_hidden(rec, _input_hidden_states(args, kwargs))

            hooks.append(mod.register_forward_pre_hook(pre, with_kwargs=True))
    previous_impl = model.config._attn_implementation
    model.set_attn_implementation(name)
    try:
        yield records
    finally:
        for h in hooks:
            h.remove()
        for (_, mod), prev in zip(modules, previous):
            if prev is None:
                if hasattr(mod, attr):
                    delattr(mod, attr)
            else:
                setattr(mod, attr, prev)
        model.set_attn_implementation(previous_impl)


@contextlib.contextmanager
def sparsify(model: torch.nn.Module, cfg: TopKConfig) -> Iterator[dict[int | None, LayerState]]:
    """Switch ``model``'s attention to Top-k attention inside a ``with`` block.

    Yields a dict layer index -> `LayerState` (its ``calls`` counts sparse and dense calls).
    On exit the previous attention implementation and states are restored, also after an
    exception. Blocks nest: the inner config wins until it exits.
    """
    if not isinstance(cfg, TopKConfig):
        raise TypeError(f"cfg must be a TopKConfig, got {type(cfg).__name__}")
    if type(cfg.selector).__name__ == "LtriSelector":  # Ltri: its own attention, 2-tier cache
        from topkattn.ltri.context import ltri_context
        with ltri_context(model, cfg.selector, topk=cfg) as run:
            yield run.states
        return
    check_supported(model)
    # exact Top-k is the kernels' own selection; any other selector object replaces it
    selector = None if cfg.selector is None or type(cfg.selector) is ExactSelector else cfg.selector
    needs_hidden = selector is not None and selector.needs_hidden_states
    device = next(model.parameters()).device
    if device.type == "cuda":  # the selection scratch, before any CUDA-graph capture
        from topkattn.ops.select.triton_select import reserve_workspace

        reserve_workspace(device)
    growth = amortized_growth() if device.type == "cuda" and cfg.decode_graphs else contextlib.nullcontext()
    with growth, attention_override(
        model,
        ATTENTION_NAME,
        topk_attention_forward,
        lambda layer_idx, _: LayerState(cfg=cfg, selector=selector, layer_idx=layer_idx),
        _STATE_ATTR,
        _set_hidden_states if needs_hidden else None,
        mask_fn=kr.topk_mask,
    ) as states:
        yield states
