"""The Ltri benchmark's code path on a tiny CPU model: rows for dense and ltri, ratios, the
scale context, a batch it does not run recorded as a note, JSON + markdown + PNG written."""

import json

from tests.selectors.tiny import tiny_llama
from topkattn.bench.ltri import dense_kv_bytes, run


def test_bench_runs_and_writes_results(tmp_path):
    model = tiny_llama(layers=2)
    res = run([160], [1, 2], tmp_path, budget_tokens=32, gpu_kv_budget="1MiB", scale=(240,),
              recent=16, chunk_size=64, refresh=(1, 4), model=model, device="cpu")
    rows = {(r["ctx"], r["mode"]): r for r in res["rows"]}
    assert rows[(None, "ltri")]["note"] == "Ltri runs batch 1"
    dense, ltri = rows[(160, "dense")], rows[(160, "ltri")]
    assert "note" not in dense and "note" not in ltri, (dense, ltri)
    assert dense["kv_device_gb"] * 1e9 == dense_kv_bytes(model, 160)
    assert ltri["latency_ratio"] > 0 and ltri["kv_ratio"] == ltri["kv_device_gb"] / \
        ltri["dense_kv_gb"]
    assert rows[(240, "ltri")]["step_ms"] > 0 and rows[(160, "ltri-m4")]["moved_per_step"] <= \
        ltri["moved_per_step"]
    assert res["meta"]["largest_ltri_context"]["ctx"] == 240
    data = json.loads((tmp_path / "ltri.json").read_text())
    assert len(data["rows"]) == 5 == len((tmp_path / "ltri.jsonl").read_text().splitlines())
    assert "| 160 | ltri |" in (tmp_path / "ltri.md").read_text()
    assert (tmp_path / "ltri.png").stat().st_size > 0


def test_a_failing_mode_records_a_note(tmp_path):
    # a device budget too small for tier 1: ltri fails before any work, dense still runs
    model = tiny_llama(layers=2)
    res = run([100], [1], tmp_path, budget_tokens=32, gpu_kv_budget=1024, scale=(),
              recent=16, chunk_size=64, refresh=(1,), model=model, device="cpu")
    rows = {r["mode"]: r for r in res["rows"]}
    assert "over gpu_kv_budget" in rows["ltri"]["note"] and rows["dense"]["step_ms"] > 0
