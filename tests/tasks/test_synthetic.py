"""Synthetic tasks: determinism, prompt length in tokens, needle depth, scoring, errors."""

import pytest

from topkattn.tasks import TASK_NAMES, get_task
from topkattn.tasks.base import count_tokens, exact_match_score, normalize


def test_registered_names():
    assert set(TASK_NAMES) == {"passkey", "niah_multikey", "vartrack", "kv"}


def test_unknown_task_names_it_and_the_allowed():
    with pytest.raises(ValueError) as e:
        get_task("nope")
    msg = str(e.value)
    assert "'nope'" in msg and "passkey" in msg and "kv" in msg and "longbench_v2" in msg
    assert "cwe" in msg and "fwe" in msg and "helmet:<category>" in msg


@pytest.mark.parametrize("name", TASK_NAMES)
def test_deterministic_from_seed(tokenizer, name):
    task = get_task(name)
    a = task.samples(tokenizer, 512, 3, seed=7)
    b = task.samples(tokenizer, 512, 3, seed=7)
    c = task.samples(tokenizer, 512, 3, seed=8)
    assert [s.prompt for s in a] == [s.prompt for s in b]
    assert [s.answers for s in a] == [s.answers for s in b]
    assert [s.prompt for s in a] != [s.prompt for s in c]
    assert len({s.id for s in a}) == 3


@pytest.mark.parametrize("name", TASK_NAMES)
@pytest.mark.parametrize("length", [512, 1024, 2048])
def test_length_in_tokens(tokenizer, name, length):
    for s in get_task(name).samples(tokenizer, length, 2, seed=0):
        n = count_tokens(tokenizer, s.prompt)
        assert n == s.n_tokens
        # never above; below by at most one filler unit (~20 tokens; a kv pair ~50)
        assert n <= length and length - n <= max(0.05 * length, 60), (name, length, n)
        assert s.length == length


@pytest.mark.parametrize("name", TASK_NAMES)
def test_prompt_holds_answer_and_ends_for_a_direct_answer(tokenizer, name):
    s = get_task(name).samples(tokenizer, 512, 1, seed=0)[0]
    assert s.answer in s.prompt
    assert s.prompt.startswith("<|im_start|>")  # chat template used
    prefix = s.metadata["answer_prefix"]
    assert s.prompt.endswith("<|im_start|>assistant\n" + prefix)
    assert s.messages and s.messages[-1]["role"] == "user"
    # the filler holds no digits: the numbers in the prompt are the needles' only
    assert s.task == name


def test_depth_swept_and_placed(tokenizer):
    samples = get_task("passkey").samples(tokenizer, 1024, 5, seed=0)
    assert [s.depth for s in samples] == [0.0, 0.25, 0.5, 0.75, 1.0]
    for s in samples:
        user = s.messages[-1]["content"]
        start = user.index("\n\n") + 2
        end = user.rindex("\n\n")
        pos = user.index(f"The pass key is {s.answer}")
        rel = (pos - start) / (end - start)
        assert abs(rel - s.depth) < 0.08, (s.depth, rel)


def test_multikey_distractors_differ(tokenizer):
    s = get_task("niah_multikey").samples(tokenizer, 1024, 1, seed=3)[0]
    d = s.metadata["distractors"]
    assert len(d) == 3 and s.metadata["key"] not in d
    for k, v in d.items():
        assert f"magic numbers for {k} is: {v}." in s.prompt
    assert f"special magic number for {s.metadata['key']}" in s.prompt


def test_vartrack_chain_in_order(tokenizer):
    s = get_task("vartrack").samples(tokenizer, 1024, 1, seed=0)[0]
    a, b = s.metadata["chain"]
    i = s.prompt.index(f"VAR {a} = {s.answer}.")
    j = s.prompt.index(f"VAR {b} = VAR {a}.")
    assert i < j
    assert s.prompt.endswith(f"The numeric value of VAR {b} is")


def test_kv_is_a_json_object_of_uuids(tokenizer):
    import json
    import re

    s = get_task("kv").samples(tokenizer, 1024, 1, seed=0)[0]
    body = re.search(r"\{.*\}", s.messages[-1]["content"], re.S).group(0)
    obj = json.loads(body)
    assert obj[s.metadata["key"]] == s.answer
    assert len(obj) > 10 and re.fullmatch(r"[0-9a-f-]{36}", s.answer)


def test_length_beyond_context_is_an_error(tokenizer):
    with pytest.raises(ValueError, match=r"length 9000 .*max_position_embeddings=8192"):
        get_task("passkey").samples(tokenizer, 9000, 1, seed=0, max_length=8192)
    with pytest.raises(ValueError, match="too short"):
        get_task("kv").samples(tokenizer, 64, 1, seed=0)


def test_exact_match_scoring():
    assert normalize("  The Pass-Key is 12345!\n") == "the pass-key is 12345"
    assert exact_match_score(" 12345.", ["12345"]) == 1.0
    assert exact_match_score("1234", ["12345"]) == 0.0
    assert exact_match_score("412345", ["12345"]) == 0.0  # whole numbers only
    assert exact_match_score("a and b", ["A", "B", "c", "d"]) == 0.5
    assert exact_match_score("anything", []) == 0.0
    task = get_task("passkey")
    from topkattn.tasks import Sample

    s = Sample(id="x", task="passkey", prompt="", answers=("67957",), length=1, depth=0.0)
    assert task.score(" 67957.", s) == 1.0
    assert task.score(" 6795.", s) == 0.0
