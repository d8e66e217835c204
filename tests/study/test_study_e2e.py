"""`topkattn study` end to end on a tiny random model with the quick budget: a kill at every
stage, resume, the CLI report; bad options are one line before any model is loaded."""

import json

import pytest
import torch

from tests.helpers import run_main
from topkattn.study.claims import Models, plan
from topkattn.study.config import StudyConfig
from topkattn.study.runner import run_study
from topkattn.study.verdict import OUTCOMES

# the quick budget (one sample per cell) with two answer tokens: every stage, in seconds
SMALL = ["--budget", "quick", "--max-new-tokens", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    """A tiny random Llama saved with the embedded tokenizer (context 2048)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    d = tmp_path_factory.mktemp("study-model")
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=2048, eos_token_id=2, bos_token_id=1,
                      tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


class Killed(KeyboardInterrupt):
    pass


def test_quick_study_killed_at_every_stage_resumes(monkeypatch, capsys, tmp_path, model_dir):
    out = tmp_path / "study"
    cfg = StudyConfig.build(model=str(model_dir), out=out, budget="quick", max_new_tokens=2,
                            device="cpu", progress=False)
    names = [s.name for s in plan(cfg, Models(cfg))]
    assert names[0] == "claim1-eval" and len(names) == 1 + 2 + 1 + 1 + 4 * 3
    for i, target in enumerate(names):  # kill at each stage in turn: a rerun runs the stage
        started = []  # killed last time, then the next one (killed now); the rest is reused

        def on_start(name, target=target):
            started.append(name)
            if name == target:
                raise Killed

        with pytest.raises(Killed):
            run_study(cfg, on_start=on_start)
        assert started == names[max(0, i - 1):i + 1]
    res = run_study(cfg)
    assert res.ran == [names[-1]] and res.reused == names[:-1]
    assert [v.outcome for v in res.verdicts] and all(v.outcome in OUTCOMES
                                                     for v in res.verdicts)
    a = res.analyses
    assert set(a[1]["pooled"]) == {"1%", "2%", "5%", "10%", "16"}
    assert a[2]["seeds"] == [0, 1] and a[2]["primary"]["n"] > 0
    assert len(a[3]["lengths"]) == 2 and a[3]["primary"]["n_settings"] == 8
    assert set(a[4]["groups"]) == {"base", "dense_sft", "topk_sft"}
    assert len(a[4]["groups"]["base"]["per_layer"]) == 2  # two layers
    # the fine-tunes are real trained models, different per arm
    tr = json.loads((out / "stages" / "claim2-train-topk-s0.json").read_text())["result"]
    assert tr["steps"] == 2 and tr["topk"]["k_ratio"] == 0.01
    # killed after training finished but before its stage file was written: no retraining
    import topkattn.train.sft as sft

    (out / "stages" / "claim2-train-topk-s0.json").unlink()
    monkeypatch.setattr(sft, "train", lambda *a, **k: pytest.fail("trained again"))
    res = run_study(cfg)
    assert res.ran == ["claim2-train-topk-s0"]
    again = json.loads((out / "stages" / "claim2-train-topk-s0.json").read_text())["result"]
    assert again["final_loss"] == tr["final_loss"] and again["steps"] == 2
    monkeypatch.undo()
    # the CLI on the same folder reuses every stage and prints the verdicts
    code, stdout, err = run_main(monkeypatch, capsys, "study", "--model", str(model_dir),
                                 "--out", str(out), "--quiet", *SMALL)
    assert code == 0, err
    code, stdout, err = run_main(monkeypatch, capsys, "study", "--model", str(model_dir),
                                 "--out", str(out), *SMALL)
    assert code == 0 and stdout.count("reused") == len(names)
    assert all(f"claim {c}" in stdout for c in (1, 2, 3, 4))
    study = json.loads((out / "study.json").read_text())
    assert [v["claim"] for v in study["verdicts"]] == [1, 2, 3, 4]
    md = (out / "study.md").read_text()
    assert "| claim | outcome |" in md and md.count("![claim") == 4
    assert all((out / f"claim{c}.png").stat().st_size > 1000 for c in (1, 2, 3, 4))
    # other settings into the same folder: refused before any work
    code, _, err = run_main(monkeypatch, capsys, "study", "--model", str(model_dir), "--out",
                            str(out), "--budget", "quick", "--samples", "2", "--device", "cpu",
                            "--quiet")
    assert code == 2 and "other settings" in err and len(err.strip().splitlines()) == 1


def test_claim3_resumes_per_sample(monkeypatch, tmp_path, tokenizer):
    """A kill inside claim 3 keeps the finished samples' lines; the rerun does the rest."""
    import topkattn.analysis.fidelity as fid
    from topkattn.study import claims

    cfg = StudyConfig.build(model="default", out=tmp_path, claims="3", budget="quick",
                            samples=3, progress=False)  # 3 samples at 256 tokens
    specs = claims.claim3_specs(cfg)

    class FakeModels:
        class config:
            max_position_embeddings = 4096

        def get(self, name):
            return self, tokenizer

    done = []

    def fake_fidelity(model, tok, prompts, topk, selectors, **kw):
        return {s: {"precision": 0.5, "mass_recall": 0.5, "out_err": 0.1} for s in selectors}

    def fake_downstream(model, tok, task, samples, topk, selectors, **kw):
        if len(done) == 2:
            raise Killed
        done.append(samples[0].id)
        return [fid.DownstreamRow(s, 1.0, 1) for s in ["full"] + list(selectors)]

    monkeypatch.setattr(fid, "measure_fidelity", fake_fidelity)
    monkeypatch.setattr(fid, "run_downstream", fake_downstream)
    with pytest.raises(Killed):
        claims.run_claim3(cfg, FakeModels(), 256)
    lines = (tmp_path / "claim3" / "samples-256.jsonl").read_text().splitlines()
    assert len(lines) == 2
    done.append("x")  # the fake no longer kills; it records what is asked again
    res = claims.run_claim3(cfg, FakeModels(), 256)
    assert len(res["samples"]) == 3 and len(done) == 4  # only the third sample ran again
    assert set(res["samples"][0]["scores"]) == {"full", *specs}


@pytest.mark.parametrize("args,msg", [
    (["--claims", "1,5"], "'5' is not a claim"),
    (["--budget", "huge"], "--budget 'huge'"),
    (["--lengths", "1x"], "length must be"),
    (["--lengths", "1k", "--claims", "3"], "two lengths"),
    (["--samples", "0"], "--samples must be"),
    (["--device", "bogus"], "bogus"),
    (["--tasks", "nope"], "unknown task 'nope'"),
    (["--file-tasks", "longbench_v2:/no/such.jsonl"], "/no/such.jsonl"),
    (["--train-seeds", "a"], "--train-seeds"),
    (["--train-seeds", "3"], "two or more"),
    (["--model", "/no/such/model"], "/no/such/model"),
    (["--threads", "0"], "--threads"),
])
def test_bad_options_are_one_line(monkeypatch, capsys, tmp_path, args, msg):
    code, _, err = run_main(monkeypatch, capsys, "study", "--out", str(tmp_path / "o"), *args)
    assert code == 2, err
    assert err.startswith("error: ") and msg in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_lengths_beyond_the_model_context(monkeypatch, capsys, tmp_path, model_dir):
    code, _, err = run_main(monkeypatch, capsys, "study", "--model", str(model_dir), "--out",
                            str(tmp_path), "--lengths", "1k,4k", "--claims", "1", "--device",
                            "cpu", "--quiet")
    assert code == 2 and "4096 exceeds" in err and "max_position_embeddings=2048" in err
    assert not (tmp_path / "stages").exists() or not list((tmp_path / "stages").iterdir())


def test_out_that_is_a_file_is_one_line(monkeypatch, capsys, tmp_path):
    f = tmp_path / "results.txt"
    f.write_text("not a folder")
    code, _, err = run_main(monkeypatch, capsys, "study", "--out", str(f), "--quiet")
    assert code == 2 and str(f) in err and len(err.strip().splitlines()) == 1
