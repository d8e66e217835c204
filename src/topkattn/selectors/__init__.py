"""Selectors: which keys each query attends to (exact top-k and approximations).

Registered names (``SELECTORS``): ``exact``, ``precision`` (``precision:0.75``), ``window``,
``random``, ``quest``, ``spans`` and ``lightning`` (``lightning:<weights path>``). Specs are
parsed in one place, `registry.parse_selector`.
"""

from topkattn.selectors.base import ScoreSelector, SelectionContext, Selector, expand_heads
from topkattn.selectors.exact import ExactSelector
from topkattn.selectors.lightning import LightningIndexer, LightningSelector
from topkattn.selectors.precision import PrecisionSelector
from topkattn.selectors.quest import QuestSelector
from topkattn.selectors.random import RandomSelector
from topkattn.selectors.registry import (
    SELECTORS, SelectorSpecError, make_selector, parse_selector, register, split_specs,
)
from topkattn.selectors.spans import SpanSelector
from topkattn.selectors.window import WindowSelector

register("exact")(ExactSelector)
register("precision")(PrecisionSelector)  # precision:p
register("window")(WindowSelector)  # window:<sink>
register("random")(RandomSelector)  # random:<seed>
register("quest")(QuestSelector)  # quest:<page size>
register("spans")(SpanSelector)  # spans:<max span>
register("lightning")(LightningSelector)  # lightning:<weights path>

__all__ = [
    "SELECTORS",
    "ExactSelector",
    "LightningIndexer",
    "LightningSelector",
    "PrecisionSelector",
    "QuestSelector",
    "RandomSelector",
    "SelectionContext",
    "Selector",
    "SpanSelector",
    "WindowSelector",
    "ScoreSelector",
    "SelectorSpecError",
    "expand_heads",
    "make_selector",
    "parse_selector",
    "register",
    "split_specs",
]
