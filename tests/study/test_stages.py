"""The stage runner: a kill at any stage loses no finished stage; other settings are refused."""

import json

import pytest

from topkattn.errors import InputError
from topkattn.study.stages import Stage, StageRunner, clean

NAMES = ["a", "b", "c", "d"]


class Killed(KeyboardInterrupt):
    pass


def _stages(calls, key="k1"):
    def make(name):
        def run():
            calls.append(name)
            return {"value": f"result of {name}", "nan": float("nan")}
        return run
    return [Stage(n, key, make(n)) for n in NAMES]


@pytest.mark.parametrize("kill_at", range(len(NAMES)))
def test_kill_at_each_stage_then_resume(tmp_path, kill_at):
    calls = []

    def on_start(name):
        if name == NAMES[kill_at]:
            raise Killed

    with pytest.raises(Killed):
        StageRunner(tmp_path, on_start=on_start).run(_stages(calls))
    assert calls == NAMES[:kill_at]
    assert sorted(p.stem for p in (tmp_path / "stages").glob("*.json")) == NAMES[:kill_at]
    calls.clear()
    runner = StageRunner(tmp_path)
    recs = runner.run(_stages(calls))
    assert calls == NAMES[kill_at:]  # only the unfinished stages ran
    assert runner.reused == NAMES[:kill_at] and runner.ran == NAMES[kill_at:]
    assert {n: r["result"]["value"] for n, r in recs.items()} == {
        n: f"result of {n}" for n in NAMES}
    # strict JSON on disk (nan -> null), and a third run reuses everything
    assert json.loads((tmp_path / "stages" / "a.json").read_text())["result"]["nan"] is None
    calls.clear()
    StageRunner(tmp_path).run(_stages(calls))
    assert calls == []


def test_torn_file_is_rerun_and_other_settings_refused(tmp_path):
    calls = []
    StageRunner(tmp_path).run(_stages(calls))
    (tmp_path / "stages" / "c.json").write_text('{"name": "c", "key": "k1", "resu')
    calls.clear()
    StageRunner(tmp_path).run(_stages(calls))
    assert calls == ["c"]
    calls.clear()
    with pytest.raises(InputError, match="other settings") as e:
        StageRunner(tmp_path).run(_stages(calls, key="k2"))
    assert calls == [] and "'a'" in str(e.value)  # refused before any stage ran


def test_clean_makes_strict_json():
    assert clean({"x": (1.0, float("inf")), 2: [float("nan")]}) == {"x": [1.0, None],
                                                                    "2": [None]}


def test_stage_keys_follow_what_each_stage_depends_on(tmp_path):
    from topkattn.study.claims import Models, plan
    from topkattn.study.config import StudyConfig

    def keys(**kw):
        cfg = StudyConfig.build(model="default", out=tmp_path, budget="full", **kw)
        return {s.name: s.key for s in plan(cfg, Models(cfg))}

    base = keys()
    more_seeds = keys(seeds="0,1,2")  # the fine-tunes of seeds 0 and 1 are reused
    assert more_seeds["claim2-train-topk-s1"] == base["claim2-train-topk-s1"]
    assert "claim2-train-dense-s2" in more_seeds and "claim2-train-dense-s2" not in base
    fewer = keys(samples=50)  # evaluations change, training does not
    assert fewer["claim2-train-dense-s0"] == base["claim2-train-dense-s0"]
    assert fewer["claim2-eval-dense-s0"] != base["claim2-eval-dense-s0"]
    assert fewer["claim1-eval"] != base["claim1-eval"]
    steps = keys(steps=10)  # another recipe: new fine-tunes and everything measured on them
    assert steps["claim2-train-dense-s0"] != base["claim2-train-dense-s0"]
    assert steps["claim4-topk-s0"] != base["claim4-topk-s0"]
    assert steps["claim4-base"] == base["claim4-base"] and steps["claim1-eval"] == base[
        "claim1-eval"]
    other_model = keys(seed=3)
    assert all(other_model[n] != base[n] for n in base)
