"""Fidelity analysis on a tiny random Llama (CPU)."""

import json

import pytest
import torch

from tests.selectors.tiny import ToyTokenizer, random_prompt, tiny_llama
from topkattn.analysis import fidelity as F
from topkattn.selectors import make_selector


@pytest.fixture(scope="module")
def model():
    return tiny_llama(seed=2, init=0.1)


def test_step_metrics_exact_and_full():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 1, 8, generator=g), torch.randn(1, 2, 50, 8, generator=g),
               torch.randn(1, 2, 50, 8, generator=g))
    ctx = make_selector("exact")
    from topkattn.selectors import SelectionContext

    idx = ctx.select(q, k, SelectionContext(topk=10, scale=8**-0.5))
    m = F.step_metrics(q, k, v, idx, 10, 8**-0.5)
    assert torch.allclose(m["precision"], torch.ones(1, 4))
    assert torch.allclose(m["out_err"], torch.zeros(1, 4), atol=1e-6)
    all_idx = torch.arange(50).view(1, 1, 1, 50).expand(1, 2, 1, 50)
    m = F.step_metrics(q, k, v, all_idx, 10, 8**-0.5)
    assert torch.allclose(m["mass_recall"], torch.ones(1, 4))


def test_measure_fidelity(model, tmp_path):
    prompts = [random_prompt(120, seed=i) for i in range(2)]
    res = F.measure_fidelity(model, ToyTokenizer(), prompts, 16,
                             ["exact", "precision:0.5", "precision:0.5,protect=1", "random",
                              "window", "quest:8", "spans:8"], max_new_tokens=4, progress=False)
    assert res["exact"]["precision"] == pytest.approx(1.0)
    assert res["exact"]["out_err"] == pytest.approx(0.0, abs=1e-5)
    assert abs(res["precision:0.5"]["precision"] - 0.5) < 0.05
    for lab, r in res.items():
        assert len(r["per_layer"]["precision"]) == 2
        assert len(r["per_head"]["mass_recall"][0]) == 4
        assert r["mass_recall"] <= res["exact"]["mass_recall"] + 1e-6  # exact set: most mass
    md = F.markdown_table(res, {"exact": 1.0, "random": 0.5, "full": 1.0})
    assert "| exact | 1.000 |" in md and "full (dense)" in md
    assert F.plot_per_layer(res, tmp_path / "layers.png").stat().st_size > 0
    acc = {"exact": 1.0, "random": 0.2, "precision:0.5": 0.6, "window": 0.3}
    corr = F.correlate(res, acc)
    assert corr["n"] == 4 and corr["r_precision"] > 0.9
    assert F.plot_downstream(res, acc, tmp_path / "down.png", full=1.0).stat().st_size > 0
    json.loads(F.write_json(res, tmp_path / "f.json").read_text())


def test_pearson():
    assert F.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert F.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert F.pearson([1, 1], [1, 2]) != F.pearson([1, 1], [1, 2])  # nan


class _Task:
    def score(self, prediction, sample):
        return float(sample.answers[0] in prediction)


class _Sample:
    def __init__(self, prompt, answer):
        self.prompt, self.answers = prompt, (answer,)


def test_run_downstream_branches_from_one_prefill(model):
    tok = ToyTokenizer()
    prompt = random_prompt(100, seed=5)
    ids = tok(prompt).input_ids
    dense = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    answer = tok.decode(dense[0, 100:])
    rows = F.run_downstream(model, tok, _Task(), [_Sample(prompt, answer)], 8,
                            ["precision:1.0", "exact", "random"], max_new_tokens=4,
                            progress=False)
    acc = {r.selector: r for r in rows}
    assert acc["full"].accuracy == 1.0 and acc["full"].predictions[0] == answer
    # precision:1.0 is exact top-k: identical generations
    assert acc["precision:1.0"].predictions == acc["exact"].predictions
