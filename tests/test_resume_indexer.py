"""`topkattn train-indexer` loses no recorded sequence or fitted step and repeats none: Ctrl-C
while recording and while fitting, a kill (the periodic fit checkpoint and a damaged part
file), a rerun of a finished run, other settings."""

from __future__ import annotations

import pytest
import torch

import topkattn.train.indexer as I
from topkattn.analysis.resume import RunInterrupted
from topkattn.errors import InputError

STEPS, SEQS, LAYERS = 6, 2, 2
_REAL_RECORD, _REAL_LOSS = I.record_sequence, I.indexer_loss


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.train.conftest import make_tiny_model_dir
    from topkattn.models import load_model

    d = make_tiny_model_dir(tmp_path_factory.mktemp("tiny-idx"), layers=LAYERS)
    return str(d), *load_model(str(d), device="cpu")


def _cfg(out, **kw):
    base = dict(out=str(out / "idx.safetensors"), tasks=("passkey",), length=300,
                samples=SEQS, rows=8, n_heads=2, head_dim=8, steps=STEPS, checkpoint_every=2)
    return I.IndexerTrainConfig(**(base | kw))


def _counting(monkeypatch, stop_record=None, stop_loss=None, exc=KeyboardInterrupt):
    """Count sequences recorded and per-layer losses computed; raise ``exc`` at call
    ``stop_record`` / ``stop_loss`` (1-based)."""
    calls = {"record": 0, "loss": 0}

    def record(*a, **kw):
        calls["record"] += 1
        if calls["record"] == stop_record:
            raise exc
        return _REAL_RECORD(*a, **kw)

    def loss(*a, **kw):
        calls["loss"] += 1
        if calls["loss"] == stop_loss:
            raise exc
        return _REAL_LOSS(*a, **kw)

    monkeypatch.setattr(I, "record_sequence", record)
    monkeypatch.setattr(I, "indexer_loss", loss)
    return calls


def _weights(path):
    from safetensors.torch import load_file

    return load_file(path)


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
    _, m, tok = tiny
    cfg = _cfg(tmp_path_factory.mktemp("idx-ref"))
    res = I.train_indexer(cfg, m, tok, progress=False)
    return res.losses, _weights(res.out)


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ctrl_c_while_recording_keeps_the_recorded_sequences(tiny, reference, tmp_path,
                                                            monkeypatch):
    _, m, tok = tiny
    _counting(monkeypatch, stop_record=2)
    with pytest.raises(RunInterrupted) as e:
        I.train_indexer(_cfg(tmp_path), m, tok, progress=False)
    parts = tmp_path / "idx.parts"
    assert str(e.value) == (f"interrupted: train-indexer (recording attention) stopped after 1 "
                            f"of {SEQS} sequences; finished work is kept in {parts}; rerun "
                            "the same command to resume")
    assert sorted(p.name for p in parts.glob("record-*")) == ["record-0.pt"]
    calls = _counting(monkeypatch)
    res = I.train_indexer(_cfg(tmp_path), m, tok, progress=False)
    assert calls == {"record": SEQS - 1, "loss": STEPS * LAYERS}
    assert (res.recorded, res.fitted) == (SEQS - 1, STEPS)
    assert res.losses == reference[0] and _same(_weights(res.out), reference[1])
    assert not list(parts.glob("*.pt"))  # the parts are removed once the weights are saved


@pytest.mark.parametrize("stopped", [1, 3])
def test_ctrl_c_while_fitting_resumes_from_that_step(tiny, reference, tmp_path, monkeypatch,
                                                     stopped):
    _, m, tok = tiny
    _counting(monkeypatch, stop_loss=stopped * LAYERS + 1)  # in step stopped + 1
    with pytest.raises(RunInterrupted) as e:
        I.train_indexer(_cfg(tmp_path), m, tok, progress=False)
    assert (e.value.done, e.value.total, e.value.unit) == (stopped, STEPS, "steps")
    fit = torch.load(tmp_path / "idx.parts" / "fit.pt", weights_only=True)
    assert fit["losses"] == reference[0][:stopped]
    calls = _counting(monkeypatch)
    res = I.train_indexer(_cfg(tmp_path), m, tok, progress=False)
    assert calls == {"record": 0, "loss": (STEPS - stopped) * LAYERS}
    assert res.losses == reference[0] and _same(_weights(res.out), reference[1])


def test_a_kill_loses_only_the_steps_since_the_last_checkpoint(tiny, reference, tmp_path,
                                                               monkeypatch):
    """A kill runs no handler: simulated by an exception no ``except KeyboardInterrupt``
    catches, in step 6 (checkpoints at steps 2 and 4), then a damaged record part."""
    _, m, tok = tiny

    class Killed(BaseException):
        pass

    _counting(monkeypatch, stop_loss=5 * LAYERS + 1, exc=Killed)
    with pytest.raises(Killed):
        I.train_indexer(_cfg(tmp_path), m, tok, progress=False)
    parts = tmp_path / "idx.parts"
    assert len(torch.load(parts / "fit.pt", weights_only=True)["losses"]) == 4
    (parts / "record-1.pt").write_bytes((parts / "record-1.pt").read_bytes()[:100])
    calls = _counting(monkeypatch)
    res = I.train_indexer(_cfg(tmp_path), m, tok, progress=False)
    assert calls == {"record": 1, "loss": 2 * LAYERS}  # the damaged part, steps 5 and 6
    assert res.losses == reference[0] and _same(_weights(res.out), reference[1])


def test_a_finished_run_does_nothing_and_other_settings_are_refused(tiny, tmp_path,
                                                                    monkeypatch, capsys):
    from tests.helpers import run_main

    d, m, tok = tiny
    first = I.train_indexer(_cfg(tmp_path), m, tok, progress=False)
    calls = _counting(monkeypatch)
    again = I.train_indexer(_cfg(tmp_path), m, tok, progress=False)
    assert again.finished_before and again.losses == first.losses
    assert calls == {"record": 0, "loss": 0}
    with pytest.raises(InputError, match=r"other settings \(steps: 6 there, 7 now\)"):
        I.train_indexer(_cfg(tmp_path, steps=7), m, tok, progress=False)
    code, out, err = run_main(monkeypatch, capsys, "train-indexer", "--model", d, "--out",
                              str(tmp_path / "idx.safetensors"), "--tasks", "passkey",
                              "--length", "300", "--samples", str(SEQS), "--rows", "8",
                              "--heads", "2", "--head-dim", "8", "--steps", str(STEPS))
    out = " ".join(out.split())
    assert code == 0 and "is finished" in out and "nothing to do" in out, err
    assert calls == {"record": 0, "loss": 0}


def test_cli_ctrl_c_is_one_line_and_exit_130(tiny, tmp_path, monkeypatch, capsys):
    from tests.helpers import run_main

    d, _, _ = tiny
    _counting(monkeypatch, stop_loss=2 * LAYERS + 1)
    args = ["train-indexer", "--model", d, "--out", str(tmp_path / "idx.safetensors"),
            "--tasks", "passkey", "--length", "300", "--samples", str(SEQS), "--rows", "8",
            "--heads", "2", "--head-dim", "8", "--steps", str(STEPS), "--quiet",
            "--device", "cpu"]
    code, out, err = run_main(monkeypatch, capsys, *args)
    assert code == 130 and "Traceback" not in out + err
    assert [x for x in err.splitlines() if x.startswith("interrupted")] == [
        f"interrupted: train-indexer (fitting) stopped after 2 of {STEPS} steps; finished work "
        f"is kept in {tmp_path / 'idx.parts' / 'fit.pt'}; rerun the same command to resume"]
    calls = _counting(monkeypatch)
    code, out, err = run_main(monkeypatch, capsys, *args)
    assert code == 0 and calls == {"record": 0, "loss": (STEPS - 2) * LAYERS}, err
    assert "resumed: 0 sequences recorded, 4 steps fitted now" in " ".join(out.split())
