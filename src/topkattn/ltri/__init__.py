"""Ltri-LLM (Tang et al., arXiv 2412.04757): triangle span detection, a span index,
collaborative retrieval, streaming prefill and a two-tier (offloaded) KV cache.

Modules: `config` (LtriConfig), `detection` (triangle scores, NMS, chunked attention band),
`naive` (reference loops), `index` (SpanIndex), `retrieval` (retrieval-head voting),
`cache` (the two-tier cache transformers accepts), `attention` (the attention function),
`context` (the context manager and streaming prefill), `selector` (the ``ltri`` selector).
"""

from topkattn.ltri.config import LtriConfig, LtriConfigError, parse_bytes

__all__ = ["LtriConfig", "LtriConfigError", "parse_bytes"]
