"""Two-turn chain of thought (``longbench_v2_cot``) in the evaluation runner: turn 2's prompt
is built from each branch's own turn-1 output, decoded under the same setting (full attention
or Top-k), and turn 2's answer is what is scored."""

import pytest

from topkattn.evaluation import EvalConfig, read_results, run_eval
from topkattn.generation import Branch
from topkattn.tasks import get_task
from topkattn.tasks.longbench_v2 import LongBenchV2Task


def _cfg(out, task, **kw):
    base = dict(tasks=(task,), lengths=(256,), ks=("full", "4"), samples=2, seed=0,
                max_new_tokens=3, followup_max_new_tokens=2, out=out, progress=False)
    base.update(kw)
    return EvalConfig(**base)


def test_cot_runs_two_turns_on_a_tiny_model(tiny_lm, tokenizer, lb_file, tmp_path,
                                            monkeypatch):
    import topkattn.generation as G

    seen, firsts = [], []
    real_sparsify, real_followup = G._sparsify, LongBenchV2Task.followup
    monkeypatch.setattr(G, "_sparsify", lambda m, c: seen.append(c) or real_sparsify(m, c))

    def followup(self, tok, sample, prediction):
        firsts.append(prediction)
        return real_followup(self, tok, sample, prediction)

    monkeypatch.setattr(LongBenchV2Task, "followup", followup)
    task = f"longbench_v2_cot:{lb_file}"
    run_eval(tiny_lm, tokenizer, _cfg(tmp_path, task))
    rows = read_results(tmp_path / "results.jsonl")
    assert [r["k"] for r in rows] == ["full", "4", "full", "4"]
    # each branch decodes turn 1 then its own turn 2: full, full, k=4, k=4 per sample
    assert [None if c is None else c.k for c in seen] == [None, None, 4, 4] * 2
    assert [r["reasoning"] for r in rows] == firsts  # turn 2 was built from turn 1's text
    lb = get_task(task)
    samples = {s.id: s for s in lb.samples(tokenizer, 256, 2, 0)}
    for r in rows:
        assert r["new_tokens"] <= 3 and r["followup_new_tokens"] <= 2
        assert r["followup_n_tokens"] < r["n_tokens"]  # turn 2 has no document
        assert r["score"] == lb.score(r["prediction"], samples[r["sample_id"]])
    assert (tmp_path / "summary.json").exists()


def _fake_decoder(monkeypatch, calls):
    """Decoding without a model: turn 1 reasons without an answer, turn 2 (whose prompt holds
    turn 1's text) answers (A)."""
    import topkattn.evaluation.batch as B

    def decode_branches(model, tokenizer, prompt, settings, max_new, eos):
        for label, topk in settings:
            if "Let me think about the doors." in prompt:
                assert "omitted here" in prompt
                calls.append(("turn2", label, topk))
                yield Branch(label, [1], "The correct answer is (A)", 0.0, 0.0, 10)
            else:
                calls.append(("turn1", label, topk))
                yield Branch(label, [1], "Let me think about the doors.", 0.0, 0.0, 100)

    monkeypatch.setattr(B, "decode_branches", decode_branches)


@pytest.mark.parametrize("cot", [True, False])
def test_the_second_turn_is_scored(tiny_lm, tokenizer, lb_file, tmp_path, monkeypatch, cot):
    calls = []
    _fake_decoder(monkeypatch, calls)
    task = f"longbench_v2{'_cot' if cot else ''}:{lb_file}"
    s = run_eval(tiny_lm, tokenizer, _cfg(tmp_path, task, samples=4))
    rows = read_results(tmp_path / "results.jsonl")
    label = get_task(task).name
    if cot:
        # every branch has its turn 2, under its own setting
        assert [(c[0], c[1]) for c in calls] == [("turn1", "full"), ("turn2", "full"),
                                                 ("turn1", "4"), ("turn2", "4")] * 4
        assert [c[2].k for c in calls if c[1] == "4"] == [4, 4] * 4
        assert {r["prediction"] for r in rows} == {"The correct answer is (A)"}
        assert {r["reasoning"] for r in rows} == {"Let me think about the doors."}
        # the file's answers cycle A-D: one in four is right, at each k
        assert s.accuracy(label, 256, "full") == s.accuracy(label, 256, "4") == 0.25
    else:  # one turn: the reasoning-like first output is scored, and finds no answer
        assert all(c[0] == "turn1" for c in calls) and "reasoning" not in rows[0]
        assert s.accuracy(label, 256, "full") == 0.0


def test_batched_two_turns_equal_one_at_a_time(tiny_lm, tokenizer, lb_file, tmp_path):
    """Both turns of a batch of 2 (turn 2's prompts decoded together) give the lines of one
    sample at a time, wall times and the batch size aside."""
    task = f"longbench_v2_cot:{lb_file}"
    volatile = ("seconds", "prefill_seconds", "followup_seconds", "batch")
    runs = []
    for bs in (1, 2):
        run_eval(tiny_lm, tokenizer, _cfg(tmp_path / str(bs), task, batch_size=bs))
        runs.append(sorted(({k: v for k, v in r.items() if k not in volatile} for r in
                            read_results(tmp_path / str(bs) / "results.jsonl")),
                           key=lambda r: (r["sample_id"], r["k"])))
    assert runs[0] == runs[1] and all("reasoning" in r for r in runs[1])
