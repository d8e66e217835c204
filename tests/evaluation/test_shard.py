"""Sharded evaluation: disjoint deterministic parts, per-shard JSONL, one merged table equal to
the unsharded run's, resume of an interrupted shard, and the shard taken from torchrun's
environment on the command line."""

import json

import pytest

from topkattn.errors import InputError
from tests.evaluation.decode_counter import count_decodes
from topkattn.evaluation import (EvalConfig, EvalInterrupted, Shard, read_folder, read_results,
                                 report_only, run_eval)


def _cfg(out, lb_file, **kw):
    base = dict(tasks=("passkey", f"longbench_v2:{lb_file}"), lengths=(256,), ks=("full", "4"),
                samples=3, seed=0, max_new_tokens=2, out=out, progress=False)
    base.update(kw)
    return EvalConfig(**base)


def _report(folder):
    """What a run reports, without the parts that name the folder."""
    s = json.loads((folder / "summary.json").read_text())
    return s["cells"], s["breakdowns"], (folder / "table.md").read_text()


def _count_decodes(monkeypatch, fail_after=None):
    return count_decodes(monkeypatch, fail_after)


def test_parse_and_env(monkeypatch):
    assert Shard.parse("1/4") == Shard(1, 4) and Shard(1, 4).results_name == \
        "results.shard-1-of-4.jsonl"
    assert [i for i in range(9) if Shard(1, 4).owns(i)] == [1, 5]
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert Shard.parse("auto") == Shard(0, 1) and Shard().results_name == "results.jsonl"
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "2")
    assert Shard.parse(None) == Shard(2, 3)
    for bad in ("2/2", "x", "1", "-1/2", "0/0"):
        with pytest.raises(InputError, match="shard"):
            Shard.parse(bad)
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(InputError, match="RANK='5' and WORLD_SIZE='3'"):
        Shard.from_env()


def _graded_scores(monkeypatch):
    """A random model answers nothing right; score by the answer's length instead (0, 1/3,
    2/3, 1), so that the compared sums are not all zeros and need exact summation."""
    from topkattn.tasks.base import Task
    from topkattn.tasks.longbench_v2 import LongBenchV2Task

    def score(self, prediction, sample):
        return (len(prediction) % 4) / 3

    monkeypatch.setattr(Task, "score", score)
    monkeypatch.setattr(LongBenchV2Task, "score", score)


def test_two_shards_equal_one(tiny_lm, tokenizer, lb_file, tmp_path, monkeypatch):
    one, two = tmp_path / "one", tmp_path / "two"
    _graded_scores(monkeypatch)
    calls = _count_decodes(monkeypatch)
    s1 = run_eval(tiny_lm, tokenizer, _cfg(one, lb_file))
    n_one = len(calls)
    assert s1.complete and s1.missing == 0 and s1.shard is None
    assert len({r["score"] for r in read_folder(one)}) > 1

    calls.clear()
    a = run_eval(tiny_lm, tokenizer, _cfg(two, lb_file), shard="0/2")
    assert not a.complete and a.missing > 0 and a.shard == "0/2"
    assert not (two / "summary.json").exists()  # no table before every shard is done
    b = run_eval(tiny_lm, tokenizer, _cfg(two, lb_file), shard=Shard(1, 2))
    assert b.complete and b.missing == 0
    assert len(calls) == n_one  # each sample decoded once, by one shard

    # the parts are disjoint, cover everything, and each sits in its own file
    part = [{(r["task"], r["sample_id"]) for r in
             read_results(two / f"results.shard-{i}-of-2.jsonl")} for i in (0, 1)]
    assert part[0] and part[1] and not part[0] & part[1]
    assert part[0] | part[1] == {(r["task"], r["sample_id"]) for r in read_folder(one)}
    assert not (two / "results.jsonl").exists()
    assert _report(two) == _report(one)
    assert b.table() == s1.table()

    # report-only over the shard files gives the same table; an unsharded rerun decodes nothing
    report_only(_cfg(two, lb_file))
    assert _report(two) == _report(one)
    calls.clear()
    run_eval(tiny_lm, tokenizer, _cfg(two, lb_file))
    assert calls == [] and _report(two) == _report(one)


def test_interrupted_shard_resumes(tiny_lm, tokenizer, lb_file, tmp_path, monkeypatch):
    ref, out = tmp_path / "ref", tmp_path / "out"
    run_eval(tiny_lm, tokenizer, _cfg(ref, lb_file))
    run_eval(tiny_lm, tokenizer, _cfg(out, lb_file), shard="0/2")
    _count_decodes(monkeypatch, fail_after=3)
    with pytest.raises(EvalInterrupted, match=r"rerun the same command to resume") as e:
        run_eval(tiny_lm, tokenizer, _cfg(out, lb_file), shard="1/2")
    assert e.value.new == 3 and e.value.path.name == "results.shard-1-of-2.jsonl"
    assert len(read_results(e.value.path)) == 3
    assert not (out / "summary.json").exists()
    calls = _count_decodes(monkeypatch)
    total = len(read_folder(ref))
    mine = total - len(read_results(out / "results.shard-0-of-2.jsonl"))
    s = run_eval(tiny_lm, tokenizer, _cfg(out, lb_file), shard="1/2")
    assert len(calls) == mine - 3  # the 3 finished results are not decoded again
    assert s.complete and len(read_folder(out)) == total
    assert _report(out) == _report(ref)


def test_cli_takes_the_shard_from_torchrun_env(tiny_dir, tmp_path, monkeypatch, capsys):
    from tests.helpers import run_main

    args = ["eval", "--model", str(tiny_dir), "--task", "passkey,kv", "--lengths", "256",
            "--k", "4,full", "--samples", "2", "--max-new-tokens", "2", "--quiet", "--device",
            "cpu"]
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    code, out, err = run_main(monkeypatch, capsys, *args, "--out", str(tmp_path / "one"))
    assert code == 0, err
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in ("1", "0"):
        monkeypatch.setenv("RANK", rank)
        code, out, err = run_main(monkeypatch, capsys, *args, "--out", str(tmp_path / "two"))
        assert code == 0, err
        if rank == "1":
            assert "shard 1/2 done" in out and "--report-only" in out
    assert "passkey" in out and "summary.json" in out  # rank 0 finished last: the table
    assert _report(tmp_path / "two") == _report(tmp_path / "one")
    code, _, err = run_main(monkeypatch, capsys, *args, "--shard", "2/2", "--out",
                            str(tmp_path / "bad"))
    assert code == 2 and "--shard must be i/n" in err and "'2/2'" in err
