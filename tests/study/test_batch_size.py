"""The study's ``--batch-size``: passed to the claim 1 and 2 evaluations (8 on CUDA, 1 on a CPU
when not given), in no stage key (results do not depend on it), validated as one line."""

import pytest
import torch

from tests.helpers import run_main
from topkattn.study import claims as C
from topkattn.study.config import EVAL_BATCH_CUDA, StudyConfig


def test_default_and_override(tmp_path):
    auto = StudyConfig.build(out=tmp_path, budget="full")
    assert auto.batch_size is None
    assert auto.eval_batch_size(torch.device("cuda", 0)) == EVAL_BATCH_CUDA == 8
    assert auto.eval_batch_size(torch.device("cpu")) == 1
    four = StudyConfig.build(out=tmp_path, budget="full", batch_size=4)
    assert four.eval_batch_size(torch.device("cuda")) == four.eval_batch_size("cpu") == 4
    keys = {s.name: s.key for s in C.plan(auto, C.Models(auto))}
    assert keys == {s.name: s.key for s in C.plan(four, C.Models(four))}


def test_evaluations_get_the_batch_size(tmp_path, monkeypatch):
    import topkattn.evaluation as E

    seen = []

    def fake_run_eval(model, tok, ecfg, shard=None):
        seen.append(ecfg)
        return E.Summary(config=ecfg, cells=[], out=tmp_path, complete=True)

    monkeypatch.setattr(E, "run_eval", fake_run_eval)
    cfg = StudyConfig.build(out=tmp_path, budget="quick", batch_size=3)
    models = C.Models(cfg)
    monkeypatch.setattr(models, "get", lambda name: (torch.nn.Linear(1, 1), None))
    C.run_claim1(cfg, models)
    assert seen[0].batch_size == 3


def test_bad_batch_size_is_one_line(monkeypatch, capsys, tmp_path):
    code, _, err = run_main(monkeypatch, capsys, "study", "--out", str(tmp_path / "o"),
                            "--batch-size", "0")
    assert code == 2 and err.startswith("error: ")
    assert "--batch-size must be an integer >= 1, got 0" in err
    assert len(err.strip().splitlines()) == 1
