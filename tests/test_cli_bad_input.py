"""Bad command-line input, command by command: one line `error: ...` naming the bad value,
exit code 2, and nothing expensive done first (no model is loaded: `load_model` is replaced by
a function that fails the test). In process, through `topkattn.cli.main`."""

import pytest

from tests.helpers import run_main


@pytest.fixture
def no_model(monkeypatch):
    """Any model load fails the test: the checks must come first."""
    import topkattn.models as models

    def fail(*a, **k):
        raise AssertionError("a model was loaded before the bad input was reported")

    monkeypatch.setattr(models, "load_model", fail)


@pytest.fixture
def a_file(tmp_path):
    f = tmp_path / "results.txt"
    f.write_text("not a folder")
    return f


def _cases(a_file):
    f = str(a_file)
    under = str(a_file / "sub")
    return [
        # (argv, text the one-line error must contain)
        (["eval", "--out", f, "--lengths", "1k"], f),
        (["eval", "--out", under, "--lengths", "1k"], f),
        (["eval", "--k", "0", "--out", "OUT"], "0"),
        (["eval", "--k", ",", "--out", "OUT"], ","),
        (["eval", "--selector", "exact:false", "--out", "OUT"], "false"),
        (["eval", "--selector", "precision:0.5,protct=1", "--out", "OUT"], "protct"),
        (["eval", "--granularity", "per_token", "--out", "OUT"], "per_token"),
        (["eval", "--sink", "-1", "--out", "OUT"], "-1"),
        (["eval", "--threads", "0", "--out", "OUT"], "0"),
        (["eval", "--device", "bogus", "--out", "OUT"], "bogus"),
        (["fidelity", "--out", f], f),
        (["fidelity", "--device", "bogus", "--out", "OUT"], "bogus"),
        (["fidelity", "--selector", "precision:0.5,protct=1", "--out", "OUT"], "protct"),
        (["entropy", "--out", f], f),
        (["bench", "--op", "decode", "--out", f], f),
        (["train", "--data", "synthetic:passkey", "--out", f], f),
        (["train", "--data", "synthetic:passkey", "--out", "OUT", "--device", "bogus"], "bogus"),
        (["train", "--data", "synthetic:passkey", "--out", "OUT", "--k", "-3"], "-3"),
        (["train-indexer", "--out", under + ".safetensors"], f),
        (["train-indexer", "--out", str(a_file.parent / "indexer.bin")], "indexer.bin"),
    ]


def test_bad_inputs_are_one_line_before_any_model_is_loaded(monkeypatch, capsys, tmp_path,
                                                            a_file, no_model):
    monkeypatch.chdir(tmp_path)
    for argv, named in _cases(a_file):
        code, out, err = run_main(monkeypatch, capsys, *argv)
        lines = [x for x in err.strip().splitlines() if x.strip()]
        assert code == 2, (argv, code, out, err)
        assert len(lines) == 1 and lines[0].startswith(("error:", "Usage:", "Error")) or \
            "Invalid value" in err, (argv, err)
        assert named in err, (argv, err)


def test_bad_backend_variable_stops_every_command(monkeypatch, capsys):
    monkeypatch.setenv("TOPKATTN_BACKEND", "bogus")
    code, _, err = run_main(monkeypatch, capsys, "info")
    assert code == 2 and "TOPKATTN_BACKEND='bogus'" in err and "reference" in err


def test_info_shows_the_backend_variable(monkeypatch, capsys):
    monkeypatch.setenv("TOPKATTN_BACKEND", "reference")
    code, out, _ = run_main(monkeypatch, capsys, "info")
    assert code == 0 and "TOPKATTN_BACKEND" in out and "reference" in out
