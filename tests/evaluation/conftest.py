"""Fixtures of the evaluation tests: a tiny random Llama with the embedded tokenizer's
vocabulary (in memory and saved to a folder), and a small LongBench v2 file in the official
schema."""

import json

import pytest
import torch


def _tiny_config(tokenizer, max_position_embeddings=512):
    from transformers import LlamaConfig

    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=max_position_embeddings, eos_token_id=2,
                      bos_token_id=1, pad_token_id=2)
    cfg._attn_implementation = "sdpa"
    return cfg


@pytest.fixture(scope="session")
def tiny_lm(tokenizer):
    """A 2-layer random Llama (context 512) sharing the embedded tokenizer's vocabulary."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(_tiny_config(tokenizer)).eval()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tiny_lm, tokenizer):
    """`tiny_lm` and the tokenizer saved to a folder (for CLI runs)."""
    d = tmp_path_factory.mktemp("tiny-eval-model")
    tiny_lm.save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


def write_longbench_v2(path, n=4, words=120):
    """A LongBench v2 file of ``n`` records in the official schema (answers cycle A-D)."""
    recs = [{"_id": f"lb{i}", "domain": "Single-Document QA", "sub_domain": "test",
             "difficulty": "easy" if i % 2 else "hard",
             "length": ("short", "medium", "long")[i % 3],
             "question": f"Which colour is door {i}?", "choice_A": "red", "choice_B": "blue",
             "choice_C": "green", "choice_D": "white", "answer": "ABCD"[i % 4],
             "context": " ".join(f"Door {j} is painted in a colour." for j in range(words))}
            for i in range(n)]
    path.write_text(json.dumps(recs))
    return path


@pytest.fixture(scope="session")
def lb_file(tmp_path_factory):
    """A 4-record LongBench v2 JSON file."""
    return write_longbench_v2(tmp_path_factory.mktemp("lbv2") / "data.json")
