"""Batched evaluation (`EvalConfig.batch_size`, ``--batch-size``) on a tiny random Llama in
fp32: the same answers and scores as one sample at a time, with prompts of different lengths
in one batch (left padding), for full attention, absolute k (grouped up front) and k_ratio
(split while decoding); settings that cannot batch fall back with a note; an interrupted
batched run resumes exactly."""

import json

import pytest
from typer.testing import CliRunner

import topkattn.evaluation.batch as B
from tests.helpers import tiny_llama_for
from topkattn.config import TopKConfig
from topkattn.errors import InputError
from topkattn.evaluation import EvalConfig, EvalInterrupted, read_results, run_eval

#: wall times, and the batch a line was decoded in, differ between runs
VOLATILE = ("seconds", "prefill_seconds", "batch")


@pytest.fixture(scope="module")
def tiny(tokenizer):
    return tiny_llama_for(tokenizer, max_position_embeddings=1024)


def _cfg(out, **kw):
    base = dict(tasks=("passkey",), lengths=(256,), ks=("full", "4", "50%"), samples=3,
                seed=0, max_new_tokens=4, out=out, progress=False)
    base.update(kw)
    return EvalConfig(**base)


def _stable(rows):
    return {(r["task"], r["sample_id"], r["k"]):
            json.dumps({k: v for k, v in r.items() if k not in VOLATILE}, sort_keys=True)
            for r in rows}


@pytest.fixture(scope="module")
def one_at_a_time(tiny, tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("batch1")
    run_eval(tiny, tokenizer, _cfg(out))
    return read_results(out / "results.jsonl")


@pytest.fixture
def splits(monkeypatch):
    """The number of parts of each `batch._split` of the test (1: no split)."""
    seen = []
    real_split = B._split

    def split(*a):
        parts = real_split(*a)
        seen.append(len(parts))
        return parts

    monkeypatch.setattr(B, "_split", split)
    return seen


def test_batched_equals_one_at_a_time(tiny, tokenizer, tmp_path, one_at_a_time, splits,
                                      capsys):
    run_eval(tiny, tokenizer, _cfg(tmp_path, batch_size=3))
    rows = read_results(tmp_path / "results.jsonl")
    assert _stable(rows) == _stable(one_at_a_time)
    assert {r["batch"] for r in rows} == {3}
    assert len({r["n_tokens"] for r in rows}) > 1  # left padding: lengths differ in the batch
    assert max(splits) > 1  # 50%: k changes at other steps for rows of other lengths
    assert "note:" not in capsys.readouterr().err  # nothing fell back to batch 1


def _batch_1_and_3(model, tokenizer, tmp_path, topk):
    """The stable result lines of k=4 under ``topk``, at batch size 1 and at 3."""
    runs = []
    for bs in (1, 3):
        cfg = _cfg(tmp_path / str(bs), ks=("4",), topk=topk, batch_size=bs)
        run_eval(model, tokenizer, cfg)
        runs.append(_stable(read_results(cfg.out / "results.jsonl")))
    return runs


def test_min_context_splits_and_equals_one_at_a_time(tiny, tokenizer, tmp_path, splits):
    # the prompts have 244 and 254 tokens: the shorter rows decode densely for two steps
    runs = _batch_1_and_3(tiny, tokenizer, tmp_path, TopKConfig(k=None, min_context=246))
    assert runs[0] == runs[1] and max(splits) == 2


def test_row_groups_keep_each_rows_decisions():
    lengths = [250, 243, 256, 236]
    assert B.row_groups(None, lengths, 4) == [[0, 1, 2, 3]]
    assert B.row_groups(TopKConfig(k=4), lengths, 4) == [[0, 1, 2, 3]]  # sparse everywhere
    assert B.row_groups(TopKConfig(k=240), lengths, 4) == [[0, 1, 2], [3]]  # 236: dense
    # k_ratio and min_context decide from the rows: one batch, split while decoding
    assert B.row_groups(TopKConfig(k=None, k_ratio=0.5), lengths, 4) == [[0, 1, 2, 3]]
    assert B.decides_by_rows(TopKConfig(k=4, min_context=240))
    assert not B.decides_by_rows(TopKConfig(k=4)) and not B.decides_by_rows(None)
    # sink: rows of one length only (sink positions are key slots 0.., padding in a padded row)
    assert B.row_groups(TopKConfig(k=4, sink=2), [250, 243, 250], 4) == [[0, 2], [1]]
    assert B.row_groups(TopKConfig(k=None, k_ratio=0.5, sink=2), [250, 243, 250], 4) == \
        [[0, 2], [1]]


def test_sink_batches_equal_one_at_a_time(tiny, tokenizer, tmp_path, capsys):
    # three prompts of two lengths: the two of equal length share a batch, the other decodes
    # alone; a shared left-padded batch would have lost the padded rows' sink
    runs = _batch_1_and_3(tiny, tokenizer, tmp_path, TopKConfig(k=None, sink=2))
    assert runs[0] == runs[1]
    assert "note:" not in capsys.readouterr().err  # no batch was refused and retried alone


@pytest.mark.parametrize("spec", ["window:2", "lightning"])
def test_selectors_with_a_range_path_batch_and_equal_one_at_a_time(tiny, tokenizer, tmp_path,
                                                                   capsys, spec):
    """Window and Lightning select within each row's own keys at decode (their key-range
    path), so left-padded batches give the answers of batch 1; with Top-k in the prefill too
    they decode one sample at a time."""
    import warnings

    from topkattn.selectors import parse_selector

    topk = TopKConfig(k=None, selector=parse_selector(spec))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the untrained Lightning Indexer says so
        runs = _batch_1_and_3(tiny, tokenizer, tmp_path, topk)
    assert runs[0] == runs[1]
    assert "note:" not in capsys.readouterr().err
    assert B.blocker(topk) is None
    assert "one sample at a time" in B.blocker(topk.with_(phases=("prefill", "decode")))


def test_settings_that_cannot_batch_fall_back(tiny, tokenizer, tmp_path, capsys, monkeypatch):
    from topkattn.selectors import parse_selector

    import topkattn.errors as E

    monkeypatch.setattr(E, "_SAID", set())  # notes are printed once per process

    def one(out, **kw):
        cfg = _cfg(out, ks=("4",), samples=2, max_new_tokens=2, **kw)
        run_eval(tiny, tokenizer, cfg)
        return _stable(read_results(out / "results.jsonl"))

    topk = TopKConfig(k=None, selector=parse_selector("quest:8"))
    assert one(tmp_path / "a", topk=topk) == one(tmp_path / "b", topk=topk, batch_size=2)
    assert "note: 4: selector QuestSelector decodes one sample at a time" in capsys.readouterr().err

    def broken(*a, **k):
        raise RuntimeError("no batches here")

    monkeypatch.setattr(B, "greedy_decode_rows", broken)
    assert one(tmp_path / "c", batch_size=2) == one(tmp_path / "d")
    err = capsys.readouterr().err
    assert "a batch of 2 rows failed (RuntimeError: no batches here)" in err
    notes = [x for x in err.splitlines() if x.startswith("note:")]
    assert len(notes) == 2 and notes[0].startswith("note: full: ")  # one line per setting


@pytest.mark.parametrize("bad", [0, -1, "2", 1.5, True])
def test_batch_size_is_validated(tmp_path, bad):
    with pytest.raises(InputError, match=rf"batch_size must be an integer >= 1, got {bad!r}"):
        _cfg(tmp_path, batch_size=bad)


def test_interrupted_batched_run_resumes_exactly(tiny, tokenizer, tmp_path, monkeypatch,
                                                  one_at_a_time):
    real = B.greedy_decode_rows
    calls = []

    def counted(*a, fail_after=None, **k):
        if fail_after is not None and len(calls) >= fail_after:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(B, "greedy_decode_rows", lambda *a, **k: counted(*a, fail_after=2, **k))
    with pytest.raises(EvalInterrupted) as e:
        run_eval(tiny, tokenizer, _cfg(tmp_path, batch_size=2))
    written = read_results(tmp_path / "results.jsonl")
    assert e.value.new == len(written) > 0 and len(written) < len(one_at_a_time)
    calls.clear()
    monkeypatch.setattr(B, "greedy_decode_rows", counted)
    run_eval(tiny, tokenizer, _cfg(tmp_path, batch_size=2))
    rows = read_results(tmp_path / "results.jsonl")
    # one line per (sample, k): nothing finished was decoded again
    assert len(rows) == len(one_at_a_time) and _stable(rows) == _stable(one_at_a_time)
    calls.clear()
    run_eval(tiny, tokenizer, _cfg(tmp_path, batch_size=2))
    assert calls == [] and len(read_results(tmp_path / "results.jsonl")) == len(rows)


def test_cli_batch_size(tiny_dir, tmp_path):
    import topkattn.cli as cli

    args = ["eval", "--model", str(tiny_dir), "--task", "passkey", "--lengths", "256",
            "--k", "4,full", "--samples", "2", "--max-new-tokens", "2", "--quiet",
            "--device", "cpu", "--out", str(tmp_path)]
    r = CliRunner().invoke(cli.app, args + ["--batch-size", "2"])
    assert r.exit_code == 0, r.output
    rows = read_results(tmp_path / "results.jsonl")
    assert len(rows) == 4 and {x["batch"] for x in rows} == {2}
    assert json.loads((tmp_path / "eval_config.json").read_text())["batch_size"] == 2
    r = CliRunner().invoke(cli.app, args + ["--batch-size", "0"])
    assert r.exit_code != 0 and "batch_size must be an integer >= 1, got 0" in str(
        r.exception or r.output)
