"""Selectors: which keys each query attends to (exact top-k and approximations)."""

from topkattn.selectors.base import SelectionContext, Selector
from topkattn.selectors.exact import ExactSelector, exact_topk_indices
from topkattn.selectors.registry import SELECTORS, make_selector, register

register("exact")(ExactSelector)

__all__ = [
    "SELECTORS",
    "ExactSelector",
    "SelectionContext",
    "Selector",
    "exact_topk_indices",
    "make_selector",
    "register",
]
