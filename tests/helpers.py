"""Tiny random causal LMs of several families, for CPU tests."""

from __future__ import annotations

import torch

FAMILIES = ("llama", "qwen2", "qwen3", "mistral")


def tiny_causal_lm(family: str = "llama", layers: int = 2, seed: int = 0, vocab: int = 97):
    """A random-weight causal LM of ``family`` with 4 query and 2 KV heads, head_dim 16."""
    import transformers as tf

    common = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    config_cls, model_cls = {
        "llama": (tf.LlamaConfig, tf.LlamaForCausalLM),
        "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
        "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM),
        "mistral": (tf.MistralConfig, tf.MistralForCausalLM),
    }[family]
    extra = {"head_dim": 16} if family in ("qwen3", "mistral") else {}
    config = config_cls(**common, **extra)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    return model_cls(config).eval()


def tiny_llama_for(tokenizer, max_position_embeddings: int = 512, seed: int = 0):
    """A 2-layer random Llama (hidden 32, 4 query / 2 KV heads) with ``tokenizer``'s vocabulary,
    for tests that tokenize real prompts."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=max_position_embeddings, eos_token_id=2,
                      bos_token_id=1, pad_token_id=2)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


def run_main(monkeypatch, capsys, *args):
    """(exit code, stdout, stderr) of ``topkattn ARGS`` run in process through
    `topkattn.cli.main` (so bad input gives its one-line error and exit code 2)."""
    import sys

    import topkattn.cli as cli

    monkeypatch.setattr(sys, "argv", ["topkattn", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as e:
        code = e.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


class FakeGraph:
    """Stands in for a captured CUDA graph on CPU: replay runs the body again on the static
    inputs it was "captured" on (the data flow of a graph; not its frozen host decisions)."""

    def __init__(self, body, q, k, v, r, extra=()):
        self.replays = 0
        self._run = lambda: body(q, k, v, r, *extra)
        self.out = self._run()

    def replay(self):
        self.replays += 1
        self.out.copy_(self._run())


def fake_capture(signature, body, query, key, value, ranges, extra=()):
    """`decode_graphs._capture` with a `FakeGraph` (monkeypatch it in)."""
    from topkattn.integrations import decode_graphs as dg

    q = query.clone()
    xs = tuple(t.clone() for t in extra)
    g = FakeGraph(body, q, key, value, dg._shared_ranges(ranges), xs)
    return dg.DecodeGraph(signature, g, q, g.out, xs)
