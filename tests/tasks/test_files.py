"""LongBench v2 and HELMET tasks from small generated local files."""

import json

import pytest

from topkattn.tasks import get_task
from topkattn.tasks.base import count_tokens
from topkattn.tasks.helmet import HelmetTask
from topkattn.tasks.longbench_v2 import LongBenchV2Task, extract_choice


def _lb_records(n=3):
    return [{
        "_id": f"id{i}", "domain": "test", "difficulty": "easy",
        "question": f"What colour is box {i}?",
        "choice_A": "red", "choice_B": "green", "choice_C": "blue", "choice_D": "black",
        "answer": "ABCD"[i % 4],
        "context": " ".join(f"Box {j} is {['red', 'green', 'blue', 'black'][j % 4]}."
                            for j in range(400)),
    } for i in range(n)]


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_longbench_v2_samples(tokenizer, tmp_path, fmt):
    recs = _lb_records()
    p = tmp_path / f"lb.{fmt}"
    p.write_text(json.dumps(recs) if fmt == "json" else
                 "\n".join(json.dumps(r) for r in recs))
    task = get_task(f"longbench_v2:{p}")
    assert isinstance(task, LongBenchV2Task)
    ss = task.samples(tokenizer, 512, 5, seed=0)
    assert len(ss) == 3  # all records when n exceeds the file
    for s in ss:
        assert count_tokens(tokenizer, s.prompt) <= 512 and s.n_tokens > 400
        assert s.prompt.endswith("The correct answer is (")
        assert "(C) blue" in s.prompt and s.depth is None
        assert s.answers[0] in "ABCD"
        assert task.score(s.answers[0] + ") ...", s) == 1.0
        wrong = "A" if s.answers[0] != "A" else "B"
        assert task.score(wrong + ")", s) == 0.0
    assert [s.id for s in ss] == [s.id for s in task.samples(tokenizer, 512, 5, seed=0)]


def test_extract_choice():
    assert extract_choice("B) green") == "B"
    assert extract_choice("The correct answer is (C)") == "C"
    assert extract_choice("d") == "D"
    assert extract_choice("none") is None


def test_longbench_v2_bad_records(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(ValueError, match="lacks LongBench v2 fields"):
        LongBenchV2Task(path=str(p)).records()


def test_missing_files_name_the_path(tokenizer, tmp_path):
    missing = tmp_path / "nope.jsonl"
    for name in ("longbench_v2", "helmet"):
        with pytest.raises(FileNotFoundError, match="nope.jsonl"):
            get_task(f"{name}:{missing}").samples(tokenizer, 512, 1, seed=0)


def test_helmet_fields_and_scoring(tokenizer, tmp_path):
    p = tmp_path / "h.jsonl"
    rows = [
        {"id": "a", "context": "The key alpha maps to 4242. " * 200,
         "question": "What does alpha map to?", "answers": ["4242"]},
        {"input": "Here is text. The magic word is plum. What is the magic word?",
         "answer": "plum"},
        {"context": "x", "question": "Name both.", "answers": [["cat", "dog"]]},
    ]
    p.write_text("\n".join(json.dumps(r) for r in rows))
    task = get_task(f"helmet:{p}")
    assert isinstance(task, HelmetTask)
    ss = {s.id: s for s in task.samples(tokenizer, 512, 10, seed=0)}
    assert set(ss) == {"a", "helmet-1", "helmet-2"}
    assert ss["a"].n_tokens <= 512 and "What does alpha map to?" in ss["a"].prompt
    assert "magic word is plum" in ss["helmet-1"].prompt
    assert task.score("It maps to 4242.", ss["a"]) == 1.0
    assert task.score("cat", ss["helmet-2"]) == 1.0  # any
    assert HelmetTask(path=str(p), match="all").score("cat", ss["helmet-2"]) == 0.5
    with pytest.raises(ValueError, match="match"):
        HelmetTask(path=str(p), match="some")


def test_truncated_jsonl_line_is_named(tmp_path):
    from topkattn.tasks.files import read_records

    p = tmp_path / "broken.jsonl"
    p.write_text('{"a": 1}\n{"a": 2}\n{"a": "unterminated\n{"a": 4}\n')
    with pytest.raises(ValueError) as e:
        read_records(p)
    msg = str(e.value)
    assert "line 3" in msg and "line 1 column" not in msg and "\n" not in msg


def test_jsonl_named_json_and_json_list_named_jsonl(tmp_path):
    from topkattn.tasks.files import read_records

    a = tmp_path / "rows.json"
    a.write_text('{"x": 1}\n\n{"x": 2}\n')
    assert read_records(a) == [{"x": 1}, {"x": 2}]
    b = tmp_path / "rows.jsonl"
    b.write_text(json.dumps([{"x": 1}, {"x": 2}], indent=1))
    assert read_records(b) == [{"x": 1}, {"x": 2}]
    c = tmp_path / "wrapped.json"
    c.write_text(json.dumps({"data": [{"x": 3}]}))
    assert read_records(c) == [{"x": 3}]


def test_broken_json_list_and_empty_files(tmp_path):
    from topkattn.tasks.files import read_records

    p = tmp_path / "list.json"
    p.write_text('[\n {"x": 1},\n {"x": \n')
    with pytest.raises(ValueError, match=r"is not valid JSON: line 4"):
        read_records(p)
    q = tmp_path / "empty.jsonl"
    q.write_text("\n\n")
    with pytest.raises(ValueError, match="holds no records"):
        read_records(q)
