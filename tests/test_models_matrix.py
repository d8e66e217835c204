"""The model compatibility matrix (`topkattn.compat_matrix`), run on every tiny architecture:
each family is supported (Top-k with k >= context equals the model's own attention, and with
k = 2 equals eager attention restricted to the exact top-2 set) or refused with a one-line
reason; and docs/models.md shows what this run finds (regenerate it with
``PYTHONPATH=src python scripts/model_matrix.py --write docs/models.md``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from topkattn.compat_matrix import TOL, doc_rows, run_matrix, stable

DOC = Path(__file__).resolve().parents[1] / "docs" / "models.md"
FIX = "PYTHONPATH=src python scripts/model_matrix.py --write docs/models.md"


@pytest.fixture(scope="module")
def rows():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_matrix()
    finally:
        torch.set_num_threads(threads)


def test_every_family_is_supported_exactly_or_refused_with_a_reason(rows):
    assert len(rows) >= 30
    by_status: dict[str, list[str]] = {}
    for r in rows:
        by_status.setdefault(r["status"], []).append(r["arch"])
        if r["status"] == "supported":
            assert r["check"] == "ok"
            assert r["dense_diff"] <= TOL and r["dense_tokens"], r  # k >= context: eager
            assert r["sparse_diff"] <= TOL, r  # k = 2: the exact top-2 set
        else:
            assert r["status"] in ("not supported", "not supported (on purpose)"), r
            assert r["why"] and "\n" not in r["why"] and len(r["why"]) < 600, r
    # the families users run: each must be in the matrix, supported or refused on purpose
    families = {"llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "gemma2", "gemma3_text",
                "phi3", "olmo2", "granite", "gpt_oss", "deepseek_v3"}
    assert families <= {r["model_type"] for r in rows}
    for must in ("llama", "qwen3", "qwen3_moe", "deepseek_v3", "gemma3_text", "olmo2"):
        assert all(r["status"] == "supported" for r in rows if r["model_type"] == must), must
    refused = {r["arch"]: r["why"] for r in rows if r["status"] != "supported"}
    assert "caps its attention logits" in refused["gemma2 (softcap)"]
    assert "sink logits" in refused["gpt_oss (sinks)"]
    assert "encoder-decoder" in refused["t5 (encoder-decoder)"]
    assert "no attention layers" in refused["mamba (no attention)"]


def test_docs_models_md_matches_the_run(rows):
    doc = doc_rows(DOC.read_text())
    want = [stable(r) for r in rows]
    got = [stable(r) for r in doc]
    missing = [w[0] for w in want if w[0] not in {g[0] for g in got}]
    assert not missing, f"docs/models.md lacks {missing}; run {FIX}"
    for w, g in zip(want, got):
        assert w == g, f"docs/models.md is stale for {w[0]}: {g} there, {w} now; run {FIX}"
    assert len(got) == len(want), f"docs/models.md lists other architectures; run {FIX}"


def test_readme_links_the_matrix():
    readme = (DOC.parents[1] / "README.md").read_text()
    assert "docs/models.md" in readme
