"""HELMET categories: HELMET's file fields, prompts, length settings and metrics."""

import json

import pytest

from topkattn.tasks import get_task
from topkattn.tasks.base import Sample, count_tokens
from topkattn.tasks.helmet import (HelmetCategoryTask, HelmetTask, exact_match,
                                   normalize_answer, parse_output, rouge_l_f1, ruler_recall,
                                   setting_for, substring_exact_match)


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _kv_rows(n=3, pairs=60):
    rows = []
    for i in range(n):
        kv = {f"key-{i}-{j}": f"val-{i}-{j}" for j in range(pairs)}
        rows.append({"id": i, "context": "JSON data:\n" + json.dumps(kv), "question": f"key-{i}-7",
                     "answer": f"val-{i}-7", "num_kvs": pairs, "depth": 0.1,
                     "demos": [["dk1", "dv1"], ["dk2", "dv2"], ["dk3", "dv3"]]})
    return rows


def _sample(answers, task="t"):
    return Sample(id="x", task=task, prompt="", answers=tuple(answers), length=1, depth=None)


def test_metrics_as_helmet():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert substring_exact_match("It is the Eiffel tower, in Paris.", ["eiffel tower"]) == 1.0
    assert substring_exact_match("a tower", ["eiffel tower", "paris"]) == 0.0
    assert exact_match("The Paris.", ["paris"]) == 1.0
    assert exact_match("in Paris", ["paris"]) == 0.0
    assert ruler_recall("numbers: 123, 456", ["123", "456", "789"]) == pytest.approx(2 / 3)
    assert parse_output("blah\nAnswer: Paris\nmore") == "Paris"
    assert parse_output("  Paris\nmore") == "Paris"  # no prefix: the first line
    # ROUGE-L F1 by LCS: "the cat sat" vs "the cat sat down": P=1, R=3/4
    assert rouge_l_f1("the cat sat", "the cat sat down", use_package=False) == \
        pytest.approx(2 * 0.75 / 1.75)
    assert rouge_l_f1("dog", "the cat", use_package=False) == 0.0
    assert rouge_l_f1("The Cat, sat!", "the cat sat", use_package=False) == pytest.approx(1.0)


def test_length_settings():
    assert setting_for(8192) == "8k" and setting_for(10000) == "8k"
    assert setting_for(2048) == "4k" and setting_for(200000) == "128k"
    assert setting_for(1024, "32k") == "32k"
    with pytest.raises(ValueError, match=r"unknown HELMET length setting '3k'.*4k, 8k"):
        setting_for(1024, "3k")


def test_json_kv_prompt_truncation_and_score(tokenizer, tmp_path):
    p = _jsonl(tmp_path / "test_k50_dep6.jsonl", _kv_rows())
    task = get_task(f"helmet:json_kv:{p}")
    assert isinstance(task, HelmetCategoryTask) and task.name == "helmet_json_kv"
    assert task.max_new_tokens == 100
    ss = task.samples(tokenizer, 400, 10, seed=0)
    assert len(ss) == 3
    for s in ss:
        assert count_tokens(tokenizer, s.prompt) == s.n_tokens <= 400
        assert s.prompt.startswith("JSON data:")            # raw prompt: no chat template
        assert "<|im_start|>" not in s.prompt
        assert s.prompt.endswith(f"Key: {s.metadata and s.answers[0].replace('val', 'key')}"
                                 "\nCorresponding value:")
        assert "Key: dk1\nCorresponding value: dv1\n\nKey: dk2" in s.prompt
        assert "dk3" not in s.prompt                         # HELMET's 2 shots
        assert s.metadata["setting"] == "4k" and s.depth == 0.1
        assert task.score(f" {s.answer}", s) == 1.0
        assert task.score("Corresponding value: nothing", s) == 0.0
    # the end of the context is cut (HELMET), the beginning is kept
    long = task.samples(tokenizer, 300, 1, seed=0)[0]
    assert '"key-' in long.prompt and long.n_tokens <= 300


def test_directory_picks_the_file_of_the_setting(tokenizer, tmp_path):
    data = tmp_path / "data"
    _jsonl(data / "json_kv/test_k50_dep6.jsonl", _kv_rows(1))
    _jsonl(data / "json_kv/test_k105_dep6.jsonl", _kv_rows(2))
    t = get_task(f"helmet:json_kv:{tmp_path}")  # the folder holding data/
    assert t.samples(tokenizer, 4096, 5, 0)[0].metadata["file"] == "test_k50_dep6.jsonl"
    assert len(t.samples(tokenizer, 8192, 5, 0)) == 2  # 8k -> test_k105
    pinned = get_task(f"helmet:json_kv@8k:{data}")
    assert pinned.samples(tokenizer, 1024, 5, 0)[0].metadata["file"] == "test_k105_dep6.jsonl"
    with pytest.raises(FileNotFoundError, match=r"json_kv 16k file 'json_kv/test_k220_dep6"):
        t.samples(tokenizer, 16384, 1, 0)


def test_ruler_niah_recall(tokenizer, tmp_path):
    rows = [{"index": 0, "context": "Filler text. " * 50 + "One of the special magic numbers "
             "for apple is: 1234. One of the special magic numbers for apple is: 5678.",
             "query": "apple", "type_needle_v": "numbers", "outputs": ["1234", "5678"]}]
    p = _jsonl(tmp_path / "validation_4096.jsonl", rows)
    task = get_task(f"helmet:ruler_niah_mv:{p}")
    s = task.samples(tokenizer, 1024, 1, 0)[0]
    assert s.prompt.startswith("Some special magic numbers are hidden within the following text")
    assert s.prompt.endswith("What are all the special magic numbers for apple mentioned in the "
                             "provided text?\nThe special magic numbers for apple mentioned in "
                             "the provided text are")
    assert task.score(" 5678 and 1234", s) == 1.0
    assert task.score(" 5678", s) == 0.5
    mk = get_task(f"helmet:ruler_niah_mk_2:{p}").samples(tokenizer, 1024, 1, 0)[0]
    assert mk.prompt.startswith("A special magic numbers is hidden")


def test_rag_any_gold_answer_with_demos_and_newline_stop(tokenizer, tmp_path):
    kilt = tmp_path / "kilt"
    rows = [{"id": f"q{i}", "question": f"who wrote book {i}?", "answers": [f"Author {i}",
             f"A. {i}"], "ctxs": [{"title": f"Book {i}", "text": f"Book {i} was written by "
                                   f"Author {i}."}, {"title": "Other", "text": "Unrelated."}]}
            for i in range(3)]
    test = _jsonl(kilt / "nq-dev-multikilt_1000_k20_dep6.jsonl", rows)
    _jsonl(kilt / "nq-train-multikilt_1000_k3_dep6.jsonl",
           [{"id": f"d{i}", "question": f"demo question {i}?", "answers": [f"demo answer {i}"],
             "ctxs": [{"title": "D", "text": f"demo doc {i}"}]} for i in range(4)])
    task = get_task(f"helmet:nq:{test}")
    s = task.samples(tokenizer, 1024, 1, 0)[0]
    assert s.prompt.startswith("Use the given documents to write a concise and short answer")
    assert s.prompt.count("Question: demo question") == 2  # two demonstrations
    assert "Document (Title: Book" in s.prompt and s.prompt.endswith("?\nAnswer:")
    i = s.id.split("q")[-1]
    assert task.score(f" A. {i}", s) == 1.0                 # any of the gold answers
    assert task.score(f" author {i}!", s) == 1.0
    assert task.score(f" I do not know\nAuthor {i}", s) == 0.0  # HELMET stops at the newline
    assert task.score(f"\n Author {i}", s) == 1.0           # leading line break skipped


def test_icl_balanced_demos_and_label_accuracy(tokenizer, tmp_path):
    rows = [{"text": f"question number {i} about topic {i % 3}", "coarse_label": i % 3}
            for i in range(30)]
    p = _jsonl(tmp_path / "trec_test.jsonl", rows)
    task = HelmetCategoryTask(category="trec_coarse", path=str(p), shots=9)
    ss = task.samples(tokenizer, 2048, 3, seed=0)
    for s in ss:
        assert s.prompt.startswith("Use the provided mapping from the text to label")
        assert 'Only output "label: {label}" and nothing else.' in s.prompt
        assert s.prompt.count("\nlabel: ") == 9 and s.prompt.endswith("\nlabel:")
        text = s.prompt.rsplit("\n\n", 1)[1].split("\n")[0]
        assert f"{text}\nlabel:" not in s.prompt.rsplit("\n\n", 1)[0]  # item not in its demos
        lab = s.answer
        assert task.score(f" {lab}\nlabel: 9", s) == 1.0
        assert task.score(" 7", s) == (1.0 if lab == "7" else 0.0)
    same = HelmetCategoryTask(category="trec_coarse", path=str(p), shots=9).samples(
        tokenizer, 2048, 3, seed=0)
    assert [s.prompt for s in same] == [s.prompt for s in ss]
    # prebuilt records (HELMET's processed fields) are accepted too
    pre = _jsonl(tmp_path / "pre.jsonl", [{"context": "a\nlabel: 1\n\nb\nlabel: 2",
                                           "question": "b", "answer": "2"}])
    s = get_task(f"helmet:banking77:{pre}").samples(tokenizer, 512, 1, 0)[0]
    assert s.prompt.endswith("a\nlabel: 1\n\nb\nlabel: 2\n\nb\nlabel:") and s.answer == "2"


def test_infbench_qa_rouge_and_choice(tokenizer, tmp_path):
    qa = _jsonl(tmp_path / "longbook_qa_eng.jsonl", [
        {"id": i, "context": f"Story {i}. " * 300, "input": f"Who is hero {i}?",
         "answer": [f"the brave knight {i}"], "options": []} for i in range(3)])
    task = get_task(f"helmet:infbench_qa:{qa}")
    s = task.samples(tokenizer, 512, 1, 0)[0]
    assert s.prompt.startswith("<|im_start|>")               # LongQA uses the chat template
    assert s.n_tokens <= 512 and "[the rest of the text is omitted]" in s.prompt
    assert "For example:\n\n[story text]\nQuestion: Who is hero" in s.prompt
    i = s.id.split("-")[-1]
    assert task.score(f"The brave knight {i}", s) == pytest.approx(1.0)
    assert 0.0 < task.score(f"a knight {i}", s) < 1.0
    ch = _jsonl(tmp_path / "longbook_choice_eng.jsonl", [
        {"id": 0, "context": "Long story. " * 100, "input": "Which colour?",
         "answer": ["blue"], "options": ["red", "blue", "green", "black"]},
        {"id": 1, "context": "Other story. " * 100, "input": "Which animal?",
         "answer": ["cat"], "options": ["cat", "dog", "cow", "pig"]}])
    ct = get_task(f"helmet:infbench_choice:{ch}")
    by_id = {s.id: s for s in ct.samples(tokenizer, 1024, 2, 0)}
    s = by_id["infbench_choice-0"]
    assert s.answers == ("B", "B. blue") and "Options:\nA. red\nB. blue" in s.prompt
    assert ct.score("B", s) == 1.0 and ct.score("Answer: B", s) == 1.0
    assert ct.score("I pick B. blue since", s) == 1.0
    assert ct.score("A", s) == 0.0


def test_judged_and_unknown_categories(tmp_path):
    with pytest.raises(ValueError, match=r"'infbench_sum' is not supported: .*GPT-4o judge"):
        get_task(f"helmet:infbench_sum:{tmp_path / 'x.jsonl'}")
    with pytest.raises(ValueError) as e:
        get_task(f"helmet:nqq:{tmp_path / 'x.jsonl'}")
    msg = str(e.value)
    assert "unknown HELMET category 'nqq'" in msg and "rag: nq, triviaqa" in msg
    assert "icl: trec_coarse" in msg and "\n" not in msg


def _lb_record():
    return {"_id": "x", "domain": "d", "sub_domain": "s", "difficulty": "easy",
            "length": "short", "question": "q", "choice_A": "a", "choice_B": "b",
            "choice_C": "c", "choice_D": "d", "answer": "A", "context": "text"}


@pytest.mark.parametrize("category, missing", [
    ("json_kv", "'num_kvs'"), ("nq", "'answers'"), ("ruler_niah_mk_2", "'type_needle_v'"),
    ("infbench_qa", "'input'"), ("trec_coarse", "LongBench v2 record"),
])
def test_longbench_file_to_helmet_is_an_error(tokenizer, tmp_path, category, missing):
    p = _jsonl(tmp_path / "lb.jsonl", [_lb_record()])
    with pytest.raises(ValueError) as e:
        get_task(f"helmet:{category}:{p}").samples(tokenizer, 512, 1, 0)
    msg = str(e.value)
    assert missing in msg and "\n" not in msg and "record 0" in msg


def test_generic_reader_refuses_longbench_records(tmp_path):
    p = _jsonl(tmp_path / "lb.jsonl", [_lb_record()])
    with pytest.raises(ValueError, match="LongBench v2 record"):
        HelmetTask(path=str(p)).records()


def test_folder_for_a_category_outside_the_download(tokenizer, tmp_path):
    with pytest.raises(ValueError, match=r"not in HELMET's data download .*CogComp/trec"):
        get_task(f"helmet:trec_coarse:{tmp_path}").samples(tokenizer, 512, 1, 0)
    with pytest.raises(FileNotFoundError, match="nope"):
        get_task(f"helmet:nq:{tmp_path / 'nope'}").samples(tokenizer, 512, 1, 0)
