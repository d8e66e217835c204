"""Greedy decoding shared by evaluation and analysis: one dense prefill per prompt, then one
branch per setting (full attention or a `TopKConfig`) from its own copy of the cache."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

from topkattn.config import TopKConfig


def eos_token_ids(model, tokenizer) -> set[int]:
    """Token ids that end an answer: the tokenizer's and generation config's EOS tokens."""
    ids: set[int] = set()
    for v in (getattr(tokenizer, "eos_token_id", None),
              getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if v is None:
            continue
        ids.update(v if isinstance(v, (list, tuple, set)) else [v])
    for tok in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>"):
        try:
            i = tokenizer.convert_tokens_to_ids(tok)
        except Exception:  # pragma: no cover - tokenizer without the method
            continue
        if isinstance(i, int) and i >= 0 and i != getattr(tokenizer, "unk_token_id", None):
            ids.add(i)
    return ids


def greedy_decode(model, first_token, cache, max_new_tokens: int, eos: set[int],
                  position: int | None = None) -> list[int]:
    """Greedy decoding from ``cache``: feed ``first_token`` [1, 1], then each argmax.

    ``position``: the position of ``first_token``, each next token one further (for a cache
    shorter than the text it holds, e.g. a compressed one); None: transformers derives the
    positions from the cache's length.

    Returns the generated token ids (an EOS token ends decoding and is not returned).
    """
    import torch

    out_ids: list[int] = []
    tok = first_token
    for i in range(max_new_tokens):
        kw = {}
        if position is not None:
            kw["position_ids"] = torch.tensor([[position + i]], device=first_token.device)
        out = model(input_ids=tok, past_key_values=cache, use_cache=True, **kw)
        cache = out.past_key_values
        nxt = int(out.logits[0, -1].argmax())
        if nxt in eos:
            break
        out_ids.append(nxt)
        tok = torch.tensor([[nxt]], device=first_token.device)
    return out_ids


#: full attention through the Top-k attention function (a frozen config, built once)
FULL_ATTENTION = TopKConfig(k=None)


def _sparsify(model, cfg: TopKConfig | None):
    """Top-k decoding with ``cfg``; ``None`` (full attention) decodes densely through the same
    attention function (`FULL_ATTENTION`: full attention over key ranges, no per-length
    SDPA plan rebuilds), so both sides of a comparison take the same path."""
    from topkattn.integrations.hf import sparsify

    return sparsify(model, cfg if cfg is not None else FULL_ATTENTION)


@dataclass
class Branch:
    """One decoded answer of `decode_branches`."""

    label: str
    token_ids: list[int]
    text: str
    seconds: float
    prefill_seconds: float
    n_tokens: int


def decode_branches(model, tokenizer, prompt: str, settings, max_new_tokens: int,
                    eos: set[int]):
    """Prefill ``prompt`` once and decode one greedy answer per setting.

    The prompt except its last token is prefilled densely, once; each ``(label, TopKConfig or
    None)`` in ``settings`` then decodes from its own deep copy of that cache inside
    ``sparsify`` (None = full attention), feeding the last prompt token first, so even the
    first answer token comes from a Top-k step. Yields a `Branch` per setting, in order.
    """
    import torch

    device = next(model.parameters()).device
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    ids = ids.to(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        prefix = model(input_ids=ids[:, :-1], use_cache=True).past_key_values
    prefill_s = time.perf_counter() - t0
    for label, topk in settings:
        observes = getattr(getattr(topk, "selector", None), "observes_dense_prefill", False)
        cache = None if observes else copy.deepcopy(prefix)
        t1 = time.perf_counter()
        with torch.no_grad(), _sparsify(model, topk):
            if observes:  # the selector reads the prefill's attention (Ltri's span detection)
                cache = model(input_ids=ids[:, :-1], use_cache=True).past_key_values
            gen = greedy_decode(model, ids[:, -1:], cache, max_new_tokens, eos)
        secs = time.perf_counter() - t1
        del cache
        yield Branch(label, gen, tokenizer.decode(gen, skip_special_tokens=True), secs,
                     prefill_s, int(ids.shape[1]))
    del prefix
    if device.type == "cuda":  # pragma: no cover - GPU only
        torch.cuda.empty_cache()


def decode_one(model, tokenizer, prompt: str, topk: TopKConfig | None, max_new_tokens: int,
               eos: set[int], label: str = "") -> Branch:
    """One greedy answer to ``prompt`` under ``topk`` (None: full attention), by the protocol
    of `decode_branches` (dense prefill of all but the last prompt token, then decoding inside
    ``sparsify``). Used for the second turn of two-turn tasks."""
    return list(decode_branches(model, tokenizer, prompt, [(label, topk)], max_new_tokens,
                                eos))[0]


__all__ = ["Branch", "decode_branches", "decode_one", "eos_token_ids", "greedy_decode"]
