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
