"""Decision rules on synthetic stage result files whose answer is known."""

import random
from dataclasses import replace

import pytest

from topkattn.study.claims import plan, Models
from topkattn.study.config import StudyConfig
from topkattn.study.runner import report_only
from topkattn.study.stages import write_json_atomic
from topkattn.study.verdict import (CONFIRMED, INCONCLUSIVE, NOT_CONFIRMED, NOT_RUN,
                                    noninferiority, superiority)


def _cfg(tmp_path, claims="1,2,3,4", samples=100):
    cfg = StudyConfig.build(model="default", out=tmp_path, claims=claims, budget="full",
                            samples=samples, seeds="0,1", progress=False)
    # fewer resamples keep the test fast; the rules are not part of a stage's key
    return replace(cfg, budget=replace(cfg.budget, rules=replace(cfg.budget.rules, n_boot=400)))


def _write(cfg, name, result):
    """A finished stage file as the runner writes it (the key of the planned stage)."""
    key = next(s.key for s in plan(cfg, Models(cfg)) if s.name == name)
    write_json_atomic(cfg.out / "stages" / f"{name}.json",
                      {"name": name, "key": key, "seconds": 1.0, "result": result})


def _bernoulli(rng, p, n):
    return [1.0 if rng.random() < p else 0.0 for _ in range(n)]


def _claim1_rows(cfg, drop_by_k, n, full_p=0.8, seed=0):
    """Rows of claim 1: full correct with prob full_p; Top-k at k loses a share drop_by_k[k]
    of the samples full got right (and gains none)."""
    rng = random.Random(seed)
    rows = []
    for task in ("passkey", "niah_multikey"):
        for L in (2048, 4096):
            for i in range(n):
                full = 1.0 if rng.random() < full_p else 0.0
                rows.append([task, L, f"{task}-{L}-{i}", "full", full])
                for k, drop in drop_by_k.items():
                    lost = full == 1.0 and rng.random() < drop
                    rows.append([task, L, f"{task}-{L}-{i}", k, 0.0 if lost else full])
    return {"model": "base", "ks": ["full"] + list(drop_by_k), "rows": rows}


def test_interval_rules():
    assert superiority([0.01, 0.2], 0.05) == CONFIRMED
    assert superiority([-0.1, 0.04], 0.05) == NOT_CONFIRMED
    assert superiority([-0.1, 0.2], 0.05) == INCONCLUSIVE
    assert superiority([float("nan"), 0.2], 0.05) == INCONCLUSIVE
    assert noninferiority([-0.04, 0.02], 0.05) == "close"
    assert noninferiority([-0.3, -0.06], 0.05) == "worse"
    assert noninferiority([-0.08, 0.0], 0.05) == "undecided"


def test_claim1_confirmed_at_10_percent_only(tmp_path):
    cfg = _cfg(tmp_path, claims="1")
    _write(cfg, "claim1-eval", _claim1_rows(cfg, {"1%": 0.6, "2%": 0.4, "5%": 0.25, "10%": 0.0,
                                                  "64": 0.1}, n=100))
    res = report_only(cfg)
    v = res.verdicts[0]
    assert v.outcome == CONFIRMED, v.reason
    assert v.statistic["smallest_close_rho"] == pytest.approx(0.10)
    assert v.statistic["status"]["1%"] == "worse" and v.statistic["status"]["10%"] == "close"
    assert [x.outcome for x in res.verdicts[1:]] == [NOT_RUN] * 3
    pooled = res.analyses[1]["pooled"]["1%"]
    assert pooled["n"] == 400 and pooled["cells"] == 4 and pooled["diff"] < -0.4
    assert pooled["mcnemar"]["a_only"] == 0 and pooled["mcnemar"]["p_exact"] < 1e-9
    assert (tmp_path / "study.md").read_text().count("**confirmed**") >= 1
    assert (tmp_path / "claim1.png").stat().st_size > 0


def test_claim1_not_confirmed_and_inconclusive(tmp_path):
    cfg = _cfg(tmp_path / "a", claims="1")
    _write(cfg, "claim1-eval", _claim1_rows(cfg, {"1%": 0.5, "2%": 0.5, "5%": 0.4, "10%": 0.3,
                                                  "64": 0.3}, n=100))
    assert report_only(cfg).verdicts[0].outcome == NOT_CONFIRMED
    # the model cannot do the tasks: no informative cell
    cfg = _cfg(tmp_path / "b", claims="1")
    _write(cfg, "claim1-eval", _claim1_rows(cfg, {"1%": 0.0, "2%": 0.0, "5%": 0.0, "10%": 0.0,
                                                  "64": 0.0}, n=100, full_p=0.05))
    v = report_only(cfg).verdicts[0]
    assert v.outcome == INCONCLUSIVE and "no informative cell" in v.reason
    # identical answers, but 3 samples per cell: too few to decide
    cfg = _cfg(tmp_path / "c", claims="1", samples=3)
    _write(cfg, "claim1-eval", _claim1_rows(cfg, {"1%": 0.0, "2%": 0.0, "5%": 0.0, "10%": 0.0,
                                                  "64": 0.0}, n=3, full_p=1.0))
    v = report_only(cfg).verdicts[0]
    assert v.outcome == INCONCLUSIVE and "min_n" in v.reason


def _claim2_files(cfg, p_dense, p_topk, n=100, p_full=0.9, seed=0):
    rng = random.Random(seed)
    ks = ["full", "1%", "2%"]
    for name in ["base"] + [f"{a}-s{s}" for s in (0, 1) for a in ("dense", "topk")]:
        p = {"base": 0.3, "dense": p_dense, "topk": p_topk}[name.split("-")[0]]
        rows = []
        for L in (2048, 4096):
            for i in range(n):
                sid = f"niah_multikey-{L}-{i}"
                rows.append(["niah_multikey", L, sid, "full", 1.0 if rng.random() < p_full
                             else 0.0])
                for k in ks[1:]:
                    rows.append(["niah_multikey", L, sid, k, 1.0 if rng.random() < p else 0.0])
        _write(cfg, f"claim2-eval-{name}", {"model": name, "ks": ks, "rows": rows})
        if name != "base":
            _write(cfg, f"claim2-train-{name}", {"steps": 30, "first_loss": 3.0,
                                                 "final_loss": 0.5, "seconds": 10})


def test_claim2_outcomes(tmp_path):
    cfg = _cfg(tmp_path / "a", claims="2")
    _claim2_files(cfg, p_dense=0.4, p_topk=0.7)
    v = report_only(cfg).verdicts[1]
    assert v.outcome == CONFIRMED, v.reason
    assert v.statistic["diff"] == pytest.approx(0.3, abs=0.08)
    cfg = _cfg(tmp_path / "b", claims="2")
    _claim2_files(cfg, p_dense=0.6, p_topk=0.45)
    assert report_only(cfg).verdicts[1].outcome == NOT_CONFIRMED
    cfg = _cfg(tmp_path / "c", claims="2")
    _claim2_files(cfg, p_dense=1.0, p_topk=1.0)  # both saturated: no gain could show
    v = report_only(cfg).verdicts[1]
    assert v.outcome == INCONCLUSIVE and "saturated" in v.reason
    cfg = _cfg(tmp_path / "d", claims="2")
    _claim2_files(cfg, p_dense=0.0, p_topk=0.0)  # both at the floor
    v = report_only(cfg).verdicts[1]
    assert v.outcome == INCONCLUSIVE and "floor" in v.reason
    a = report_only(cfg).analyses[2]
    assert a["seeds"] == [0, 1] and a["base_cost"]["1%"]["diff"] > 0.5


def _claim3_files(cfg, acc_of_precision, n=60, seed=0):
    rng = random.Random(seed)
    specs = ["exact", "quest", "precision:0.2", "precision:0.6", "precision:0.2,protect=1",
             "precision:0.6,protect=1", "random"]
    prec = {"exact": 1.0, "quest": 0.7, "precision:0.2": 0.2, "precision:0.6": 0.6,
            "precision:0.2,protect=1": 0.25, "precision:0.6,protect=1": 0.62, "random": 0.05}
    for L in (2048, 4096):
        samples = []
        for i in range(n):
            fid = {s: {"precision": prec[s] + rng.uniform(-0.02, 0.02),
                       "mass_recall": 0.5 * prec[s] + 0.3, "out_err": 1 - prec[s]}
                   for s in specs}
            scores = {s: 1.0 if rng.random() < acc_of_precision(prec[s]) else 0.0
                      for s in specs}
            scores["full"] = 1.0
            samples.append({"sample_id": f"s{i}", "length": L, "fidelity": fid,
                            "scores": scores})
        _write(cfg, f"claim3-L{L}", {"length": L, "task": "niah_multikey", "rho": 0.03,
                                     "specs": specs, "samples": samples})


def test_claim3_outcomes(tmp_path):
    cfg = _cfg(tmp_path / "a", claims="3")
    _claim3_files(cfg, lambda p: 0.05 + 0.9 * p)
    res = report_only(cfg)
    v = res.verdicts[2]
    assert v.outcome == CONFIRMED, v.reason
    assert v.statistic["spearman"] > 0.8 and v.statistic["ci"][0] > 0
    corr = res.analyses[3]["correlation"]
    assert corr["pearson_mass_recall"]["value"] > 0.8
    cfg = _cfg(tmp_path / "b", claims="3")
    _claim3_files(cfg, lambda p: 0.95 - 0.9 * p)  # accuracy falls with precision
    assert report_only(cfg).verdicts[2].outcome == NOT_CONFIRMED


def _claim4_files(cfg, drop, noise=0.05, prompts=30, steps=4, layers=3, seed=0):
    rng = random.Random(seed)
    base = [[2.0 + 0.1 * layer + rng.gauss(0, noise) for layer in range(layers)]
            for _ in range(prompts * steps)]
    for name in ["base"] + [f"{a}-s{s}" for s in (0, 1) for a in ("dense", "topk")]:
        shift = {"base": 0.2, "dense": 0.0, "topk": -drop}[name.split("-")[0]]
        ps = []
        for p in range(prompts):
            st = []
            for j in range(steps):
                ent = [v + shift + rng.gauss(0, noise) for v in base[p * steps + j]]
                st.append({"entropy": ent, "topk_entropy": {"1%": [e / 2 for e in ent],
                                                            "64": [e / 3 for e in ent]},
                           "mass": {"1%": [0.8] * layers, "64": [0.9] * layers}})
            ps.append({"sample_id": f"p{p}", "steps": st})
        _write(cfg, f"claim4-{name}", {"model": name, "ks": ["1%", "64"], "prompts": ps})


def test_claim4_outcomes(tmp_path):
    cfg = _cfg(tmp_path / "a", claims="4")
    _claim4_files(cfg, drop=0.1)
    res = report_only(cfg)
    v = res.verdicts[3]
    assert v.outcome == CONFIRMED, v.reason
    assert v.statistic["diff"] == pytest.approx(0.1, abs=0.02)
    a = res.analyses[4]
    assert a["groups"]["base"]["mean"] > a["groups"]["dense_sft"]["mean"]
    assert len(a["groups"]["topk_sft"]["per_layer"]) == 3
    assert a["primary"]["p_wilcoxon"] < 1e-3
    cfg = _cfg(tmp_path / "b", claims="4")
    _claim4_files(cfg, drop=0.0, noise=0.001)  # no drop, measured precisely
    assert report_only(cfg).verdicts[3].outcome == NOT_CONFIRMED
    cfg = _cfg(tmp_path / "c", claims="4")
    _claim4_files(cfg, drop=0.0, noise=0.5)  # no drop, measured noisily
    assert report_only(cfg).verdicts[3].outcome == INCONCLUSIVE


_CLAIM1_PROGRAM = """
import json, sys
from topkattn.study.claims import analyze_claim1
from topkattn.study.config import Rules
result = json.load(open(sys.argv[1]))
out = analyze_claim1(result, Rules(n_boot=300), seed=0)
print(json.dumps(out["pooled"], sort_keys=True))
"""


def test_claim1_intervals_do_not_depend_on_the_string_hash_seed(tmp_path):
    """The pooled bootstrap draws follow the order of the samples: two processes with other
    hash seeds (so other set orders of the (task, length) cells) give the same intervals."""
    import json
    import os
    import subprocess
    import sys

    cfg = _cfg(tmp_path, claims="1", samples=30)
    path = tmp_path / "claim1.json"
    path.write_text(json.dumps(_claim1_rows(cfg, {"1%": 0.3, "10%": 0.1}, 30)))
    outs = []
    for hash_seed in ("1", "2", "3"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        run = subprocess.run([sys.executable, "-c", _CLAIM1_PROGRAM, str(path)], env=env,
                             capture_output=True, text=True, check=True)
        outs.append(json.loads(run.stdout))
    assert outs[0]["1%"]["ci"] != [outs[0]["1%"]["diff"]] * 2  # a real interval
    assert outs[0] == outs[1] == outs[2]
