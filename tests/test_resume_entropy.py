"""`topkattn entropy` loses no finished prompt and measures none twice: Ctrl-C in the first
and in the compared model, a kill mid-write (a torn last line), a rerun of a finished run."""

from __future__ import annotations

import json

import pytest

import topkattn.analysis.entropy as E
from topkattn.analysis.resume import RunInterrupted
from topkattn.errors import InputError

N = 2
_REAL = E._measure_sample


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    from tests.train.conftest import make_tiny_model_dir

    return (str(make_tiny_model_dir(tmp_path_factory.mktemp("ent-a"), seed=0)),
            str(make_tiny_model_dir(tmp_path_factory.mktemp("ent-b"), seed=1)))


def _cfgs(dirs, **kw):
    base = dict(task="passkey", length=300, samples=N, decode_steps=2, ks=("4",),
                device="cpu") | kw
    return (E.EntropyConfig(model=dirs[0], label="a", **base),
            E.EntropyConfig(model=dirs[1], label="b", **base))


def _counting(monkeypatch, fail_at=None):
    """Count prompts measured (`_measure_sample` calls) and model loads; Ctrl-C on measured
    prompt ``fail_at`` (1-based)."""
    import topkattn.models as M

    calls = {"measured": 0, "loaded": 0}
    real_load = M.load_model

    def measure(*a, **kw):
        calls["measured"] += 1
        if calls["measured"] == fail_at:
            raise KeyboardInterrupt
        return _REAL(*a, **kw)

    def load(*a, **kw):
        calls["loaded"] += 1
        return real_load(*a, **kw)

    monkeypatch.setattr(E, "_measure_sample", measure)
    monkeypatch.setattr(M, "load_model", load)
    return calls


@pytest.fixture(scope="module")
def reference(model_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("ent-ref")
    return E.run_entropy(*_cfgs(model_dirs), out=out, progress=False)


def _records(out):
    return [(r["run"], r["sample"]) for r in
            map(json.loads, (out / E.SAMPLES_FILE).read_text().splitlines())]


@pytest.mark.parametrize("fail_at,done", [(2, [(0, 0)]), (4, [(0, 0), (0, 1), (1, 0)])])
def test_ctrl_c_then_resume_measures_only_the_missing_prompts(model_dirs, reference, tmp_path,
                                                             monkeypatch, fail_at, done):
    calls = _counting(monkeypatch, fail_at)
    with pytest.raises(RunInterrupted) as e:
        E.run_entropy(*_cfgs(model_dirs), out=tmp_path, progress=False)
    label = "a" if fail_at <= N else "b"
    assert str(e.value).startswith(f"interrupted: entropy of {label} stopped after "
                                   f"{len(done) - (N if label == 'b' else 0)} of {N} samples")
    assert _records(tmp_path) == done
    assert not (tmp_path / "entropy.json").exists()
    calls = _counting(monkeypatch)
    res = E.run_entropy(*_cfgs(model_dirs), out=tmp_path, progress=False)
    assert calls["measured"] == 2 * N - len(done)
    assert calls["loaded"] == (1 if label == "b" else 2)  # a finished model is not loaded
    assert sorted(_records(tmp_path)) == [(r, i) for r in (0, 1) for i in range(N)]
    assert res == reference
    assert json.loads((tmp_path / "entropy.json").read_text()) == json.loads(
        json.dumps(reference))


def test_torn_last_line_is_cut_and_a_finished_run_is_not_measured_again(
        model_dirs, reference, tmp_path, monkeypatch):
    E.run_entropy(*_cfgs(model_dirs), out=tmp_path, progress=False)
    rec = tmp_path / E.SAMPLES_FILE
    data = rec.read_bytes()
    rec.write_bytes(data[: data.rstrip(b"\n").rfind(b"\n") + 25])  # killed mid-write
    calls = _counting(monkeypatch)
    with pytest.warns(UserWarning, match="torn last line"):
        res = E.run_entropy(*_cfgs(model_dirs), out=tmp_path, progress=False)
    assert calls == {"measured": 1, "loaded": 1} and res == reference
    calls = _counting(monkeypatch)
    assert E.run_entropy(*_cfgs(model_dirs), out=tmp_path, progress=False) == reference
    assert calls == {"measured": 0, "loaded": 0}
    assert len(_records(tmp_path)) == 2 * N


def test_other_settings_are_refused(model_dirs, tmp_path):
    E.run_entropy(_cfgs(model_dirs)[0], out=tmp_path, progress=False)
    with pytest.raises(InputError, match="holds an entropy run with other settings"):
        E.run_entropy(_cfgs(model_dirs, decode_steps=3)[0], out=tmp_path, progress=False)


def test_cli_ctrl_c_is_one_line_and_exit_130(model_dirs, tmp_path, monkeypatch, capsys):
    from tests.helpers import run_main

    _counting(monkeypatch, fail_at=2)
    args = ["entropy", "--model", model_dirs[0], "--task", "passkey", "--length", "300",
            "--samples", str(N), "--steps", "2", "--k", "4", "--device", "cpu", "--out",
            str(tmp_path)]
    code, out, err = run_main(monkeypatch, capsys, *args)
    assert code == 130 and "Traceback" not in out + err
    assert [x for x in err.splitlines() if x.startswith("interrupted")] == [
        f"interrupted: entropy of {model_dirs[0]} stopped after 1 of {N} samples; finished "
        f"work is kept in {tmp_path / E.SAMPLES_FILE}; rerun the same command to resume"]
    calls = _counting(monkeypatch)
    code, out, err = run_main(monkeypatch, capsys, *args)
    assert code == 0 and calls["measured"] == N - 1, err
    assert (tmp_path / "entropy.md").exists()
