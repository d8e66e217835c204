"""Ltri-LLM (Tang et al., arXiv 2412.04757): triangle span detection, a span index,
collaborative retrieval, streaming prefill and a two-tier (offloaded) KV cache.

Modules: `config` (LtriConfig), `detection` (triangle scores, NMS, chunked attention band),
`naive` (reference loops), `index` (SpanIndex), `retrieval` (retrieval-head voting),
`state` (one sequence's segmentation, index and retrieval), `cache` (the two-tier cache
transformers accepts), `attention` (the attention function), `context` (the context manager,
streaming prefill, generation), `selector` (the ``ltri`` selector), `document` (save / load
a prefilled document).

    from topkattn.ltri import LtriConfig, ltri_context
    with ltri_context(model, LtriConfig(budget_tokens=2048, gpu_kv_budget="2GiB")) as run:
        tokens = run.generate(input_ids, max_new_tokens=32)

The names below other than the config are imported on first use (the selector registry
imports `topkattn.ltri.selector` from inside `topkattn.selectors`).
"""

from topkattn.ltri.config import LtriConfig, LtriConfigError, parse_bytes

_LAZY = {
    "LtriSelector": "topkattn.ltri.selector",
    "ltri_context": "topkattn.ltri.context",
    "LtriRun": "topkattn.ltri.context",
    "LtriCache": "topkattn.ltri.cache",
    "SpanIndex": "topkattn.ltri.index",
    "save_document": "topkattn.ltri.document",
    "load_document": "topkattn.ltri.document",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'topkattn.ltri' has no attribute {name!r}")


__all__ = ["LtriConfig", "LtriConfigError", "parse_bytes", *_LAZY]
