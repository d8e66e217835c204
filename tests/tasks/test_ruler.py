"""RULER aggregation tasks cwe and fwe: seeded generation, sizes, scoring."""

import math
import re
from collections import Counter

import pytest

from topkattn.tasks import AGGREGATION_NAMES, ALL_TASK_NAMES, TASK_NAMES, get_task
from topkattn.tasks.base import count_tokens
from topkattn.tasks.ruler import (LEXICON, CommonWordsTask, FrequentWordsTask,
                                  string_match_all, zeta)


def test_registered_like_the_other_synthetic_tasks():
    assert AGGREGATION_NAMES == ("cwe", "fwe") and set(ALL_TASK_NAMES) >= {"cwe", "niah_multikey"}
    assert not {"cwe", "fwe"} & set(TASK_NAMES)  # training specs take single-answer tasks
    assert isinstance(get_task("cwe"), CommonWordsTask)
    assert isinstance(get_task("fwe"), FrequentWordsTask)


@pytest.mark.parametrize("name", ["cwe", "fwe"])
def test_deterministic_by_seed(tokenizer, name):
    a = get_task(name).samples(tokenizer, 1024, 2, seed=3)
    b = get_task(name).samples(tokenizer, 1024, 2, seed=3)
    c = get_task(name).samples(tokenizer, 1024, 2, seed=4)
    assert [s.prompt for s in a] == [s.prompt for s in b]
    assert [s.answers for s in a] == [s.answers for s in b]
    assert [s.answers for s in a] != [s.answers for s in c]
    assert a[0].answers != a[1].answers and a[0].depth is None
    for s in a:
        assert count_tokens(tokenizer, s.prompt) == s.n_tokens <= 1024
        assert s.prompt.endswith("<|im_start|>assistant\n" + s.metadata["answer_prefix"])
        assert all(w in s.prompt for w in s.answers) and s.task == name


def _list_counts(user: str) -> Counter:
    body = user.rsplit("\n\n", 1)[-1].split("\n")[1]  # the main list, after the example
    return Counter(re.findall(r"\d+\. (\w+)", body))


@pytest.mark.parametrize("length", [512, 2048, 4096])
def test_cwe_common_words_are_the_most_frequent(tokenizer, length):
    s = get_task("cwe").samples(tokenizer, length, 1, seed=0)[0]
    assert s.n_tokens <= length and length - s.n_tokens <= 60
    assert len(s.answers) == 10 and len(set(s.answers)) == 10
    counts = _list_counts(s.messages[-1]["content"])
    rc, ru = (6, 1) if length < 4096 else (30, 3)
    assert all(counts[w] == rc for w in s.answers)
    assert all(c == ru for w, c in counts.items() if w not in s.answers)
    assert s.prompt.endswith("Answer: The top 10 words that appear most often in the list are:")
    assert "Question: What are the 10 most common words in the above list?" in s.prompt


def test_cwe_words_and_example(tokenizer):
    s = get_task("cwe").samples(tokenizer, 1024, 1, seed=0)[0]
    assert all(w in LEXICON for w in s.answers)   # English words while they suffice
    user = s.messages[-1]["content"]
    assert user.count("Question:") == 2            # RULER's one worked example first
    example = user.split("\n\n")[0]
    assert not set(s.answers) & set(re.findall(r"\d+\. (\w+)", example))
    big = get_task("cwe").samples(tokenizer, 8192, 1, seed=0)[0]
    assert 8192 - big.n_tokens <= 60               # pseudo-words fill the longer list
    assert not any(a != b and a in b for a in LEXICON for b in LEXICON)


def test_fwe_zipf_counts(tokenizer):
    s = get_task("fwe").samples(tokenizer, 2048, 1, seed=0)[0]
    assert s.n_tokens <= 2048 and 2048 - s.n_tokens <= 60
    text = s.messages[-1]["content"].split("\n")[1]
    counts = Counter(text.split())
    ranked = [w for w, _ in counts.most_common()]
    assert ranked[0] == "..." and tuple(ranked[1:4]) == s.answers
    assert counts[s.answers[2]] > counts[ranked[4]]  # the answer is well defined
    n = s.metadata["size"]
    assert counts[s.answers[0]] == int(n * 2 ** -2 / zeta(2))
    assert all(re.fullmatch(r"[a-z]{6}", w) for w in s.answers)
    assert s.prompt.endswith("the three most frequently appeared words are:")


def test_zeta():
    assert zeta(2) == pytest.approx(math.pi ** 2 / 6, abs=1e-12)
    assert zeta(4) == pytest.approx(math.pi ** 4 / 90, abs=1e-12)
    with pytest.raises(ValueError, match="alpha must be > 1"):
        FrequentWordsTask(alpha=1.0)


def test_string_match_all_scoring(tokenizer):
    assert string_match_all("Apple, banana", ["apple", "banana", "cherry"]) == pytest.approx(2 / 3)
    assert string_match_all("", ["a"]) == 0.0 and string_match_all("x", []) == 0.0
    task = get_task("cwe")
    s = task.samples(tokenizer, 512, 1, seed=0)[0]
    listed = " ".join(f"{i + 1}. {w.upper()}" for i, w in enumerate(s.answers))
    assert task.score(listed, s) == 1.0
    assert task.score(" ".join(s.answers[:4]), s) == pytest.approx(0.4)


def test_too_short_is_one_line(tokenizer):
    with pytest.raises(ValueError, match=r"length 128 tokens is too short"):
        get_task("fwe").samples(tokenizer, 128, 1, seed=0)
