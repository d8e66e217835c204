"""An interrupted eval loses no finished work and repeats none: Ctrl-C after N results and a
rerun give the results of an uninterrupted run; a line torn by a crash mid-write is cut off
with a warning and computed again; ``--report-only`` only reads results, refuses a folder
without any, and never replaces a summary with less."""

import json

import pytest

from topkattn.errors import InputError, MissingFileError
from topkattn.evaluation import EvalConfig, EvalInterrupted, read_results, report_only, run_eval
from topkattn.evaluation.records import ResultsWarning, repair_tail
from tests.evaluation.decode_counter import count_decodes

VOLATILE = ("seconds", "prefill_seconds")  # wall times differ between runs


def _cfg(out, **kw):
    base = dict(tasks=("passkey", "kv"), lengths=(256,), ks=("full", "4"), samples=2, seed=0,
                max_new_tokens=2, out=out, progress=False)
    base.update(kw)
    return EvalConfig(**base)


def _decodes(monkeypatch, fail_after=None):
    return count_decodes(monkeypatch, fail_after)


def _stable(rows):
    return sorted((json.dumps({k: v for k, v in r.items() if k not in VOLATILE}, sort_keys=True)
                   for r in rows))


@pytest.fixture(scope="module")
def reference(tiny_lm, tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    run_eval(tiny_lm, tokenizer, _cfg(out))
    return out


@pytest.mark.parametrize("after", [1, 5])  # inside the first sample; a few samples in
def test_interrupt_then_resume_equals_uninterrupted(tiny_lm, tokenizer, tmp_path, monkeypatch,
                                                    reference, after):
    _decodes(monkeypatch, fail_after=after)
    with pytest.raises(EvalInterrupted) as e:
        run_eval(tiny_lm, tokenizer, _cfg(tmp_path))
    assert e.value.new == after and e.value.total == 8
    assert f"interrupted after {after} of 8 results" in str(e.value)
    assert len(read_results(tmp_path / "results.jsonl")) == after
    assert not (tmp_path / "summary.json").exists()

    calls = _decodes(monkeypatch)
    run_eval(tiny_lm, tokenizer, _cfg(tmp_path))
    assert len(calls) == 8 - after  # nothing finished is decoded again
    rows = read_results(tmp_path / "results.jsonl")
    assert _stable(rows) == _stable(read_results(reference / "results.jsonl"))
    ours, ref = (json.loads((d / "summary.json").read_text()) for d in (tmp_path, reference))
    assert ours["cells"] == ref["cells"]


def test_torn_last_line_is_cut_and_redone(tiny_lm, tokenizer, tmp_path, monkeypatch, reference):
    path = tmp_path / "results.jsonl"
    lines = (reference / "results.jsonl").read_text().splitlines()
    path.write_text("\n".join(lines[:5]) + "\n" + lines[5][:40])  # crash mid-write of line 6
    calls = _decodes(monkeypatch)
    with pytest.warns(ResultsWarning, match=r"removed a torn last line \(40 bytes"):
        run_eval(tiny_lm, tokenizer, _cfg(tmp_path))
    assert len(calls) == 3  # the torn result and the two never started
    text = path.read_text()
    assert lines[5][:40] + "\n" not in text and lines[5][:40] + "{" not in text
    assert len(text.splitlines()) == 8 == len(read_results(path))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert all(c["n"] == 2 for c in summary["cells"])


def test_whole_last_line_without_newline_is_kept(tmp_path):
    path = tmp_path / "results.jsonl"
    row = {"task": "passkey", "length": 256, "sample_id": "a", "k": "full", "score": 1.0}
    path.write_text(json.dumps(row))  # the crash fell between the object and its newline
    assert repair_tail(path) == 0
    assert path.read_text() == json.dumps(row) + "\n" and read_results(path) == [row]


def test_damaged_line_is_skipped_with_a_warning(tmp_path, reference):
    lines = (reference / "results.jsonl").read_text().splitlines()
    (tmp_path / "results.jsonl").write_text("\n".join([lines[0], "{garbage", *lines[1:]]) + "\n")
    (tmp_path / "eval_config.json").write_text((reference / "eval_config.json").read_text())
    with pytest.warns(ResultsWarning, match=r"skipped 1 unreadable line\(s\) \(line 2\)"):
        assert len(read_results(tmp_path / "results.jsonl")) == 8
    with pytest.warns(ResultsWarning):
        s = report_only(_cfg(tmp_path))
    assert sum(c.n for c in s.cells) == 8


def test_report_only_reads_and_refuses(tmp_path, reference):
    with pytest.raises(MissingFileError, match=r"no results to report: no results file"):
        report_only(_cfg(tmp_path))
    (tmp_path / "results.jsonl").write_text("")
    with pytest.raises(MissingFileError, match=r"holds no finished result"):
        report_only(_cfg(tmp_path))
    with pytest.raises(InputError, match=r"no results in .* for tasks \['niah_multikey'\].*"
                                         r"the folder holds tasks \['kv', 'passkey'\]"):
        report_only(_cfg(reference, tasks=("niah_multikey",)))

    before = {p.name: p.read_bytes() for p in reference.iterdir()}
    with pytest.raises(InputError, match=r"kv 256 k=full: 2 -> 0 samples.*nothing was written"):
        report_only(_cfg(reference, tasks=("passkey",)))
    assert {p.name: p.read_bytes() for p in reference.iterdir()} == before
    s = report_only(_cfg(reference))  # the same selection: same numbers, results untouched
    after = {p.name: p.read_bytes() for p in reference.iterdir()}
    assert after["results.jsonl"] == before["results.jsonl"]
    assert json.loads(after["summary.json"])["cells"] == json.loads(before["summary.json"])[
        "cells"] and after["table.md"] == before["table.md"] and s.table() == after[
        "table.md"].decode()


def test_cli_interrupt_says_where_it_stopped(tiny_dir, tmp_path, monkeypatch, capsys):
    from tests.helpers import run_main

    _decodes(monkeypatch, fail_after=3)
    args = ["eval", "--model", str(tiny_dir), "--task", "passkey", "--lengths", "256", "--k",
            "4,full", "--samples", "2", "--max-new-tokens", "2", "--quiet", "--device", "cpu",
            "--out", str(tmp_path)]
    code, out, err = run_main(monkeypatch, capsys, *args)
    assert code == 130
    assert err.strip().splitlines()[-1:] == [  # (above it: transformers' loading bar)
        f"interrupted after 3 of 4 results (3 new) in {tmp_path / 'results.jsonl'}; rerun the "
        "same command to resume"]
    calls = _decodes(monkeypatch)
    code, out, err = run_main(monkeypatch, capsys, *args)
    assert code == 0 and len(calls) == 1 and len(read_results(tmp_path / "results.jsonl")) == 4
    code, out, err = run_main(monkeypatch, capsys, "eval", "--report-only", "--out",
                              str(tmp_path / "empty"))
    assert code == 2 and err.startswith("error: no results to report")


def test_saved_config_reads_back(tmp_path):
    """``--report-only`` rebuilds the run's settings from eval_config.json."""
    from topkattn.config import TopKConfig
    from topkattn.selectors import QuestSelector

    cfg = _cfg(tmp_path, ks=("5%", "4"), followup_max_new_tokens=7,
               topk=TopKConfig(k=None, sink=2, dense_layers=(1,), selector=QuestSelector(8)))
    back = EvalConfig.from_json(json.loads(json.dumps(cfg.to_json())))
    assert back == cfg and back.settings() == cfg.settings()
    assert EvalConfig.from_json(cfg.to_json(), tasks=("kv",)).tasks == ("kv",)
