"""summary.json's ``breakdowns``: a LongBench v2 run reports accuracy by difficulty and length
bucket (with counts and intervals) per (task, length, k); synthetic tasks add none."""

import json

from topkattn.evaluation.report import breakdowns


def test_longbench_v2_rows_get_their_breakdown(tmp_path):
    f = tmp_path / "lb.json"
    recs = [{"_id": f"q{i}", "domain": "d", "sub_domain": "s",
             "difficulty": "easy" if i % 2 else "hard", "length": ["short", "medium", "long"][i % 3],
             "question": "Q?", "choice_A": "a", "choice_B": "b", "choice_C": "c", "choice_D": "d",
             "answer": "A", "context": "text " * 20} for i in range(6)]
    f.write_text(json.dumps(recs))
    rows = [{"task": f"longbench_v2:{f}", "length": 1024, "k": k, "sample_id": r["_id"],
             "score": float(i % 2 if k == "full" else 0)} for k in ("full", "8")
            for i, r in enumerate(recs)]
    rows.append({"task": "passkey", "length": 1024, "k": "full", "sample_id": "x", "score": 1.0})
    out = breakdowns(rows)
    assert [(b["task"].split(":")[0], b["length"], b["k"]) for b in out] == [
        ("longbench_v2", 1024, "full"), ("longbench_v2", 1024, "8")]
    full = out[0]["breakdown"]
    assert full["overall"]["n"] == 6 and full["overall"]["accuracy"] == 0.5
    assert full["difficulty"]["easy"]["accuracy"] == 1.0 and full["difficulty"]["hard"]["n"] == 3
    assert full["length"]["medium"]["n"] == 2
    lo, hi = full["overall"]["ci95"]
    assert 0 < lo < 0.5 < hi < 1
    assert out[1]["breakdown"]["overall"]["accuracy"] == 0.0
