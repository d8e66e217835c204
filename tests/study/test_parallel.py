"""Several processes sharing one study folder: ``--stages`` picks what each runs, ``--shard i/n``
splits the evaluations' samples; the shard that completes a stage writes it, and the merged
results equal those of one process."""

import json

import pytest

from tests.helpers import run_main
from tests.study.test_study_e2e import SMALL, model_dir  # noqa: F401  (fixture)
from topkattn.errors import InputError
from topkattn.study.claims import Models, plan
from topkattn.study.config import StudyConfig
from topkattn.study.runner import run_study, select_stages


def _cfg(model_dir, out, samples=3, **kw):
    return StudyConfig.build(model=str(model_dir), out=out, budget="quick", max_new_tokens=2,
                             device="cpu", progress=False, samples=samples, **kw)


def _result(out, name):
    return json.loads((out / "stages" / f"{name}.json").read_text())["result"]


def test_shards_complete_a_stage_together_and_match_one_process(tmp_path, model_dir):  # noqa: F811
    one = tmp_path / "one"
    run_study(_cfg(model_dir, one, claims="1,3"))
    shared = tmp_path / "shared"
    first = run_study(_cfg(model_dir, shared, claims="1,3", shard="0/2"))
    # shard 0 did its part: nothing is finished, every stage waits on shard 1
    assert first.ran == [] and set(first.pending) == {"claim1-eval", "claim3-L256", "claim3-L512"}
    assert not (shared / "stages").exists() or not list((shared / "stages").glob("*.json"))
    assert all(v.outcome == "inconclusive" for v in first.verdicts if v.claim in (1, 3))
    c3 = sorted(p.name for p in (shared / "claim3").iterdir())
    assert c3 == ["samples-256.shard-0-of-2.jsonl", "samples-512.shard-0-of-2.jsonl"]
    assert len((shared / "claim3" / c3[0]).read_text().splitlines()) == 2  # samples 0 and 2
    second = run_study(_cfg(model_dir, shared, claims="1,3", shard="1/2"))
    assert second.pending == [] and set(second.ran) == {"claim1-eval", "claim3-L256",
                                                        "claim3-L512"}
    a, b = _result(one, "claim1-eval"), _result(shared, "claim1-eval")
    assert sorted(a["rows"]) == sorted(b["rows"]) and len(a["rows"]) == 2 * 2 * 3 * 6
    for L in (256, 512):
        sa, sb = _result(one, f"claim3-L{L}"), _result(shared, f"claim3-L{L}")
        assert [s["sample_id"] for s in sa["samples"]] == [s["sample_id"] for s in sb["samples"]]
        assert [s["scores"] for s in sa["samples"]] == [s["scores"] for s in sb["samples"]]
    # the merged study decides as the single process did
    again = run_study(_cfg(model_dir, shared, claims="1,3"))
    assert again.ran == [] and [v.outcome for v in again.verdicts] == [
        v.outcome for v in run_study(_cfg(model_dir, one, claims="1,3")).verdicts]


def test_stages_select_what_runs_and_the_rest_stays_pending(tmp_path, model_dir):  # noqa: F811
    out = tmp_path / "s"
    cfg = _cfg(model_dir, out, claims="2", steps=1, samples=1)
    res = run_study(cfg, stages="claim2-train-dense-s0,claim2-eval-dense-s0")
    assert res.ran == ["claim2-train-dense-s0", "claim2-eval-dense-s0"]
    assert "claim2-eval-base" in res.pending and "claim2-train-topk-s1" in res.pending
    # a second process: the base model's evaluation, reusing nothing it did not ask for
    res = run_study(cfg, stages="claim2-eval-base")
    assert res.ran == ["claim2-eval-base"]
    assert set(res.reused) == {"claim2-train-dense-s0", "claim2-eval-dense-s0"}
    assert (out / "study.md").exists()  # a report of what is finished so far


def test_bad_selections_are_refused_before_any_work(tmp_path, model_dir):  # noqa: F811
    cfg = _cfg(model_dir, tmp_path / "s", claims="2,4", steps=1, samples=1)
    stages = plan(cfg, Models(cfg))
    with pytest.raises(InputError, match="matches no stage"):
        select_stages(stages, "claim9-*")
    with pytest.raises(InputError, match="needs the fine-tune of stage 'claim2-train-topk-s1'"):
        select_stages(stages, "claim2-eval-topk-s1")
    assert select_stages(stages, "*-topk-s1") == {"claim2-train-topk-s1", "claim2-eval-topk-s1",
                                                  "claim4-topk-s1"}
    sharded = _cfg(model_dir, tmp_path / "s", claims="2,4", steps=1, samples=1, shard="1/3")
    with pytest.raises(InputError, match="cannot be split"):
        select_stages(stages, "claim2-train-dense-s0", sharded.shard)
    assert select_stages(stages, "claim*-base", sharded.shard) == {"claim2-eval-base",
                                                                   "claim4-base"}
    with pytest.raises(InputError, match="cannot be split"):  # the whole plan, sharded
        run_study(sharded)
    assert not (tmp_path / "s").exists() or not list((tmp_path / "s").rglob("*.json"))


@pytest.mark.parametrize("args,msg", [
    (["--stages", "nope"], "'nope' matches no stage"),
    (["--stages", ","], "names no stage"),
    (["--shard", "2/2"], "0 <= i < n"),
    (["--shard", "x"], "--shard must be i/n"),
    (["--shard", "0/2", "--claims", "4"], "cannot be split"),
])
def test_bad_stage_options_are_one_line(monkeypatch, capsys, tmp_path, model_dir, args,  # noqa: F811
                                        msg):
    code, _, err = run_main(monkeypatch, capsys, "study", "--model", str(model_dir), "--out",
                            str(tmp_path / "o"), "--quiet", *SMALL, *args)
    assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, err


def test_cli_names_the_pending_stages(monkeypatch, capsys, tmp_path, model_dir):  # noqa: F811
    code, out, err = run_main(monkeypatch, capsys, "study", "--model", str(model_dir), "--out",
                              str(tmp_path / "o"), *SMALL, "--claims", "1", "--samples", "2",
                              "--shard", "0/2")
    assert code == 0, err
    text = " ".join(out.split())  # rich wraps long lines
    assert "waiting on other shards" in text and "pending stages" in text
    assert "claim1-eval" in text


def test_claim4_shards_and_resumes_per_prompt(tmp_path, model_dir):  # noqa: F811
    one, shared = tmp_path / "one", tmp_path / "shared"
    run_study(_cfg(model_dir, one, claims="4"), stages="claim4-base")
    res = run_study(_cfg(model_dir, shared, claims="4", shard="1/2"), stages="claim4-base")
    assert res.pending[0] == "claim4-base"
    lines = (shared / "claim4" / "base.shard-1-of-2.jsonl").read_text().splitlines()
    assert [json.loads(x)["sample_id"] for x in lines] == [
        r["sample_id"] for r in _result(one, "claim4-base")["prompts"]][1::2]
    run_study(_cfg(model_dir, shared, claims="4", shard="0/2"), stages="claim4-base")
    assert _result(shared, "claim4-base") == _result(one, "claim4-base")


def test_per_sample_keeps_finished_lines_after_a_kill(tmp_path):
    from types import SimpleNamespace

    from topkattn.study.claims import per_sample
    from topkattn.study.stages import StageIncomplete

    samples = [SimpleNamespace(id=f"s{i}") for i in range(5)]
    calls = []

    def work(s):
        if len(calls) == 2 and "kill" in calls:
            raise KeyboardInterrupt
        calls.append(s.id)
        return {"sample_id": s.id, "v": int(s.id[1:])}

    cfg = StudyConfig.build(out=tmp_path, budget="quick", progress=False)
    calls.append("kill")
    with pytest.raises(KeyboardInterrupt):
        per_sample(cfg, tmp_path / "c", "x", samples, work, "test")
    assert len((tmp_path / "c" / "x.jsonl").read_text().splitlines()) == 1
    calls.clear()
    assert [r["v"] for r in per_sample(cfg, tmp_path / "c", "x", samples, work, "t")] == [
        0, 1, 2, 3, 4]
    assert calls == ["s1", "s2", "s3", "s4"]  # s0 was kept
    # a shard that finishes first waits on the others; the union completes the stage
    part = StudyConfig.build(out=tmp_path, budget="quick", progress=False, shard="0/2")
    with pytest.raises(StageIncomplete, match="2 samples of other shards"):
        per_sample(part, tmp_path / "d", "x", samples, work, "t")
    other = StudyConfig.build(out=tmp_path, budget="quick", progress=False, shard="1/2")
    assert len(per_sample(other, tmp_path / "d", "x", samples, work, "t")) == 5


def test_report_marks_partial_claims_and_names_where_stages_ran(tmp_path, model_dir):  # noqa: F811
    out = tmp_path / "p"
    res = run_study(_cfg(model_dir, out, claims="1,3"), stages="claim3-L256")
    v3 = res.verdicts[2]
    assert "provisional: claim3-L512 not finished yet" in v3.reason
    assert "have not finished" in res.verdicts[0].reason  # claim 1 has nothing yet
    md = (out / "study.md").read_text()
    assert "Pending stages (not finished, left out of every analysis): claim1-eval, " \
           "claim3-L512" in md
    rec = json.loads((out / "stages" / "claim3-L256.json").read_text())
    assert rec["device"].startswith("CPU") and "commit" in rec
    assert "stages run on CPU" in md
    study = json.loads((out / "study.json").read_text())
    assert study["stages"]["claim3-L256"]["device"] == rec["device"]
