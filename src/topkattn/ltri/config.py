"""`LtriConfig`: every setting of the Ltri-LLM system (frozen, validated on construction).

Sizes are in tokens unless named otherwise. A bad value raises `LtriConfigError` (an
`InputError`) naming the value and what is allowed, before any model work.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from typing import Any

from topkattn.errors import InputError

BOUNDARIES = ("triangle", "similarity", "fixed")
REPRESENTS = ("mean", "bound")
RETRIEVALS = ("collaborative", "per_layer")
OFFLOADS = ("auto", "cpu", "none")


class LtriConfigError(InputError):
    """An Ltri setting outside what is allowed."""


_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6,
          "mib": 2**20, "g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tib": 2**40}


def parse_bytes(text: str | int | None) -> int | None:
    """``"2GiB"`` -> 2147483648, ``"512MB"`` -> 512000000, an int as it is, None / ``"none"``
    -> None (no bound). Raises `LtriConfigError` naming the value."""
    if text is None or isinstance(text, int) and not isinstance(text, bool):
        if text is not None and text <= 0:
            raise LtriConfigError(f"gpu_kv_budget must be > 0 bytes, got {text}")
        return text
    t = str(text).strip().lower().replace(" ", "")
    if t in ("", "none", "off"):
        return None
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)([a-z]*)", t)
    if not m or m.group(2) not in _UNITS or float(m.group(1)) <= 0:
        raise LtriConfigError(f"gpu_kv_budget must be a size such as 2GiB, 512MB or 1e9 bytes; "
                              f"got {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def _int(name: str, v: Any, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise LtriConfigError(f"{name} must be an integer >= {lo}, got {name}={v!r}")
    return v


def _ints(name: str, v: Any) -> tuple[int, ...]:
    if isinstance(v, int) and not isinstance(v, bool):
        v = (v,)
    elif isinstance(v, str):
        v = tuple(int(x) for x in re.split(r"[;+ ]", v) if x.strip()) if v.strip() else ()
    out = tuple(v)
    if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in out):
        raise LtriConfigError(f"{name} must be indices >= 0, got {v!r}")
    return out


@dataclass(frozen=True)
class LtriConfig:
    """Settings of span detection, the span index, retrieval and the two-tier KV cache.

    Attributes:
        budget_tokens: tokens of retrieved spans each query attends to (besides sink and
            recent tokens); the last retrieved span may be cut to fit.
        sink: first positions always attended (attention sinks; resident in tier 1).
        recent: most recent positions always attended (the local window; resident in tier 1).
        max_span, min_span: span length limits of detection.
        boundary: "triangle" (Ltri-LLM: triangles of the prefill attention map, NMS),
            "similarity" (adjacent-key similarity drops, the ``spans`` selector's rule) or
            "fixed" (spans of exactly ``max_span``).
        threshold: per-cell threshold of the triangle score, per detection head: a span
            [x, y] scores sum over its lower triangle of (attention - threshold).
        detect_layers: layers whose prefill attention detects spans (empty: the retrieval
            layers).
        detect_chunk: query rows per block when the detection layers' attention is computed
            (no n x n map is held; the block also shrinks to bound memory).
        represent: how a query scores a span: "mean" (q . mean key) or "bound" (Quest's
            sum_c max(q_c min_c, q_c max_c) over the span's channel-wise key bounds).
        dynamic: refine each span's representative by its neighbours' votes (see
            `topkattn.ltri.index.SpanIndex.dynamic_means`).
        dynamic_weight, dynamic_window: the weight of the neighbours' vote-weighted mean key
            and how many spans on each side count as neighbours.
        retrieval: "collaborative" (the retrieval heads of ``retrieval_layers`` vote for the
            spans every layer uses) or "per_layer" (each layer's KV heads vote for its own).
        retrieval_layers: layers holding retrieval heads (empty: the middle layer).
        retrieval_heads: KV heads of those layers that vote (empty: all).
        refresh_every: decode steps between retrievals (1: every step).
        chunk_size: tokens per chunk of streaming prefill.
        offload: "auto" (tier 2 in pinned CPU memory when the model is on CUDA, on the model's
            device otherwise), "cpu" (always CPU) or "none" (both tiers on the model's device).
        gather_threads: worker threads that gather tier-2 rows for prefetched copies (0: the
            calling thread gathers, synchronously).
        gpu_kv_budget: bytes of device memory tier 1 (sink, recent window, chunk, retrieved
            spans) may take over all layers; None: no bound is checked. Too small a budget
            for the settings is an error before the model runs.
    """

    budget_tokens: int = 2048
    sink: int = 4
    recent: int = 256
    max_span: int = 64
    min_span: int = 4
    boundary: str = "triangle"
    threshold: float = 0.002
    detect_layers: tuple[int, ...] = ()
    detect_chunk: int = 1024
    represent: str = "mean"
    dynamic: bool = False
    dynamic_weight: float = 0.5
    dynamic_window: int = 1
    retrieval: str = "collaborative"
    retrieval_layers: tuple[int, ...] = ()
    retrieval_heads: tuple[int, ...] = ()
    refresh_every: int = 1
    chunk_size: int = 512
    offload: str = "auto"
    gather_threads: int = 4
    gpu_kv_budget: int | None = None

    def __post_init__(self) -> None:
        for name, lo in (("budget_tokens", 1), ("sink", 0), ("recent", 1), ("max_span", 1),
                         ("min_span", 1), ("detect_chunk", 1), ("dynamic_window", 1),
                         ("refresh_every", 1), ("chunk_size", 1), ("gather_threads", 0)):
            _int(name, getattr(self, name), lo)
        if self.min_span > self.max_span:
            raise LtriConfigError(f"min_span must be <= max_span, got min_span={self.min_span}, "
                                  f"max_span={self.max_span}")
        if self.refresh_every > self.chunk_size:
            raise LtriConfigError(f"refresh_every must be <= chunk_size (the local window holds "
                                  f"the tokens between refreshes), got refresh_every="
                                  f"{self.refresh_every}, chunk_size={self.chunk_size}")
        for name, allowed in (("boundary", BOUNDARIES), ("represent", REPRESENTS),
                              ("retrieval", RETRIEVALS), ("offload", OFFLOADS)):
            if getattr(self, name) not in allowed:
                raise LtriConfigError(f"{name} must be one of {allowed}, got "
                                      f"{getattr(self, name)!r}")
        for name in ("threshold", "dynamic_weight"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise LtriConfigError(f"{name} must be a number >= 0, got {name}={v!r}")
        for name in ("detect_layers", "retrieval_layers", "retrieval_heads"):
            object.__setattr__(self, name, _ints(name, getattr(self, name)))
        object.__setattr__(self, "gpu_kv_budget", parse_bytes(self.gpu_kv_budget))
        if not isinstance(self.dynamic, bool):
            raise LtriConfigError(f"dynamic must be true or false, got {self.dynamic!r}")

    def with_(self, **changes) -> "LtriConfig":
        return replace(self, **changes)

    def layers_for_retrieval(self, n_layers: int) -> tuple[int, ...]:
        """The retrieval layers of a model with ``n_layers`` (default: the middle one);
        an index past the model is an error."""
        layers = self.retrieval_layers or (n_layers // 2,)
        bad = [i for i in layers if i >= n_layers]
        if bad:
            raise LtriConfigError(f"retrieval_layers {bad} are past the model's {n_layers} "
                                  "layers")
        return tuple(sorted(set(layers)))

    def layers_for_detection(self, n_layers: int) -> tuple[int, ...]:
        layers = self.detect_layers or self.layers_for_retrieval(n_layers)
        bad = [i for i in layers if i >= n_layers]
        if bad:
            raise LtriConfigError(f"detect_layers {bad} are past the model's {n_layers} layers")
        return tuple(sorted(set(layers)))

    def to_json(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        for k in ("detect_layers", "retrieval_layers", "retrieval_heads"):
            d[k] = list(d[k])
        return d


__all__ = ["BOUNDARIES", "LtriConfig", "LtriConfigError", "OFFLOADS", "REPRESENTS",
           "RETRIEVALS", "parse_bytes"]
