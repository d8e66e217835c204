"""scripts/make_suite_fixtures.py: the fixtures read by the tasks, and ``--summarize`` over a
tiny eval run folder (and a tiny lm-eval output folder) that the tests write."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from topkattn.errors import InputError
from topkattn.tasks.longbench_v2 import REQUIRED, LongBenchV2Task
from topkattn.tasks.stats import wilson_interval

_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_suite_fixtures.py"
_SPEC = importlib.util.spec_from_file_location("make_suite_fixtures", _SCRIPT)
msf = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(msf)


def _rows(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _eval_row(task: str, k: str, sid: str, score: float, prediction: str) -> dict:
    return {"task": task, "length": 1024, "k": k, "sample_id": sid, "score": score,
            "prediction": prediction, "answer": "A"}


def test_longbench_records_follow_the_schema_and_buckets():
    recs = msf.longbench_v2_records(12, seed=0)
    assert all(set(REQUIRED) <= set(r) for r in recs)
    assert [r["difficulty"] for r in recs[:2]] == ["easy", "hard"]
    assert {r["length"] for r in recs} == {"short", "medium", "long"}
    for r in recs:  # the right choice is in the context, as the asked project's code
        assert r[f"choice_{r['answer']}"] in r["context"]
    assert recs == msf.longbench_v2_records(12, seed=0)  # seeded


@pytest.fixture()
def runs(tmp_path: Path) -> dict:
    """A LongBench v2 file of 4 records, a 0-shot + CoT eval folder over it (k=64, 128, full;
    the CoT rows in a shard file), a HELMET folder and an lm-eval folder of one k."""
    recs = msf.longbench_v2_records(4, seed=0)  # easy/short, hard/short, easy/medium, hard/medium
    lb = tmp_path / "data.json"
    lb.write_text(json.dumps(recs))
    ids = [r["_id"] for r in recs]
    run = tmp_path / "lb"
    rows = []
    for k, scores in (("full", [1, 1, 0, 1]), ("128", [1, 0, 0, 0]), ("64", [0, 0, 0, 0])):
        rows += [_eval_row("longbench_v2", k, i, s, "A) x" if s else "B) y")
                 for i, s in zip(ids, scores)]
    _rows(run / "results.jsonl", rows)
    _rows(run / "results.shard-0-of-1.jsonl",
          [_eval_row("longbench_v2_cot", "full", ids[0], 1.0, "The correct answer is (A)"),
           _eval_row("longbench_v2_cot", "full", ids[1], 0.0, "I am not sure")])
    helmet = tmp_path / "helmet"
    _rows(helmet / "results.jsonl", [_eval_row("helmet_nq", "64", f"q{i}", float(i < 3), "x")
                                     for i in range(5)])
    lm = tmp_path / "harness" / "k64" / "default"
    lm.mkdir(parents=True)
    stamp = "2026-12-03T19-00-00.000000"
    (lm / f"results_{stamp}.json").write_text(json.dumps(
        {"config": {"model_args": 'pretrained=default,k=64,phases="decode"'}}))
    _rows(lm / f"samples_topk_passkey_{stamp}.jsonl",
          [{"doc_id": i, "exact_match": float(i % 2)} for i in range(6)])
    return {"lb": lb, "run": run, "helmet": helmet, "harness": tmp_path / "harness",
            "out": tmp_path / "summary"}


def test_summarize_cells_breakdown_and_harness(runs):
    res = msf.summarize([runs["run"], runs["helmet"]], runs["lb"], runs["out"],
                        harness=[runs["harness"]])
    cells = {(c["task"], c["k"]): c for c in res["cells"]}
    assert [c["k"] for c in res["cells"] if c["task"] == "longbench_v2"] == ["64", "128", "full"]
    full = cells["longbench_v2", "full"]
    assert (full["n"], full["correct"], full["accuracy"]) == (4, 3, 0.75)
    assert full["ci95"] == list(wilson_interval(3, 4))
    assert cells["longbench_v2_cot", "full"]["n"] == 2  # the shard file is read too
    assert cells["helmet_nq", "64"]["correct"] == 3

    b = res["longbench_v2"]["longbench_v2"]["full"]
    assert b == {**LongBenchV2Task(path=str(runs["lb"])).breakdown(
        [r for r in map(json.loads, (runs["run"] / "results.jsonl").read_text().splitlines())
         if r["k"] == "full"]), "answers": b["answers"]}
    assert b["difficulty"]["easy"]["n"] == 2 and b["difficulty"]["hard"]["correct"] == 2
    assert b["length"]["short"]["n"] == 2 and b["length"]["long"]["n"] == 0
    assert b["answers"] == {"A": 3, "B": 1}  # 0-shot: the answer prefix is put back
    cot = res["longbench_v2"]["longbench_v2_cot"]["full"]
    assert cot["answers"] == {"A": 1, "None": 1}  # CoT: no prefix; no answer is "None"

    assert res["harness"] == [{"task": "passkey", "harness_task": "topk_passkey", "k": "64",
                               "n": 6, "correct": 3.0, "accuracy": 0.5,
                               "ci95": list(wilson_interval(3, 6))}]
    md = (runs["out"] / "summary.md").read_text()
    assert "| longbench_v2 | 1024 | full | 0.75 [" in md and "(3/4) |" in md
    assert "| topk_passkey | 64 | 0.50 [" in md
    assert json.loads((runs["out"] / "summary.json").read_text()) == res


def test_summarize_bad_folders_name_them(tmp_path: Path, runs):
    with pytest.raises(InputError, match="no results"):
        msf.summarize([tmp_path / "nothing"], None, runs["out"])
    with pytest.raises(InputError, match="lm-eval"):
        msf.summarize([runs["helmet"]], None, runs["out"], harness=[tmp_path / "nothing"])
    with pytest.raises(SystemExit, match="error: .*nothing"):
        msf.main([str(runs["out"]), "--summarize", str(tmp_path / "nothing")])
