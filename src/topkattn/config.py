"""Typed configuration of Top-k attention.

`TopKConfig` is plain data: it says which keys each query may attend to. It is validated in
``__post_init__`` so that a bad value fails at once, with a message naming the value and what is
allowed, instead of producing a silently wrong answer later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, NamedTuple

from topkattn.errors import InputError

Phase = Literal["decode", "prefill"]
Granularity = Literal["query_head", "kv_group"]

PHASES: tuple[str, ...] = ("decode", "prefill")
GRANULARITIES: tuple[str, ...] = ("query_head", "kv_group")


class TopKConfigError(InputError):
    """A configuration value is outside what is allowed."""


def resolve_k(k: int | None, k_ratio: float | None, context: int) -> int:
    """Number of keys to keep for a query that sees ``context`` keys.

    ``k`` is absolute; ``k_ratio`` is a share of the visible context, rounded up, at least 1.
    A result larger than the context means dense attention for that query.
    """
    if k is not None:
        return k
    if k_ratio is None:  # pragma: no cover - prevented by TopKConfig validation
        raise TopKConfigError("one of k or k_ratio must be set")
    return max(1, math.ceil(k_ratio * context))


def check_k(k: int | None, k_ratio: float | None) -> None:
    """Raise `TopKConfigError` naming the value unless (k, k_ratio) is a valid k setting: a
    positive integer k, a ratio in (0, 1], or neither (dense). The one rule for k, used by
    `TopKConfig.__post_init__` and by `parse_k`."""
    if k is not None and k_ratio is not None:
        raise TopKConfigError(f"set k or k_ratio, not both (got k={k}, k_ratio={k_ratio})")
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, int):
            raise TopKConfigError(f"k must be a positive integer, got {k!r}")
        if k <= 0:
            raise TopKConfigError(f"k must be a positive integer (k >= 1), got k={k}")
    if k_ratio is not None:
        r = k_ratio
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not (0.0 < r <= 1.0):
            raise TopKConfigError(f"k_ratio must be in (0, 1], got k_ratio={r!r}")


@dataclass(frozen=True)
class TopKConfig:
    """Which keys each query attends to.

    Attributes:
        k: keys kept per query (absolute), in addition to the sink and local positions.
            ``None`` with ``k_ratio`` set uses the ratio instead; both ``None`` means dense.
        k_ratio: keys kept as a share of the visible context, in (0, 1].
        phases: where top-k applies: ``"decode"`` (one new query per step against the cache),
            ``"prefill"`` (every query row of a prompt or training sequence), or both.
        sink: key slots 0 .. sink-1 are always kept where visible (attention sinks). In a
            left-padded row those slots are padding, so `sparsify` refuses a left-padded
            batch when sink > 0 (batched evaluation groups rows of one length instead).
        local: the ``local`` most recent visible positions (the query's own included) are
            always kept.
        dense_layers: layer indices left dense.
        min_context: below this many keys a query attends densely.
        granularity: ``"query_head"`` selects per query head; ``"kv_group"`` selects one set per
            KV head from the sum of its query heads' scores (shares one KV read on GPU).
        selector: a selector object (`topkattn.selectors`, e.g. ``QuestSelector(page_size=16)``)
            that replaces exact selection, or ``None`` for exact top-k by q.k (the kernels'
            own selection). Spec strings such as ``"quest:16"`` belong to the command line:
            `topkattn.selectors.parse_selector` turns them into objects.
        backend: ``"auto"`` (Triton kernels on CUDA when available, reference elsewhere),
            ``"reference"`` or ``"triton"``.
        decode_graphs: on CUDA, eager decoding grows a ``DynamicCache`` into buffers with room
            (`integrations.growing_cache`) and replays each layer's decode attention as one
            CUDA graph (`integrations.decode_graphs`) instead of launching its kernels from
            Python; the outputs are the same. ``False`` keeps transformers' cache and the
            plain launches.
    """

    k: int | None = 64
    k_ratio: float | None = None
    phases: tuple[str, ...] = ("decode",)
    sink: int = 0
    local: int = 0
    dense_layers: tuple[int, ...] = ()
    min_context: int = 0
    granularity: str = "query_head"
    selector: Any = field(default=None, hash=False)
    backend: str = "auto"
    decode_graphs: bool = True

    def __post_init__(self) -> None:
        check_k(self.k, self.k_ratio)
        phases = (self.phases,) if isinstance(self.phases, str) else tuple(self.phases)
        bad = [p for p in phases if p not in PHASES]
        if bad or not phases:
            raise TopKConfigError(
                f"phases must be a non-empty subset of {PHASES}, got {self.phases!r}"
            )
        object.__setattr__(self, "phases", phases)
        for name in ("sink", "local", "min_context"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise TopKConfigError(f"{name} must be an integer >= 0, got {name}={v!r}")
        layers = tuple(self.dense_layers)
        if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in layers):
            raise TopKConfigError(
                f"dense_layers must be layer indices >= 0, got {tuple(self.dense_layers)!r}"
            )
        object.__setattr__(self, "dense_layers", layers)
        if self.granularity not in GRANULARITIES:
            raise TopKConfigError(
                f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}"
            )
        if self.backend not in ("auto", "reference", "triton"):
            raise TopKConfigError(
                f"backend must be one of ('auto', 'reference', 'triton'), got {self.backend!r}"
            )
        if not isinstance(self.decode_graphs, bool):
            raise TopKConfigError(f"decode_graphs must be True or False, got {self.decode_graphs!r}")
        if self.selector is not None and not callable(getattr(self.selector, "select", None)):
            hint = (f"; build it with topkattn.selectors.parse_selector({self.selector!r})"
                    if isinstance(self.selector, str) else "")
            raise TopKConfigError("selector must be a selector object (e.g. "
                                  f"QuestSelector(page_size=16)) or None for exact Top-k, got "
                                  f"{self.selector!r}{hint}")

    @property
    def dense(self) -> bool:
        """True when no key is ever dropped (k and k_ratio both unset)."""
        return self.k is None and self.k_ratio is None

    def k_for(self, context: int) -> int:
        """Keys kept for a query seeing ``context`` keys (>= context means dense)."""
        if self.dense:
            return context
        return resolve_k(self.k, self.k_ratio, context)

    def applies_to(self, layer_idx: int | None, phase: str, context: int) -> bool:
        """Whether attention of this layer, phase and context length is sparse."""
        if self.dense or phase not in self.phases:
            return False
        if layer_idx is not None and layer_idx in self.dense_layers:
            return False
        if context < self.min_context:
            return False
        return self.k_for(context) + self.sink + self.local < context

    def decode_decision(self, context: int, layer_idx: int | None = None) -> tuple:
        """What a decode step of layer ``layer_idx`` that sees ``context`` keys does:
        ``(False,)`` dense, ``(True, k)`` sparse with k keys. Steps with equal decisions run
        the same computation (batched evaluation groups rows by it)."""
        if not self.applies_to(layer_idx, "decode", context):
            return (False,)
        return (True, self.k_for(context))

    def with_(self, **changes) -> "TopKConfig":
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @property
    def k_label(self) -> str:
        """``"full"``, ``"64"`` or the ratio (``"0.05"``)."""
        return setting_label(self.k, self.k_ratio)

    def to_json(self) -> dict[str, Any]:
        """The fields as JSON values; the selector as its spec (`selector_spec`)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["phases"], d["dense_layers"] = list(self.phases), list(self.dense_layers)
        d["selector"] = selector_spec(self.selector)
        return d


class KSetting(NamedTuple):
    """One k setting as plain values: ``(k, k_ratio)``; both None means full (dense)
    attention. `TopKConfig` takes them as they are: ``replace(base, k=s.k, k_ratio=s.k_ratio)``.
    """

    k: int | None
    k_ratio: float | None

    @property
    def dense(self) -> bool:
        return self.k is None and self.k_ratio is None


FULL = KSetting(None, None)


def parse_k(text: str) -> KSetting:
    """Parse one CLI k value into plain values ``(k, k_ratio)``: ``"64"`` -> ``(64, None)``,
    ``"0.05"`` or ``"5%"`` -> ``(None, 0.05)``, ``"full"``/``"dense"`` -> ``(None, None)``.

    Raises `TopKConfigError` naming the value (the rule of `check_k`, the one `TopKConfig`
    applies). No config is built: the caller puts the values into its own `TopKConfig`.
    """
    t = str(text).strip().lower()
    if t in ("full", "dense"):
        return FULL
    try:
        if t.endswith("%"):
            setting = KSetting(None, float(t[:-1]) / 100.0)
        elif any(c in t for c in ".e"):
            setting = KSetting(None, float(t))
        else:
            setting = KSetting(int(t), None)
    except ValueError:
        raise TopKConfigError(
            f"k must be a positive integer, a ratio in (0, 1] such as 0.05 or 5%, or 'full'; "
            f"got {text!r}"
        ) from None
    try:
        check_k(*setting)
    except TopKConfigError as e:
        raise TopKConfigError(f"{e} (from k {text!r})") from None
    return setting


def parse_k_list(text: str | list | tuple) -> list[tuple[str, KSetting]]:
    """A comma-separated list of k values (or a list of them) -> ``[(label, (k, k_ratio))]``
    in the given order, without duplicates; ``label`` is the canonical text
    (`k_label`). Raises `TopKConfigError` naming the first bad value."""
    items = text.split(",") if isinstance(text, str) else [str(x) for x in text]
    out: dict[str, KSetting] = {}
    for item in items:
        if item.strip():
            out.setdefault(k_label(item), parse_k(item))
    if not out:
        raise TopKConfigError(f"k list {text!r} names no k value; give e.g. '8,32,full' or '5%'")
    return list(out.items())


def k_label(text: str) -> str:
    """Canonical label of a k value as typed: ``"full"``, ``"64"``, ``"5%"``, ``"0.05"``."""
    t = str(text).strip().lower()
    return "full" if t in ("full", "dense") else t


def setting_label(k: int | None, k_ratio: float | None) -> str:
    """Label of plain k values: ``"full"``, ``"64"`` or the ratio (``"0.05"``)."""
    if k is None and k_ratio is None:
        return "full"
    return str(k) if k is not None else f"{k_ratio:g}"


def selector_spec(selector: Any) -> str:
    """A spec string of a selector object (`topkattn.selectors.parse_selector` reads it back
    for the built-in selectors): ``None`` -> ``"exact"``; fields equal to their defaults are
    left out; an in-memory object without a spec form (a Lightning indexer given as a module,
    an unregistered class) is named by its class."""
    import dataclasses

    if selector is None:
        return "exact"
    from topkattn.selectors.registry import SELECTORS

    name = next((n for n, cls in SELECTORS.items() if type(selector) is cls), None)
    if name is None or not dataclasses.is_dataclass(selector):
        return type(selector).__name__
    items = []
    for f in dataclasses.fields(selector):
        if not f.init or f.name.startswith("_"):
            continue
        v = getattr(selector, f.name)
        default = (f.default if f.default is not dataclasses.MISSING
                   else f.default_factory() if f.default_factory is not dataclasses.MISSING
                   else dataclasses.MISSING)
        if v == default:
            continue
        if not isinstance(v, (str, int, float, bool)):
            if f.name == "indexer" and getattr(selector, "path", None) is not None:
                continue  # loaded from its path, which the spec names
            return f"{name}:<{type(v).__name__}>"
        items.append(f"{f.name}={v}")
    return name + (":" + ",".join(items) if items else "")
