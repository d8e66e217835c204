"""LongBench v2 as its authors score it: official prompt, truncation, extraction, breakdown."""

import json

import pytest

from topkattn.tasks import get_task
from topkattn.tasks.base import Sample, count_tokens
from topkattn.tasks.longbench_v2 import (TEMPLATE_0SHOT, TEMPLATE_COT, TEMPLATE_COT_ANS,
                                         LongBenchV2Task, extract_answer, fill,
                                         longbench_v2_breakdown)
from topkattn.tasks.stats import accuracy, wilson_interval

OFFICIAL_0SHOT = (
    "Please read the following text and answer the question below.\n\n<text>\nDOC\n</text>\n\n"
    "What is the correct answer to this question: Q?\nChoices:\n(A) a\n(B) b\n(C) c\n(D) d\n\n"
    "Format your response as follows: \"The correct answer is (insert answer here)\"."
)
REC = {"question": " Q? ", "choice_A": "a", "choice_B": "b ", "choice_C": "c", "choice_D": "d"}


def _records(n=6, words=3000):
    diffs, lens = ["easy", "hard"], ["short", "medium", "long"]
    return [{
        "_id": f"q{i}", "domain": "Single-Document QA", "sub_domain": "Legal",
        "difficulty": diffs[i % 2], "length": lens[i % 3],
        "question": f"Which box is number {i}?",
        "choice_A": "the red one", "choice_B": "the green one", "choice_C": "the blue one",
        "choice_D": "the black one", "answer": "ABCD"[i % 4],
        "context": "HEADMARK " + " ".join(f"word{j}" for j in range(words)) + " TAILMARK",
    } for i in range(n)]


def _write(tmp_path, recs, name="data.json"):
    p = tmp_path / name
    p.write_text(json.dumps(recs) if name.endswith(".json") else
                 "\n".join(json.dumps(r) for r in recs) + "\n")
    return p


def test_official_prompt_text():
    assert fill(TEMPLATE_0SHOT, REC, doc=" DOC\n") == OFFICIAL_0SHOT
    cot = fill(TEMPLATE_COT, REC, doc="DOC")
    assert cot.endswith("(D) d\n\nLet\u2019s think step by step:")
    assert "answer the questions below" in cot  # the official CoT wording (plural)
    ans = fill(TEMPLATE_COT_ANS, REC, cot="because")
    assert "The text is too long and omitted here." in ans and "DOC" not in ans
    assert "Let\u2019s think step by step: because\n\nBased on the above" in ans


@pytest.mark.parametrize("text, letter", [
    ("The correct answer is (B)", "B"),
    ("The correct answer is C.", "C"),                       # without parentheses
    ("**The correct answer is (D)**", "D"),                  # markdown stars removed
    ("I think... The correct answer is (A) because", "A"),
    ("the correct answer is (b)", None),                     # lower case: official is strict
    ("The correct answer is (E)", None),
    ("Answer: B", None),                                     # no sentence: wrong
    ("", None),
])
def test_extract_answer(text, letter):
    assert extract_answer(text) == letter


def test_samples_prompt_truncation_and_scoring(tokenizer, tmp_path):
    task = get_task(f"longbench_v2:{_write(tmp_path, _records())}")
    assert isinstance(task, LongBenchV2Task) and task.max_new_tokens == 4
    ss = task.samples(tokenizer, 1024, 10, seed=0)
    assert len(ss) == 6
    for s in ss:
        assert count_tokens(tokenizer, s.prompt) == s.n_tokens <= 1024 and s.n_tokens > 1000
        # pred.py keeps the first and the last half: both ends of the document survive
        assert "HEADMARK" in s.prompt and "TAILMARK" in s.prompt and "word1500" not in s.prompt
        assert "Please read the following text" in s.prompt and "(C) the blue one" in s.prompt
        assert s.prompt.endswith("<|im_start|>assistant\nThe correct answer is (")
        assert s.metadata["difficulty"] in ("easy", "hard")
        assert s.metadata["length_bucket"] in ("short", "medium", "long")
        right, wrong = s.answer, "A" if s.answer != "A" else "B"
        assert task.score(right + ")", s) == 1.0          # reads "The correct answer is (X)"
        assert task.score(wrong + ")", s) == 0.0
        assert task.score(right, s) == 0.0                # "(X" alone is not the sentence
    assert [s.id for s in ss] == [s.id for s in task.samples(tokenizer, 1024, 10, seed=0)]
    assert [s.id for s in ss] != [s.id for s in task.samples(tokenizer, 1024, 10, seed=1)]


def test_context_truncation_mode_keeps_the_instruction(tokenizer, tmp_path):
    p = _write(tmp_path, _records(1))
    s = LongBenchV2Task(path=str(p), truncation="context").samples(tokenizer, 600, 1, 0)[0]
    assert s.n_tokens <= 600 and "HEADMARK" in s.prompt and "TAILMARK" in s.prompt
    with pytest.raises(ValueError, match="truncation must be one of"):
        LongBenchV2Task(path=str(p), truncation="left")


def test_no_prefix_scores_the_whole_sentence(tokenizer, tmp_path):
    p = _write(tmp_path, _records(1), "d.jsonl")
    task = LongBenchV2Task(path=str(p), answer_prefix=False)
    s = task.samples(tokenizer, 512, 1, 0)[0]
    assert task.max_new_tokens == 128 and s.prompt.endswith("<|im_start|>assistant\n")
    assert task.score(f"The correct answer is ({s.answer}).", s) == 1.0
    assert task.score(f"{s.answer})", s) == 0.0


def test_cot_two_turns(tokenizer, tmp_path):
    p = _write(tmp_path, _records(2))
    task = get_task(f"longbench_v2_cot:{p}")
    assert task.cot and task.name == "longbench_v2_cot" and task.max_new_tokens == 1024
    s = task.samples(tokenizer, 800, 1, seed=0)[0]
    assert s.prompt.endswith("Let\u2019s think step by step:<|im_end|>\n<|im_start|>assistant\n")
    follow = task.followup(tokenizer, s, "  The boxes are listed.  ")
    assert "Let\u2019s think step by step: The boxes are listed.\n\nBased on" in follow
    assert "HEADMARK" not in follow and s.metadata["answer_prefix"] == ""
    assert task.score(f"The correct answer is ({s.answer})", s) == 1.0
    assert LongBenchV2Task(path=str(p)).followup(tokenizer, s, "x") is None


def test_wilson_interval_matches_scipy_and_known_values():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0
    stats = pytest.importorskip("scipy.stats")
    for k, n in [(0, 7), (3, 7), (150, 503), (503, 503)]:
        ci = stats.binomtest(k, n).proportion_ci(method="wilson")
        assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)


def test_breakdown_counts_and_intervals():
    rows = ([{"score": 1.0, "difficulty": "easy", "length": "short"}] * 3
            + [{"score": 0.0, "difficulty": "easy", "length": "medium"}] * 2
            + [{"judge": True, "difficulty": "hard", "length": "long"}]
            + [{"judge": False, "difficulty": "hard", "length": "medium"}] * 4)
    b = longbench_v2_breakdown(rows)
    assert b["overall"]["n"] == 10 and b["overall"]["correct"] == 4
    assert b["overall"]["accuracy"] == pytest.approx(0.4)
    assert b["overall"]["ci95"] == pytest.approx(list(wilson_interval(4, 10)))
    assert {k: (v["n"], v["correct"]) for k, v in b["difficulty"].items()} == {
        "easy": (5, 3), "hard": (5, 1)}
    assert {k: (v["n"], v["correct"]) for k, v in b["length"].items()} == {
        "short": (3, 3), "medium": (6, 0), "long": (1, 1)}  # medium is not counted as long
    assert b["unbucketed"] == {"difficulty": 0, "length": 0}
    assert accuracy([])["accuracy"] is None


def test_task_breakdown_looks_buckets_up_by_sample_id(tmp_path):
    p = _write(tmp_path, _records(6))
    task = LongBenchV2Task(path=str(p))
    # rows as the runner writes them: integer length in tokens, no buckets
    rows = [{"sample_id": f"q{i}", "length": 4096, "score": float(i < 2), "k": 64,
             "prediction": "A)"} for i in range(6)]
    b = task.breakdown(rows)
    assert b["difficulty"]["easy"]["n"] == 3 and b["difficulty"]["hard"]["n"] == 3
    assert b["difficulty"]["easy"]["correct"] == 1 and b["difficulty"]["hard"]["correct"] == 1
    assert [b["length"][k]["n"] for k in ("short", "medium", "long")] == [2, 2, 2]
    rows.append({"sample_id": "nope", "score": 1.0})
    assert task.breakdown(rows)["unbucketed"] == {"difficulty": 1, "length": 1}
    comp = longbench_v2_breakdown([{"score": 0.0, "pred": None, "difficulty": "easy"},
                                   {"score": 0.0, "pred": "B", "difficulty": "easy"}],
                                  compensated=True)
    assert comp["overall"]["correct"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="neither 'score' nor 'judge'"):
        longbench_v2_breakdown([{"sample_id": "x"}])


def test_helmet_file_given_to_longbench_names_missing_fields(tmp_path):
    p = tmp_path / "kv.jsonl"
    p.write_text(json.dumps({"context": "{}", "question": "k", "answer": "v",
                             "num_kvs": 3}) + "\n")
    with pytest.raises(ValueError) as e:
        LongBenchV2Task(path=str(p)).records()
    msg = str(e.value)
    assert "\n" not in msg and "lacks LongBench v2 fields" in msg and "'choice_A'" in msg
