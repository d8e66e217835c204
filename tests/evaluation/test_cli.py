"""`topkattn eval` on the command line: bad input is one line and exit code 2."""

import sys

import pytest
import torch


def _main(monkeypatch, capsys, *args):
    import topkattn.cli as cli

    monkeypatch.setattr(sys, "argv", ["topkattn", "eval", *args])
    with pytest.raises(SystemExit) as e:
        cli.main()
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    """A tiny random Llama saved with the embedded tokenizer (context 512)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    d = tmp_path_factory.mktemp("tiny-model")
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, eos_token_id=2, bos_token_id=1)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


@pytest.mark.parametrize("args,msg", [
    (["--task", "nope"], "unknown task 'nope'"),
    (["--k", "8,abc"], "k must be"),
    (["--k", "0"], "k must be a positive integer"),
    (["--lengths", "1x"], "length must be"),
    (["--model", "/no/such/model", "--task", "passkey"], "/no/such/model"),
])
def test_bad_input_is_one_line(monkeypatch, capsys, tmp_path, args, msg):
    code, out, err = _main(monkeypatch, capsys, *args, "--out", str(tmp_path))
    assert code == 2
    assert err.startswith("error: ") and msg in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_length_beyond_context_and_a_run(monkeypatch, capsys, tmp_path, model_dir):
    code, _, err = _main(monkeypatch, capsys, "--model", str(model_dir), "--task", "passkey",
                         "--lengths", "1k", "--out", str(tmp_path), "--device", "cpu")
    assert code == 2 and "length 1024" in err and "max_position_embeddings=512" in err

    import topkattn.cli as cli

    monkeypatch.setattr(sys, "argv", ["topkattn", "eval", "--model", str(model_dir), "--task",
                                      "passkey,kv", "--lengths", "256", "--k", "4,full",
                                      "--samples", "1", "--max-new-tokens", "2", "--quiet",
                                      "--device", "cpu", "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code in (0, None)
    out = capsys.readouterr().out
    assert "passkey" in out and "k=4" in out and "full" in out
    assert (tmp_path / "table.md").exists() and (tmp_path / "accuracy.png").exists()

    monkeypatch.setattr(sys, "argv", ["topkattn", "eval", "--report-only", "--task", "passkey",
                                      "--lengths", "256", "--k", "4,full", "--out",
                                      str(tmp_path)])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code in (0, None)
    out = capsys.readouterr().out
    assert "passkey" in out and "kv" not in (tmp_path / "table.md").read_text()
