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

    # a report-only that selects less than the finished summary counts writes nothing
    table = (tmp_path / "table.md").read_text()
    monkeypatch.setattr(sys, "argv", ["topkattn", "eval", "--report-only", "--task", "passkey",
                                      "--lengths", "256", "--k", "4,full", "--out",
                                      str(tmp_path)])
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and "kv 256 k=full: 1 -> 0 samples" in err
    assert (tmp_path / "table.md").read_text() == table and "kv" in table
    # without the flags it reports with the folder's own settings: the same table
    monkeypatch.setattr(sys, "argv", ["topkattn", "eval", "--report-only", "--out",
                                      str(tmp_path)])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code in (0, None) and "passkey" in capsys.readouterr().out
    assert (tmp_path / "table.md").read_text() == table


def test_topk_options_reach_sparsify(tmp_path, model_dir, monkeypatch):
    """Every Top-k option of eval, --min-context included, is in the TopKConfig that
    `sparsify` gets, and one config is built per k setting."""
    from typer.testing import CliRunner

    import topkattn.generation as G
    from topkattn.cli import app
    from topkattn.selectors import QuestSelector

    seen = []
    real = G._sparsify
    monkeypatch.setattr(G, "_sparsify", lambda m, c: seen.append(c) or real(m, c))
    r = CliRunner().invoke(app, [
        "eval", "--model", str(model_dir), "--task", "passkey", "--lengths", "256", "--k",
        "4,5%", "--samples", "1", "--max-new-tokens", "1", "--quiet", "--device", "cpu",
        "--out", str(tmp_path), "--sink", "1", "--local", "2", "--min-context", "8",
        "--dense-layers", "1", "--granularity", "kv_group", "--selector", "quest:8",
        "--backend", "reference"])
    assert r.exit_code == 0, r.output
    assert seen[0] is None  # full attention first
    four, ratio = seen[1:]
    assert (four.k, four.k_ratio, ratio.k, ratio.k_ratio) == (4, None, None, 0.05)
    for t in (four, ratio):
        assert (t.sink, t.local, t.min_context, t.dense_layers) == (1, 2, 8, (1,))
        assert t.granularity == "kv_group" and t.backend == "reference"
        assert t.selector == QuestSelector(page_size=8) and t.phases == ("decode",)
    import json

    saved = json.loads((tmp_path / "eval_config.json").read_text())
    assert saved["ks"] == ["full", "4", "5%"] and saved["topk"]["min_context"] == 8


@pytest.mark.parametrize("args,msg", [
    (["--min-context", "-1"], "min_context must be an integer >= 0, got min_context=-1"),
    (["--granularity", "rows"], "granularity must be one of ('query_head', 'kv_group'), got "
                                "'rows'"),
    (["--selector", "quest:x"], "quest:x"),
    (["--dense-layers", "0,x"], "--dense-layers must be comma-separated layer indices, got "
                                "'0,x'"),
    (["--backend", "gpu"], "got 'gpu'"),
    (["--k", "8,0%"], "from k '0%'"),
])
def test_bad_topk_option_is_one_line(monkeypatch, capsys, tmp_path, args, msg):
    code, out, err = _main(monkeypatch, capsys, *args, "--out", str(tmp_path))
    assert code == 2
    assert err.startswith("error: ") and msg in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
