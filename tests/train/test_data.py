"""Training data: JSONL formats, loss masks, synthetic sets disjoint from evaluation sets."""

from __future__ import annotations

import json

import pytest

from topkattn.train.data import (IGNORE_INDEX, TRAIN_SEED_BASE, batch_plan, collate,
                                 load_examples, parse_synthetic, synthetic_records, train_seed)


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _loss_text(tok, ex):
    return tok.decode([t for t in ex.labels if t != IGNORE_INDEX])


def test_chat_and_prompt_completion_loss_masks(tok, tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in [
        {"messages": [{"role": "system", "content": "be brief"},
                      {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
                      {"role": "user", "content": "3+3?"},
                      {"role": "assistant", "content": "six"}]},
        {"prompt": "Q: capital of France?\nA:", "completion": " Paris"},
    ]) + "\n")
    chat, pc = load_examples(tok, str(p), 512)
    assert _loss_text(tok, chat) == "4<|im_end|>\nsix<|im_end|>\n"
    assert _loss_text(tok, pc) == " Paris<|im_end|>"
    assert "2+2" not in _loss_text(tok, chat)


def test_bad_records_name_the_line(tok, tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"prompt": "x", "completion": "y"}\n{"text": "no"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        load_examples(tok, str(p), 64)
    with pytest.raises(FileNotFoundError):
        load_examples(tok, str(tmp_path / "none.jsonl"), 64)


def test_parse_synthetic():
    s = parse_synthetic("synthetic:passkey,kv@2kx50", 512, 10)
    assert s.tasks == ("passkey", "kv") and s.length == 2048 and s.n == 50
    s = parse_synthetic("synthetic:niah_multikey", 512, 10)
    assert s.length == 512 and s.n == 10
    with pytest.raises(ValueError, match="unknown synthetic task"):
        parse_synthetic("synthetic:nope@512", 512, 10)


def test_synthetic_training_set_shares_no_sample_with_eval(tok):
    """Training seeds live in their own range: no prompt (or needle) of an eval set of seeds
    0..4 occurs in the training set, for every synthetic task."""
    from topkattn.tasks import TASK_NAMES, get_task

    spec = parse_synthetic("synthetic:" + ",".join(TASK_NAMES) + "@700x6", 700, 6)
    train_recs = synthetic_records(tok, spec, seed=0)
    assert len(train_recs) == 6 * len(TASK_NAMES)
    train_prompts = {r["prompt"] for r in train_recs}
    assert len(train_prompts) == len(train_recs)
    train_answers = {(r["task"], r["completion"].strip()) for r in train_recs}
    assert all(r["completion"].startswith(" ") for r in train_recs)  # after the answer prefix
    for name in TASK_NAMES:
        for eval_seed in range(5):
            for s in get_task(name).samples(tok, 700, 6, seed=eval_seed):
                assert s.prompt not in train_prompts
                assert (name, s.answer) not in train_answers
    assert train_seed(0) == TRAIN_SEED_BASE and train_seed(3) == TRAIN_SEED_BASE + 3
    with pytest.raises(ValueError):
        train_seed(-1)


def test_synthetic_examples_answer_only_loss(tok):
    exs = load_examples(tok, "synthetic:passkey@400x3", 512)
    for e in exs:
        text = _loss_text(tok, e)
        assert text.strip().removesuffix("<|im_end|>").strip().isdigit()


def test_batch_plan_buckets_and_determinism():
    lengths = [5, 100, 7, 98, 6, 99, 8, 97] * 4
    a = batch_plan(lengths, 4, seed=1, epoch=0, bucket_batches=8)
    assert a == batch_plan(lengths, 4, seed=1, epoch=0, bucket_batches=8)
    assert a != batch_plan(lengths, 4, seed=1, epoch=1, bucket_batches=8)
    assert sorted(i for b in a for i in b) == list(range(len(lengths)))
    for b in a:  # bucketing keeps short and long apart
        ls = [lengths[i] for i in b]
        assert max(ls) - min(ls) < 50


def test_collate_pads_right():
    from topkattn.train.data import Example

    b = collate([Example([1, 2, 3], [-100, 2, 3]), Example([4], [4])], pad_id=0)
    assert b["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]
