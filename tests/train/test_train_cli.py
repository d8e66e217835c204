"""`topkattn train` on the command line: every Top-k option reaches `sparsify`, in process."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tests.train.test_sft import _overfit_data
from topkattn.cli import app
from topkattn.selectors import QuestSelector


def _invoke(*args):
    return CliRunner().invoke(app, ["train", *args])


def test_topk_options_reach_sparsify(tiny_model_dir, tmp_path, monkeypatch):
    import topkattn.train.sft as sft

    seen = []
    real = sft._sparsify
    monkeypatch.setattr(sft, "_sparsify", lambda base, topk: seen.append(topk) or real(base, topk))
    out = tmp_path / "run"
    r = _invoke("--data", _overfit_data(tmp_path, 4), "--out", str(out), "--model",
                tiny_model_dir, "--max-length", "64", "--steps", "1", "--warmup-steps", "0",
                "--save-every", "0", "--device", "cpu", "--quiet",
                "--k", "4", "--sink", "1", "--local", "2", "--min-context", "8",
                "--granularity", "kv_group", "--selector", "quest:8", "--dense-layers", "1",
                "--backend", "reference")
    assert r.exit_code == 0, r.output
    assert len(seen) == 1
    t = seen[0]
    assert (t.k, t.k_ratio, t.sink, t.local, t.min_context) == (4, None, 1, 2, 8)
    assert t.granularity == "kv_group" and t.dense_layers == (1,) and t.backend == "reference"
    assert t.selector == QuestSelector(page_size=8) and t.phases == ("decode", "prefill")
    saved = json.loads((out / "train_config.json").read_text())["config"]["topk"]
    assert saved["min_context"] == 8 and saved["granularity"] == "kv_group"
    assert saved["selector"] == "quest:page_size=8"
    assert "Top-k SFT (k=4)" in r.output


def test_k_full_is_dense_sft_without_sparsify(tiny_model_dir, tmp_path, monkeypatch):
    import topkattn.train.sft as sft

    monkeypatch.setattr(sft, "_sparsify", lambda *a: pytest.fail("dense SFT sparsified"))
    r = _invoke("--data", _overfit_data(tmp_path, 4), "--out", str(tmp_path / "run"),
                "--model", tiny_model_dir, "--max-length", "64", "--steps", "1",
                "--warmup-steps", "0", "--save-every", "0", "--device", "cpu", "--quiet")
    assert r.exit_code == 0, r.output
    assert "dense SFT" in r.output


@pytest.mark.parametrize("args,msg", [
    (["--k", "0"], "k must be a positive integer (k >= 1), got k=0"),
    (["--k", "abc"], "got 'abc'"),
    (["--k", "4", "--granularity", "rows"], "granularity must be one of"),
    (["--k", "4", "--min-context", "-1"], "min_context must be an integer >= 0, got "
                                         "min_context=-1"),
    (["--k", "4", "--selector", "bogus"], "unknown selector 'bogus'"),
    (["--k", "4", "--dense-layers", "a"], "--dense-layers must be comma-separated layer "
                                         "indices, got 'a'"),
    (["--k", "4", "--backend", "cuda"], "backend must be one of"),
    (["--k", "full", "--sink", "2"], "sink=2/local=0 need a k"),
])
def test_bad_topk_value_is_one_line(monkeypatch, capsys, tmp_path, args, msg):
    import sys

    import topkattn.cli as cli

    monkeypatch.setattr(sys, "argv", ["topkattn", "train", "--data", "x.jsonl", "--out",
                                      str(tmp_path / "o"), *args])
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.startswith("error: ") and msg in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
