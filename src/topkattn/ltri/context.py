"""`ltri_context`: run a Hugging Face causal LM with Ltri-LLM, and `LtriRun`'s streaming
prefill and greedy generation over the two-tier cache.

    with ltri_context(model, LtriConfig(budget_tokens=2048, gpu_kv_budget="2GiB")) as run:
        ids = run.generate(input_ids, max_new_tokens=32)        # streaming prefill + decode
        cache = run.new_cache(); model.generate(input_ids, past_key_values=cache, ...)

Inside the block the model's attention is the ``"topk_ltri"`` function
(`topkattn.ltri.attention`): with an `LtriCache` it runs the two-tier path; with any other
cache, Top-k attention with the ``ltri`` selector exactly as `topkattn.integrations.hf.
sparsify` runs it. ``sparsify(model, TopKConfig(selector=LtriSelector(...)))`` hands over to
this context (the Top-k config's k is then the retrieved-token budget of both paths), so
``topkattn eval/fidelity --selector ltri`` and plain ``model.generate`` work unchanged, and
``model.generate(..., past_key_values=run.new_cache())`` uses the offloaded cache.

`LtriRun.prefill` streams a prompt through the model in chunks of ``chunk_size`` tokens
(every chunk passes all layers before the next starts, as Ltri-LLM does), so the device
holds the weights, one chunk's activations and tier 1 - never the whole context's KV.
"""

from __future__ import annotations

import contextlib
from dataclasses import fields
from typing import Iterator

import torch

from topkattn.compat import attention_modules, check_supported
from topkattn.config import TopKConfig
from topkattn.errors import InputError
from topkattn.integrations import key_ranges as kr
from topkattn.integrations.hf import attention_override
from topkattn.ltri.attention import ATTENTION_NAME, LtriLayerState, ltri_attention_forward
from topkattn.ltri.cache import LtriCache
from topkattn.ltri.config import LtriConfig
from topkattn.ltri.state import LtriState


def model_dims(model) -> tuple[int, int, int, int]:
    """(layers, query heads, KV heads, head dim) of a transformers causal LM."""
    c = model.config
    c = getattr(c, "text_config", None) or c
    Hq = c.num_attention_heads
    Hkv = getattr(c, "num_key_value_heads", None) or Hq
    D = getattr(c, "head_dim", None) or c.hidden_size // Hq
    return c.num_hidden_layers, Hq, Hkv, D


def _ltri_config(cfg) -> LtriConfig:
    if type(cfg) is LtriConfig:
        return cfg
    return LtriConfig(**{f.name: getattr(cfg, f.name) for f in fields(LtriConfig)})


class LtriRun:
    """One model under Ltri: builds caches, streams prefill, decodes greedily.

    Args:
        model: the causal LM (its attention routed through ``"topk_ltri"`` by `ltri_context`).
        cfg: the settings.
        budget: retrieved-token pool size (default cfg.budget_tokens).
    """

    def __init__(self, model, cfg: LtriConfig, budget: int | None = None):
        self.model, self.cfg = model, cfg
        self.n_layers, self.n_q_heads, self.n_kv_heads, self.head_dim = model_dims(model)
        layers = [i for i, _ in attention_modules(model) if i is not None]
        self.first_layer = min(layers) if layers else 0
        self.budget = budget or cfg.budget_tokens
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        cfg.layers_for_retrieval(self.n_layers)  # fail now on a layer past the model
        cfg.layers_for_detection(self.n_layers)
        self.states: dict = {}

    def new_state(self) -> LtriState:
        return LtriState(self.cfg, self.n_layers, self.n_q_heads, self.n_kv_heads,
                         self.head_dim, self.device)

    def new_cache(self, capacity: int = 0) -> LtriCache:
        """An empty two-tier cache for one sequence (``capacity``: expected tokens); raises
        `LtriConfigError` when tier 1 would exceed ``gpu_kv_budget``."""
        return LtriCache(self.cfg, self.n_layers, self.device, self.budget, capacity,
                         self.new_state(), (self.n_kv_heads, self.head_dim, self.dtype))

    def state_for(self, cache: LtriCache, q=None, k=None) -> LtriState:
        if cache.state is None:
            cache.state = self.new_state()
        return cache.state

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, cache: LtriCache | None = None,
                capacity: int = 0) -> tuple[torch.Tensor, LtriCache]:
        """Stream ``input_ids`` [1, L] through the model in chunks of chunk_size.
        Returns (logits of the last position [1, vocab], the cache)."""
        if input_ids.dim() != 2 or input_ids.shape[0] != 1:
            raise InputError(f"Ltri prefill takes one sequence [1, L]; got "
                             f"{tuple(input_ids.shape)}")
        cache = cache if cache is not None else self.new_cache(capacity or input_ids.shape[1])
        C = self.cfg.chunk_size
        logits = None
        for a in range(0, input_ids.shape[1], C):
            out = self.model(input_ids=input_ids[:, a:a + C].to(self.device),
                             past_key_values=cache, use_cache=True, logits_to_keep=1)
            logits = out.logits[:, -1]
        return logits, cache

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, eos: set[int] = frozenset(),
                 cache: LtriCache | None = None) -> list[int]:
        """Greedy decoding after a streaming prefill; an EOS token ends it (not returned)."""
        logits, cache = self.prefill(input_ids, cache, input_ids.shape[1] + max_new_tokens)
        self.cache = cache
        out: list[int] = []
        for _ in range(max_new_tokens):
            nxt = int(logits[0].argmax())
            if nxt in eos:
                break
            out.append(nxt)
            if len(out) == max_new_tokens:
                break
            tok = torch.tensor([[nxt]], device=self.device)
            logits = self.model(input_ids=tok, past_key_values=cache, use_cache=True).logits[:, -1]
        return out


@contextlib.contextmanager
def ltri_context(model, cfg: LtriConfig | None = None, topk: TopKConfig | None = None
                 ) -> Iterator[LtriRun]:
    """Route ``model``'s attention through Ltri inside a ``with`` block; yields the `LtriRun`.

    ``cfg``: an `LtriConfig` or an `LtriSelector` (default settings when None). ``topk``: the
    Top-k config of the in-memory path (sparsify hands its own over; its k is then the
    retrieved-token budget of the two-tier path too). Restores the model on exit."""
    from topkattn.ltri.selector import LtriSelector

    check_supported(model)
    cfg = cfg if cfg is not None else LtriConfig()
    lcfg = _ltri_config(cfg)
    sel = cfg if isinstance(cfg, LtriSelector) else LtriSelector(
        **{f.name: getattr(lcfg, f.name) for f in fields(LtriConfig)})
    if topk is None:
        topk = TopKConfig(k=lcfg.budget_tokens, sink=lcfg.sink, local=lcfg.recent, selector=sel)
    run = LtriRun(model, lcfg, topk.k)
    with attention_override(
        model, ATTENTION_NAME, ltri_attention_forward,
        lambda layer_idx, _: LtriLayerState(cfg=topk, selector=sel, layer_idx=layer_idx, run=run),
        "_topkattn_state", None, mask_fn=kr.topk_mask,
    ) as states:
        run.states = states
        yield run


def handles(cfg) -> bool:
    """Whether ``sparsify`` hands ``cfg`` (a TopKConfig) over to `ltri_context`."""
    from topkattn.ltri.selector import LtriSelector

    return isinstance(getattr(cfg, "selector", None), LtriSelector)


__all__ = ["LtriRun", "handles", "ltri_context", "model_dims"]
