"""topkattn: Top-k sparse attention for Hugging Face causal language models.

Public API::

    model, tokenizer = topkattn.load_model()          # embedded SmolLM2-135M, a Hub id or a path
    cfg = topkattn.TopKConfig(k=64, phases=("decode",))
    with topkattn.sparsify(model, cfg):
        out = model.generate(**inputs, max_new_tokens=32)

    cfg = topkattn.TopKConfig(k=64, selector=topkattn.selectors.QuestSelector(page_size=16))
    out = topkattn.topk_attention(q, k, v, topk=64)   # the functional operator
"""

from __future__ import annotations

from topkattn.config import TopKConfig, TopKConfigError
from topkattn.ops.topk import topk_attention
from topkattn.selectors import SELECTORS, ScoreSelector, Selector, make_selector, parse_selector

__version__ = "0.1.0"

_LAZY = {
    "load_model": ("topkattn.models", "load_model"),
    "sparsify": ("topkattn.integrations.hf", "sparsify"),
}


def __getattr__(name: str):
    # transformers is heavy to import: load the model-facing API on first use.
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'topkattn' has no attribute {name!r}")


__all__ = [
    "SELECTORS",
    "ScoreSelector",
    "Selector",
    "TopKConfig",
    "TopKConfigError",
    "load_model",
    "make_selector",
    "parse_selector",
    "sparsify",
    "topk_attention",
]
