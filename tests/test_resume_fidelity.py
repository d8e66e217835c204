"""`topkattn fidelity` loses no finished sample and measures none twice: Ctrl-C at several
points, a kill mid-write (a torn last line), a rerun of a finished run, other settings."""

from __future__ import annotations

import json

import pytest

import topkattn.analysis.fidelity as F
from topkattn.analysis.resume import RunInterrupted
from topkattn.config import TopKConfig
from topkattn.errors import InputError

N = 2
_REAL_MEASURE = F._measure_accs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.train.conftest import make_tiny_model_dir
    from topkattn.models import load_model

    d = make_tiny_model_dir(tmp_path_factory.mktemp("tiny-fid-resume"))
    return str(d), *load_model(str(d), device="cpu")


def _cfg(out, **kw):
    base = dict(selectors=("exact", "window"), topk=TopKConfig(k=8), task="passkey",
                length=300, samples=N, steps=2, out=out, progress=False)
    return F.FidelityConfig(**(base | kw))


def _counting(monkeypatch, fail_at=None):
    """Count `_measure_accs` calls (one per sample measured); raise KeyboardInterrupt on call
    ``fail_at`` (1-based)."""
    calls = []
    real = _REAL_MEASURE

    def wrapped(*a, **kw):
        calls.append(1)
        if fail_at is not None and len(calls) == fail_at:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(F, "_measure_accs", wrapped)
    return calls


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
    """An uninterrupted run (fidelity and downstream)."""
    _, m, tok = tiny
    out = tmp_path_factory.mktemp("fid-ref")
    res = F.run_fidelity(m, tok, _cfg(out, downstream=True, sweep=False, max_new_tokens=1))
    assert res.fidelity["exact"]["precision"] == pytest.approx(1.0)  # steps were measured
    return out, res


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.parametrize("fail_at", [1, 2])
def test_ctrl_c_keeps_finished_samples_and_resume_measures_only_the_rest(
        tiny, reference, tmp_path, monkeypatch, fail_at):
    _, m, tok = tiny
    ref_out, ref = reference
    calls = _counting(monkeypatch, fail_at)
    with pytest.raises(RunInterrupted) as e:
        F.run_fidelity(m, tok, _cfg(tmp_path))
    done = fail_at - 1
    assert (e.value.done, e.value.total) == (done, N)
    assert f"stopped after {done} of {N} samples" in str(e.value)
    assert "rerun the same command to resume" in str(e.value)
    rec = tmp_path / F.SAMPLES_FILE
    assert ([r["sample"] for r in _lines(rec)] if rec.exists() else []) == list(range(done))
    assert not (tmp_path / "fidelity.json").exists()  # no summary of part of the run
    calls = _counting(monkeypatch)  # rerun without interruption
    res = F.run_fidelity(m, tok, _cfg(tmp_path))
    assert len(calls) == N - done  # only the missing samples
    assert [r["sample"] for r in _lines(rec)] == list(range(N))
    assert res.fidelity == ref.fidelity  # same numbers as the uninterrupted run


def test_ctrl_c_in_downstream_keeps_fidelity_and_finished_samples(tiny, tmp_path, monkeypatch,
                                                                  reference):
    import topkattn.generation as G

    _, m, tok = tiny
    _, ref = reference
    cfg = _cfg(tmp_path, downstream=True, sweep=False, max_new_tokens=1)
    real = G.decode_branches
    seen = []

    def fail_on_second(*a, **kw):
        seen.append(1)
        if len(seen) == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(G, "decode_branches", fail_on_second)
    with pytest.raises(RunInterrupted) as e:
        F.run_fidelity(m, tok, cfg)
    assert (e.value.what, e.value.done, e.value.total) == ("fidelity --downstream", 1, N)
    assert len(_lines(tmp_path / F.SAMPLES_FILE)) == N
    assert [r["sample"] for r in _lines(tmp_path / F.DOWNSTREAM_FILE)] == [0]
    measured = _counting(monkeypatch)
    seen.clear()
    monkeypatch.setattr(G, "decode_branches", lambda *a, **kw: seen.append(1) or real(*a, **kw))
    res = F.run_fidelity(m, tok, cfg)
    assert measured == [] and len(seen) == N - 1  # nothing measured or decoded twice
    assert [(r.selector, r.accuracy, r.n, r.predictions) for r in res.rows] == [
        (r.selector, r.accuracy, r.n, r.predictions) for r in ref.rows]


def test_a_torn_last_line_is_cut_and_only_that_sample_redone(tiny, tmp_path, monkeypatch,
                                                           reference):
    _, m, tok = tiny
    _, ref = reference
    F.run_fidelity(m, tok, _cfg(tmp_path))
    rec = tmp_path / F.SAMPLES_FILE
    data = rec.read_bytes()
    cut = data.rstrip(b"\n").rfind(b"\n") + 1
    rec.write_bytes(data[: cut + 40])  # a kill in the middle of the last sample's line
    calls = _counting(monkeypatch)
    with pytest.warns(UserWarning, match="torn last line"):
        res = F.run_fidelity(m, tok, _cfg(tmp_path))
    assert len(calls) == 1
    assert [r["sample"] for r in _lines(rec)] == list(range(N))
    assert res.fidelity == ref.fidelity
    calls.clear()
    F.run_fidelity(m, tok, _cfg(tmp_path))  # finished: nothing measured again
    assert calls == [] and len(_lines(rec)) == N


def test_other_settings_are_refused_before_mixing_records(tiny, tmp_path):
    _, m, tok = tiny
    F.run_fidelity(m, tok, _cfg(tmp_path, samples=1))
    with pytest.raises(InputError, match=r"other settings \(samples: 1 there, 2 now\)"):
        F.run_fidelity(m, tok, _cfg(tmp_path, samples=2))


def test_cli_ctrl_c_prints_one_line_and_exits_130(tiny, tmp_path, monkeypatch, capsys):
    from tests.helpers import run_main

    d, _, _ = tiny
    _counting(monkeypatch, fail_at=2)
    args = ["fidelity", "--model", d, "--task", "passkey", "--length", "300", "--samples",
            str(N), "--steps", "2", "--selector", "exact", "--k", "8", "--device", "cpu",
            "--quiet", "--out", str(tmp_path)]
    code, out, err = run_main(monkeypatch, capsys, *args)
    assert code == 130
    lines = [x for x in err.splitlines() if x.startswith("interrupted")]
    assert lines == [f"interrupted: fidelity stopped after 1 of {N} samples; finished work is "
                     f"kept in {tmp_path / F.SAMPLES_FILE}; rerun the same command to resume"]
    assert "Traceback" not in out + err
    calls = _counting(monkeypatch)
    code, out, err = run_main(monkeypatch, capsys, *args)
    assert code == 0 and len(calls) == N - 1, err


def test_sigkill_mid_run_then_resume(tiny, tmp_path, monkeypatch):
    """A real kill (the one subprocess test of this file): ``topkattn fidelity`` in a child
    process is SIGKILLed once its first sample is on disk; the rerun (in process) measures only
    the samples not written, and the file holds each sample once."""
    import os
    import signal
    import subprocess
    import sys
    import time

    d, m, tok = tiny
    n = 4
    rec = tmp_path / F.SAMPLES_FILE
    args = ["fidelity", "--model", d, "--task", "passkey", "--length", "300", "--samples",
            str(n), "--steps", "2", "--selector", "exact,window", "--k", "8", "--device", "cpu",
            "--quiet", "--out", str(tmp_path)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    child = subprocess.Popen([sys.executable, "-c", "import topkattn.cli as c; c.main()", *args],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while not (rec.exists() and rec.read_text().count("\n") >= 1) and child.poll() is None:
        assert time.time() - t0 < 60, "the child wrote no sample in 60 s"
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL  # killed mid-run, not finished
    before = [r["sample"] for r in _lines(rec)] if rec.read_text().endswith("\n") else None
    calls = _counting(monkeypatch)
    res = F.run_fidelity(m, tok, _cfg(tmp_path, samples=n))
    after = [r["sample"] for r in _lines(rec)]
    assert after == list(range(n))  # each sample once, in order
    if before is not None:
        assert len(calls) == n - len(before)
    assert res.fidelity["exact"]["precision"] == pytest.approx(1.0)
