"""Evaluation runner on a tiny random Llama: JSONL lines, resume, reports, validation."""

import json

import pytest
import torch

from tests.helpers import tiny_llama_for
from topkattn.config import TopKConfig, TopKConfigError
from topkattn.evaluation import EvalConfig, parse_length, read_results, run_eval
from topkattn.evaluation import runner as R


@pytest.fixture(scope="module")
def tiny(tokenizer):
    """A 2-layer random Llama with the embedded tokenizer's vocabulary (context 1024)."""
    return tiny_llama_for(tokenizer, max_position_embeddings=1024)


def _cfg(out, **kw):
    base = dict(tasks=("passkey", "vartrack"), lengths=("256",), ks=("4", "full", "50%"),
                samples=2, seed=0, max_new_tokens=3, out=out, progress=False)
    base.update(kw)
    return EvalConfig(**base)


def test_parse_length():
    assert parse_length("1k") == 1024 and parse_length("2K") == 2048
    assert parse_length("1024") == 1024 and parse_length(300) == 300
    assert parse_length("1.5k") == 1536
    for bad in ("x", "-1", "0", "k"):
        with pytest.raises(ValueError, match="length"):
            parse_length(bad)


def test_config_validation(tmp_path):
    c = _cfg(tmp_path, topk=TopKConfig(k=None, sink=2, min_context=16))
    assert c.ks == ("full", "4", "50%") and c.lengths == (256,)
    settings = dict(c.settings())
    assert list(settings) == ["full", "4", "50%"] and settings["full"] is None
    t = settings["4"]
    assert t.k == 4 and t.k_ratio is None and t.phases == ("decode",)
    assert t.sink == 2 and t.min_context == 16  # the base's other fields are kept
    assert settings["50%"].k_ratio == 0.5 and settings["50%"].k is None
    assert c.ks == _cfg(tmp_path, ks="4,full,50%,4").ks  # a string, duplicates dropped
    with pytest.raises(ValueError, match="unknown task 'bogus'"):
        _cfg(tmp_path, tasks=("bogus",))
    with pytest.raises(TopKConfigError):
        _cfg(tmp_path, ks=("zero",))
    with pytest.raises(ValueError, match="samples"):
        _cfg(tmp_path, samples=0)
    with pytest.raises(ValueError, match="topk must be a TopKConfig"):
        _cfg(tmp_path, topk="quest:16")
    with pytest.raises(ValueError, match="max_new_tokens"):
        _cfg(tmp_path, max_new_tokens=0)


def test_run_resume_and_reports(tiny, tokenizer, tmp_path, monkeypatch):
    cfg = _cfg(tmp_path)
    s = run_eval(tiny, tokenizer, cfg)
    rows = read_results(tmp_path / "results.jsonl")
    assert len(rows) == 2 * 1 * 2 * 3  # tasks x lengths x samples x ks
    r = rows[0]
    for key in ("task", "length", "depth", "sample_id", "k", "prediction", "answers", "score",
                "seconds"):
        assert key in r
    assert {x["k"] for x in rows} == {"full", "4", "50%"}
    assert all(x["new_tokens"] <= 3 for x in rows)
    for name in ("summary.json", "table.md", "accuracy.png", "eval_config.json"):
        assert (tmp_path / name).stat().st_size > 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(summary["cells"]) == 2 * 3 and all(c["n"] == 2 for c in summary["cells"])
    table = (tmp_path / "table.md").read_text()
    assert table.splitlines()[0] == "| task | length | n | full | k=4 | k=50% |"
    assert "| passkey | 256 | 2 |" in table and "| vartrack | 256 | 2 |" in table
    assert s.accuracy("passkey", 256, "full") is not None and s.table() == table

    # rerun: nothing is decoded again
    calls = []
    import topkattn.generation as G

    real = G.greedy_decode
    monkeypatch.setattr(G, "greedy_decode", lambda *a, **k: calls.append(1) or real(*a, **k))
    run_eval(tiny, tokenizer, cfg)
    assert calls == [] and len(read_results(tmp_path / "results.jsonl")) == 12

    # an interrupted run (last lines lost, a torn line) redoes only what is missing
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    (tmp_path / "results.jsonl").write_text("\n".join(lines[:-2]) + "\n{\"task\": \"pass")
    run_eval(tiny, tokenizer, cfg)
    assert len(calls) == 2
    assert len(read_results(tmp_path / "results.jsonl")) == 12


def test_resume_refuses_other_settings(tiny, tokenizer, tmp_path):
    run_eval(tiny, tokenizer, _cfg(tmp_path, tasks=("passkey",), samples=1, ks=("full",)))
    with pytest.raises(ValueError, match=r"samples=1 \(now 2\)"):
        run_eval(tiny, tokenizer, _cfg(tmp_path, tasks=("passkey",), samples=2))
    with pytest.raises(ValueError, match=r"min_context=0 \(now 8\)"):  # a Top-k setting
        run_eval(tiny, tokenizer, _cfg(tmp_path, tasks=("passkey",), samples=1,
                                       topk=TopKConfig(k=None, min_context=8)))
    # new tasks, lengths and ks are fine
    run_eval(tiny, tokenizer, _cfg(tmp_path, tasks=("passkey", "kv"), samples=1,
                                   ks=("full", "4")))
    assert len(read_results(tmp_path / "results.jsonl")) == 4


def test_topk_decode_uses_sparsify(tiny, tokenizer, tmp_path, monkeypatch):
    import topkattn.generation as G

    seen = []
    real = G._sparsify
    monkeypatch.setattr(G, "_sparsify", lambda m, c: seen.append(c) or real(m, c))
    run_eval(tiny, tokenizer, _cfg(tmp_path, tasks=("passkey",), samples=1, ks=("4", "full")))
    assert seen[0] is None and seen[1].k == 4 and seen[1].phases == ("decode",)


def test_old_config_folder_resumes_with_the_same_settings(tiny, tokenizer, tmp_path):
    """A folder written before the Top-k settings moved under "topk" (flat fields) still
    resumes with equal settings and refuses others."""
    run_eval(tiny, tokenizer, _cfg(tmp_path, tasks=("passkey",), samples=1, ks=("full",)))
    path = tmp_path / "eval_config.json"
    d = json.loads(path.read_text())
    flat = {k: v for k, v in d.items() if k != "topk"}
    flat.update(sink=0, local=0, dense_layers=[], granularity="query_head", selector="exact",
                backend="auto")
    path.write_text(json.dumps(flat))
    run_eval(tiny, tokenizer, _cfg(tmp_path, tasks=("passkey",), samples=1, ks=("full",)))
    path.write_text(json.dumps(flat | {"selector": "quest:8"}))
    with pytest.raises(ValueError, match=r"selector='quest:page_size=8' \(now 'exact'\)"):
        run_eval(tiny, tokenizer, _cfg(tmp_path, tasks=("passkey",), samples=1, ks=("full",)))


def test_k_larger_than_context_equals_full(tiny, tokenizer, tmp_path):
    run_eval(tiny, tokenizer, _cfg(tmp_path, tasks=("passkey",), ks=("100000", "full"),
                                   max_new_tokens=4))
    rows = read_results(tmp_path / "results.jsonl")
    by = {(r["sample_id"], r["k"]): r["prediction"] for r in rows}
    for sid in {r["sample_id"] for r in rows}:
        assert by[(sid, "full")] == by[(sid, "100000")]


def test_length_beyond_context(tiny, tokenizer, tmp_path):
    with pytest.raises(ValueError, match=r"length 2048 .*max_position_embeddings=1024"):
        run_eval(tiny, tokenizer, _cfg(tmp_path, lengths=("2k",)))
    assert not (tmp_path / "results.jsonl").exists()


@pytest.mark.slow
def test_embedded_model_passkey_full_and_topk(embedded_model, tmp_path):
    """The embedded SmolLM2-135M answers a ~1k-token passkey with full attention and k=64."""
    model, tok = embedded_model
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # much faster on a busy shared CPU
    try:
        s = run_eval(model, tok, EvalConfig(tasks=("passkey",), lengths=(1024,),
                                            ks=("64", "full"), samples=1, out=tmp_path,
                                            progress=False))
    finally:
        torch.set_num_threads(threads)
    assert s.accuracy("passkey", 1024, "full") == 1.0
    assert s.accuracy("passkey", 1024, "64") == 1.0
