"""Fidelity analysis on a tiny random Llama (CPU)."""

import json

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

from matplotlib.colors import to_rgb

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


def _pixels_near(img, color, tol=0.08):
    """Pixels of an RGB(A) float image within ``tol`` of a matplotlib colour."""
    return int((np.abs(img[..., :3] - np.asarray(to_rgb(color))).max(-1) < tol).sum())


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
    img = mpimg.imread(F.plot_per_layer(res, tmp_path / "layers.png", title="per layer"))
    third = img.shape[1] // 3
    for i in range(len(res)):  # one line colour per selector, drawn in each of the 3 panels
        for p in range(3):
            assert _pixels_near(img[:, p * third:(p + 1) * third], f"C{i}") > 15, (i, p)
    acc = {"exact": 1.0, "random": 0.2, "precision:0.5": 0.6, "window": 0.3}
    corr = F.correlate(res, acc)
    assert corr["n"] == 4 and corr["r_precision"] > 0.9
    img = mpimg.imread(F.plot_downstream(res, acc, tmp_path / "down.png", full=1.0))
    # blue: precision:p (one point per panel), green: the other selectors, no red (no protect
    # in acc), the gray full-attention line across both panels
    assert _pixels_near(img, "tab:blue") > 20 and _pixels_near(img, "tab:green") > 60
    assert _pixels_near(img, "tab:red") == 0
    rgb = img[..., :3]
    grey = ((rgb.max(-1) - rgb.min(-1)) < 0.03) & (rgb.mean(-1) > 0.4) & (rgb.mean(-1) < 0.75)
    assert grey.sum(1).max() > img.shape[1] * 0.25  # a dashed line over most of both panels
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


def test_step_metrics_kv_group_exact_set_is_the_group_sum():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 4, 1, 8, generator=g), torch.randn(1, 2, 40, 8, generator=g),
               torch.randn(1, 2, 40, 8, generator=g))
    from topkattn.selectors import SelectionContext

    idx = make_selector("exact").select(q, k, SelectionContext(topk=6, scale=8**-0.5,
                                                               granularity="kv_group"))
    assert idx.shape[1] == 2  # one set per KV head
    m = F.step_metrics(q, k, v, idx, 6, 8**-0.5, "kv_group")
    assert torch.allclose(m["precision"], torch.ones(1, 4))
    per_head = F.step_metrics(q, k, v, idx, 6, 8**-0.5)  # against each head's own top-k
    assert float(per_head["precision"].min()) < 1.0


def test_measure_fidelity_takes_a_topk_config(model):
    from topkattn.config import TopKConfig

    prompts = [random_prompt(120, seed=3)]
    tok = ToyTokenizer()
    by_int = F.measure_fidelity(model, tok, prompts, 16, ["random"], max_new_tokens=2,
                                progress=False)
    by_cfg = F.measure_fidelity(model, tok, prompts, TopKConfig(k=16), ["random"],
                                max_new_tokens=2, progress=False)
    assert by_cfg["random"]["precision"] == pytest.approx(by_int["random"]["precision"])
    # dense layers and min_context are not measured; a ratio is resolved per step
    res = F.measure_fidelity(model, tok, prompts, TopKConfig(k=None, k_ratio=0.1,
                                                             dense_layers=(1,)),
                             ["exact"], max_new_tokens=2, progress=False)
    assert list(res["exact"]["steps"]) == ["0"] and res["exact"]["precision"] == pytest.approx(1)
    res = F.measure_fidelity(model, tok, prompts, TopKConfig(k=16, min_context=10_000),
                             ["exact"], max_new_tokens=2, progress=False)
    assert res["exact"]["steps"] == {}
    with pytest.raises(ValueError, match="not k=full"):
        F.measure_fidelity(model, tok, prompts, TopKConfig(k=None), ["exact"], progress=False)


def test_run_downstream_uses_the_base_config(model, monkeypatch):
    from topkattn.config import TopKConfig
    import topkattn.generation as G

    seen = []
    real = G._sparsify
    monkeypatch.setattr(G, "_sparsify", lambda m, c: seen.append(c) or real(m, c))
    prompt = random_prompt(60, seed=4)
    base = TopKConfig(k=8, sink=1, local=2, min_context=4, backend="reference")
    F.run_downstream(model, ToyTokenizer(), _Task(), [_Sample(prompt, "1")], base,
                     ["quest:8", "random"], max_new_tokens=1, progress=False)
    assert seen[0] is None
    for c, name in zip(seen[1:], ("QuestSelector", "RandomSelector")):
        assert type(c.selector).__name__ == name
        assert (c.k, c.sink, c.local, c.min_context, c.backend) == (8, 1, 2, 4, "reference")


def test_fidelity_config_validation():
    from topkattn.config import TopKConfig

    cfg = F.FidelityConfig(selectors="exact,precision:0.5,protect=1,quest", length="1k")
    assert cfg.selectors == ("exact", "precision:0.5,protect=1", "quest")
    assert cfg.length == 1024 and cfg.topk.k == 64
    swept = F.FidelityConfig(selectors=("exact",), downstream=True, protect=2)
    assert swept.selectors[0] == "exact" and "precision:0.2,protect=2" in swept.selectors
    assert F.FidelityConfig(selectors=("exact",), downstream=True, sweep=False).selectors == (
        "exact",)
    for bad, match in [(dict(topk=TopKConfig(k=None)), "not k=full"),
                       (dict(topk=64), "topk must be a TopKConfig"),
                       (dict(selectors="bogus"), "unknown selector 'bogus'"),
                       (dict(task="nope"), "unknown task 'nope'"),
                       (dict(samples=0), "samples must be an integer >= 1"),
                       (dict(length="2x"), "got '2x'")]:
        with pytest.raises(ValueError, match=match):
            F.FidelityConfig(**bad)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tests.train.conftest import make_tiny_model_dir

    return str(make_tiny_model_dir(tmp_path_factory.mktemp("tiny-fid")))


def test_cli_is_a_thin_wrapper_of_run_fidelity(model_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from topkattn.cli import app

    seen = []
    real = F.run_fidelity
    monkeypatch.setattr(F, "run_fidelity", lambda m, t, c: seen.append(c) or real(m, t, c))
    out = tmp_path / "fid"
    r = CliRunner().invoke(app, [
        "fidelity", "--model", model_dir, "--task", "passkey", "--length", "300",
        "--samples", "1", "--steps", "2", "--selector", "exact,random", "--k", "8",
        "--granularity", "kv_group", "--sink", "1", "--min-context", "4", "--device", "cpu",
        "--quiet", "--out", str(out), "--downstream", "--no-sweep", "--max-new-tokens", "1",
        "--backend", "reference"])
    assert r.exit_code == 0, r.output
    (cfg,) = seen
    assert cfg.selectors == ("exact", "random") and cfg.downstream
    t = cfg.topk
    assert (t.k, t.granularity, t.sink, t.min_context, t.backend, t.selector) == (
        8, "kv_group", 1, 4, "reference", None)
    data = json.loads((out / "fidelity.json").read_text())
    assert data["k"] == 8 and data["config"]["topk"]["granularity"] == "kv_group"
    assert data["selectors"]["exact"]["precision"] == pytest.approx(1.0)
    for name in ("fidelity.md", "fidelity_layers.png", "downstream.json",
                 "fidelity_downstream.png"):
        assert (out / name).stat().st_size > 0
    assert "| exact | 1.000 |" in r.output


@pytest.mark.parametrize("args,msg", [
    (["--k", "full"], "not k=full"), (["--k", "-2"], "got k=-2"),
    (["--granularity", "rows"], "got 'rows'"), (["--selector", "bogus"], "unknown selector 'bogus'"),
    (["--min-context", "-3"], "min_context=-3"),
])
def test_cli_bad_value_is_one_line(monkeypatch, capsys, tmp_path, args, msg):
    import sys

    import topkattn.cli as cli

    monkeypatch.setattr(sys, "argv", ["topkattn", "fidelity", *args, "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and msg in err
    assert len(err.strip().splitlines()) == 1
