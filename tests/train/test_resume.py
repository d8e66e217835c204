"""`topkattn train` loses and repeats nothing: reruns, Ctrl-C mid-run, crashes, torn logs."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import run_main
from tests.train.test_sft import _cfg, _overfit_data, _weights
from topkattn.train import sft
from topkattn.train.sft import TrainInterrupted, latest_checkpoint, train


def _log(out) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def _run(tiny_model_dir, data, out, **kw):
    base = dict(k="4", max_steps=5, save_every=0, batch_size=2, grad_accum=2)
    base.update(kw)
    return _cfg(tiny_model_dir, data, out, **base)


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, tmp_path_factory):
    """The reference run: 5 steps, never stopped."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    data = _overfit_data(tmp)
    res = train(_run(tiny_model_dir, data, tmp / "run"), progress=False)
    return data, res, _log(tmp / "run"), _weights(tmp / "run")


def _raise_on_call(monkeypatch, n: int):
    """KeyboardInterrupt inside the n-th forward pass (1-based) of the training loop."""
    real, calls = sft._loss_sum, {"n": 0}

    def loss_sum(*a, **kw):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(sft, "_loss_sum", loss_sum)


@pytest.mark.parametrize("where,stopped", [("mid-step", 2), ("after-step", 3)])
def test_ctrl_c_saves_a_checkpoint_and_the_rerun_ends_as_uninterrupted(
        tiny_model_dir, tmp_path, monkeypatch, uninterrupted, where, stopped):
    data, full, full_log, full_w = uninterrupted
    cfg = _run(tiny_model_dir, data, tmp_path / "run")
    if where == "mid-step":
        _raise_on_call(monkeypatch, 6)  # step 3's second micro-batch (2 per step)
        on_step = None
    else:
        def on_step(step, loss):  # between steps: after step 3 finished and was logged
            if step == 3:
                raise KeyboardInterrupt
    with pytest.raises(TrainInterrupted) as e:
        train(cfg, on_step=on_step, progress=False)
    ck = tmp_path / "run" / "checkpoints" / f"step-{stopped}"
    assert str(e.value) == (f"interrupted at step {stopped} of 5; saved checkpoint {ck}; "
                            "rerun the same command to resume")
    assert e.value.step == stopped and latest_checkpoint(tmp_path / "run") == ck
    assert [r["step"] for r in _log(tmp_path / "run")] == list(range(1, stopped + 1))
    monkeypatch.undo()

    res = train(cfg, progress=False)
    assert res.resumed_from == stopped and res.steps == 5
    assert res.losses == pytest.approx(full.losses, rel=1e-6, abs=1e-7)
    log = _log(tmp_path / "run")
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5]  # each step once
    assert [r["loss"] for r in log] == pytest.approx([r["loss"] for r in full_log], rel=1e-6)
    w = _weights(tmp_path / "run")
    for n in full_w:
        torch.testing.assert_close(w[n], full_w[n], rtol=1e-6, atol=1e-7)


def test_crash_resumes_from_the_periodic_checkpoint_with_a_clean_log(
        tiny_model_dir, tmp_path, uninterrupted):
    """A crash (not Ctrl-C: no checkpoint of its own) redoes the steps after the newest
    checkpoint; their old log lines and a torn last line are dropped first."""
    data, full, full_log, _ = uninterrupted
    cfg = _run(tiny_model_dir, data, tmp_path / "run", save_every=2)

    class Crash(Exception):
        pass

    def crash(step, loss):
        if step == 3:
            raise Crash

    with pytest.raises(Crash):
        train(cfg, on_step=crash, progress=False)
    assert latest_checkpoint(tmp_path / "run").name == "step-2"
    with (tmp_path / "run" / "train_log.jsonl").open("a") as f:
        f.write('{"step": 4, "lo')  # a write cut off by the crash
    res = train(cfg, progress=False)
    assert res.resumed_from == 2
    assert res.losses == pytest.approx(full.losses, rel=1e-6, abs=1e-7)
    assert [r["step"] for r in _log(tmp_path / "run")] == [1, 2, 3, 4, 5]


def test_rerun_of_a_finished_run_does_nothing(tiny_model_dir, tmp_path, monkeypatch, capsys):
    data = _overfit_data(tmp_path)
    out = tmp_path / "run"
    args = ["train", "--data", data, "--out", str(out), "--model", tiny_model_dir,
            "--max-length", "64", "--steps", "4", "--warmup-steps", "1", "--save-every", "3",
            "--batch-size", "4", "--device", "cpu", "--quiet", "--k", "4",
            "--backend", "reference"]
    code, stdout, _ = run_main(monkeypatch, capsys, *args)
    assert code == 0, stdout
    log, summary = (out / "train_log.jsonl").read_text(), (out / "train_summary.json").read_text()
    assert [json.loads(l)["step"] for l in log.splitlines()] == [1, 2, 3, 4]
    # the rerun loads no model, trains nothing, writes nothing
    monkeypatch.setattr(sft, "build_model", lambda *a: pytest.fail("model loaded"))
    code, stdout, err = run_main(monkeypatch, capsys, *args)
    assert code == 0, err
    assert f"{out} holds this finished run (4 steps, final loss" in stdout
    assert "nothing to do" in stdout
    assert (out / "train_log.jsonl").read_text() == log
    assert (out / "train_summary.json").read_text() == summary
    # the Python API says the same
    res = train(_cfg(tiny_model_dir, data, out, k="4", max_steps=4, save_every=3,
                     warmup_steps=1, lr=2e-5), progress=False)
    assert res.already_done and res.steps == 4
    assert res.losses == json.loads(summary)["losses"]
    # a finished run of other settings is refused, not extended or overwritten
    longer = list(args)
    longer[longer.index("--steps") + 1] = "6"
    code, _, err = run_main(monkeypatch, capsys, *longer)
    assert code == 2
    assert err.startswith("error: ") and "(a finished run) was written by a different run" in err
    assert "max_steps: 4 -> 6" in err and len(err.strip().splitlines()) == 1


def test_ctrl_c_on_the_command_line_is_one_line(tiny_model_dir, tmp_path, monkeypatch, capsys):
    data = _overfit_data(tmp_path)
    out = tmp_path / "run"
    _raise_on_call(monkeypatch, 2)  # inside step 2 (one micro-batch per step)
    code, _, err = run_main(monkeypatch, capsys, "train", "--data", data, "--out", str(out),
                            "--model", tiny_model_dir, "--max-length", "64", "--steps", "3",
                            "--warmup-steps", "1", "--save-every", "0", "--device", "cpu",
                            "--quiet", "--k", "4", "--backend", "reference")
    assert code == 130
    lines = err.strip().splitlines()  # (transformers' weight-loading bar may come first)
    assert "Traceback" not in err and sum("interrupted" in l for l in lines) == 1
    assert lines[-1] == (f"interrupted at step 1 of 3; saved checkpoint "
                           f"{out / 'checkpoints' / 'step-1'}; rerun the same command to resume")
    assert latest_checkpoint(out).name == "step-1"


def test_a_checkpoint_of_the_older_single_file_format_resumes(
        tiny_model_dir, tmp_path, monkeypatch, uninterrupted):
    """``state.pt`` (rank 0's weights and positional optimizer state, older versions) is still
    read: the run continues on the uninterrupted curve."""
    from topkattn.train.checkpoint import rng_state

    data, full, _, full_w = uninterrupted
    cfg = _run(tiny_model_dir, data, tmp_path / "run", save_every=2)

    def legacy_save(out, step, model, optimizer, scheduler, data_pos, losses, cfg, keep, *,
                    world_size=1, rng=None):
        d = out / "checkpoints" / f"step-{step}"
        d.mkdir(parents=True)
        torch.save({"step": step, "model": {n: p.detach().clone() for n, p in
                                            model.named_parameters() if p.requires_grad},
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": rng or rng_state(), "data_pos": data_pos, "losses": list(losses),
                    "config": cfg.to_dict()}, d / "state.pt")
        (d / "COMPLETE").write_text(str(step))
        return d

    class Crash(Exception):
        pass

    def crash(step, loss):
        if step == 3:
            raise Crash

    monkeypatch.setattr(sft, "save_checkpoint", legacy_save)
    with pytest.raises(Crash):
        train(cfg, on_step=crash, progress=False)
    monkeypatch.undo()
    assert (tmp_path / "run" / "checkpoints" / "step-2" / "state.pt").is_file()
    res = train(cfg, progress=False)
    assert res.resumed_from == 2
    assert res.losses == pytest.approx(full.losses, rel=1e-6, abs=1e-7)
    w = _weights(tmp_path / "run")
    for n in full_w:
        torch.testing.assert_close(w[n], full_w[n], rtol=1e-6, atol=1e-7)
