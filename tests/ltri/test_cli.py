"""``topkattn eval --selector ltri`` and ``topkattn fidelity --selector ltri`` on a tiny model
(in process): the runs finish, ltri decodes sparse steps, its spans come from the observed
prefill."""

import json

import pytest


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tests.train.conftest import make_tiny_model_dir

    return str(make_tiny_model_dir(tmp_path_factory.mktemp("tiny-ltri"), layers=3))


def test_eval_with_ltri(model_dir, tmp_path, monkeypatch, capsys):
    import topkattn.generation as G
    from tests.helpers import run_main

    seen = []
    real = G._sparsify
    monkeypatch.setattr(G, "_sparsify", lambda m, c: seen.append(c) or real(m, c))
    out = tmp_path / "ev"
    code, _, err = run_main(monkeypatch, capsys, "eval", "--model", model_dir, "--task",
                            "passkey", "--lengths", "300", "--k", "16", "--samples", "1",
                            "--max-new-tokens", "2", "--quiet", "--device", "cpu",
                            "--selector", "ltri:max_span=16,retrieval_layers=1", "--sink", "2",
                            "--out", str(out))
    assert code == 0, err
    cfg = next(c for c in seen if c is not None and c.k == 16)
    sel = cfg.selector
    assert type(sel).__name__ == "LtriSelector" and sel.config().retrieval_layers == (1,)
    st = sel._live["state"]
    # the prefill was observed inside the ltri branch: every layer holds the prompt's spans
    assert st.index.covered == st.band_seen[1] > 200
    assert all(st.index.represented(layer) == st.index.n_spans for layer in range(3))
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert {r["k"] for r in rows} == {"16", "full"}


def test_fidelity_with_ltri(model_dir, tmp_path):
    from typer.testing import CliRunner

    from topkattn.cli import app

    out = tmp_path / "fid"
    r = CliRunner().invoke(app, [
        "fidelity", "--model", model_dir, "--task", "passkey", "--length", "300",
        "--samples", "1", "--steps", "2", "--selector", "exact,ltri:max_span=16", "--k",
        "24", "--device", "cpu", "--quiet", "--out", str(out), "--backend", "reference"])
    assert r.exit_code == 0, r.output
    fid = json.loads((out / "fidelity.json").read_text())["selectors"]
    assert fid["exact"]["precision"] == pytest.approx(1.0)
    lt = fid["ltri:max_span=16"]
    assert lt["steps"] and 0.0 < lt["precision"] <= 1.0 and 0.0 < lt["mass_recall"] <= 1.0
