"""Fixtures of the evaluation tests: a tiny random Llama with the embedded tokenizer's
vocabulary (in memory and saved to a folder), and a small LongBench v2 file in the official
schema."""

import json

import pytest

from tests.helpers import tiny_llama_for


@pytest.fixture(scope="session")
def tiny_lm(tokenizer):
    """A 2-layer random Llama (context 512) sharing the embedded tokenizer's vocabulary."""
    return tiny_llama_for(tokenizer)


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
