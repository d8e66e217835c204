"""Lengths beyond the model's context (its config's max_position_embeddings) stop ``eval``,
``fidelity`` and ``train-indexer`` with one line naming the length and the limit, before the
model is loaded."""

import json

import pytest

from tests.helpers import run_main
from topkattn.evaluation.context import context_limit


@pytest.fixture
def no_load(monkeypatch):
    """Fail the test if a command loads a model."""
    import topkattn.models as M

    def load_model(*a, **k):
        raise AssertionError("the model was loaded before the length was checked")

    monkeypatch.setattr(M, "load_model", load_model)


@pytest.mark.parametrize("args,option,length", [
    (["eval", "--task", "passkey", "--lengths", "256,1k"], "--lengths", 1024),
    (["fidelity", "--selector", "exact", "--length", "2k"], "--length", 2048),
    (["train-indexer", "--length", "600", "--steps", "1"], "--length", 600),
])
def test_length_beyond_context_is_one_line(tiny_dir, tmp_path, monkeypatch, capsys, no_load,
                                           args, option, length):
    out = str(tmp_path / ("i.safetensors" if args[0] == "train-indexer" else "out"))
    code, _, err = run_main(monkeypatch, capsys, *args, "--model", str(tiny_dir), "--out", out,
                            "--device", "cpu")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: {option}: length {length} tokens exceeds the model's context "
                          "limit (max_position_embeddings=512, from its config)")


def test_rope_scaling_is_named(tmp_path, monkeypatch, capsys, no_load):
    """The limit is the config's max_position_embeddings, and the message says that a RoPE
    scaling in the config is not counted (a config without weights is enough)."""
    from transformers import LlamaConfig

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, max_position_embeddings=256,
                      rope_scaling={"rope_type": "linear", "factor": 4.0})
    cfg.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["max_position_embeddings"] \
        == 256
    code, _, err = run_main(monkeypatch, capsys, "eval", "--model", str(tmp_path / "m"),
                            "--task", "passkey", "--lengths", "512", "--out",
                            str(tmp_path / "o"))
    assert code == 2 and "length 512 tokens" in err and "max_position_embeddings=256" in err
    assert "rope_scaling 'linear' (factor 4.0) is not counted" in err


def test_embedded_gguf_limit():
    assert context_limit("default") == (8192, "its GGUF context_length")
    assert context_limit("/no/such/model") == (None, "")  # load_model names the real problem
