"""Attention entropy analysis: the statistics, the capture, outputs and the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from topkattn.analysis.entropy import (EntropyAccumulator, EntropyConfig, capture_entropy,
                                       entropy, measure, topk_stats, write_outputs)


def test_uniform_row_is_log_n_and_one_hot_is_zero():
    for n in (1, 2, 7, 1000):
        p = torch.full((n,), 1.0 / n)
        assert float(entropy(p)) == pytest.approx(math.log(n), abs=1e-5)
        one = torch.zeros(n)
        one[n // 2] = 1.0
        assert float(entropy(one)) == 0.0
    p = torch.full((3, 100), 0.01)
    ent, mass = topk_stats(p, 10)
    assert torch.allclose(ent, torch.full((3,), math.log(10)), atol=1e-5)
    assert torch.allclose(mass, torch.full((3,), 0.1), atol=1e-6)
    ent, mass = topk_stats(p, 500)  # k >= n: everything
    assert torch.allclose(mass, torch.ones(3)) and torch.allclose(ent, torch.full((3,), math.log(100)))


def test_accumulator_matches_softmax_of_scores():
    torch.manual_seed(0)
    q = torch.randn(2, 4, 1, 8)
    k = torch.randn(2, 2, 13, 8)
    acc = EntropyAccumulator(ks=["3"])
    acc.add(0, q, k, None, 8 ** -0.5)
    res = acc.result()
    kk = k.repeat_interleave(2, dim=1)
    p = torch.softmax((q @ kk.transpose(-1, -2))[:, :, 0] * 8 ** -0.5, -1)
    want = -(p * p.log()).sum(-1).mean(0)
    assert res["entropy"][0] == pytest.approx(want.tolist(), abs=1e-5)
    want_mass = p.topk(3, -1).values.sum(-1).mean(0)
    assert res["topk"]["3"]["mass"][0] == pytest.approx(want_mass.tolist(), abs=1e-5)
    # a mask hides keys: identical keys -> uniform over the visible ones
    acc = EntropyAccumulator(ks=["2"])
    mask = torch.zeros(1, 1, 1, 13, dtype=torch.bool)
    mask[..., :5] = True
    acc.add(0, torch.randn(1, 4, 1, 8), torch.ones(1, 2, 13, 8), mask, 1.0)
    r = acc.result()
    assert r["entropy"][0] == pytest.approx([math.log(5)] * 4, abs=1e-5)
    assert r["topk"]["2"]["mass"][0] == pytest.approx([0.4] * 4, abs=1e-6)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.train.conftest import make_tiny_model_dir
    from topkattn.models import load_model

    d = make_tiny_model_dir(tmp_path_factory.mktemp("tiny-ent"), layers=3)
    return str(d), *load_model(str(d), device="cpu")


def test_capture_only_decode_steps_and_restores_attention(tiny):
    _, model, tok = tiny
    prev = model.config._attn_implementation
    ids = torch.randint(0, 200, (1, 20))
    with capture_entropy(model, ["4"]) as acc:
        out = model(input_ids=ids, use_cache=True)  # prefill: not measured
        assert not acc.sums
        model(input_ids=ids[:, :1], past_key_values=out.past_key_values, use_cache=True)
    assert model.config._attn_implementation == prev
    res = acc.result()
    assert res["layers"] == [0, 1, 2] and res["n_heads"] == 4
    assert res["mean_context"] == 21
    for row in res["entropy"]:
        assert all(0 <= h <= math.log(21) + 1e-5 for h in row)
    # the captured model's logits are unchanged (the capture then runs SDPA)
    with torch.no_grad():
        dense = model(input_ids=ids).logits
        with capture_entropy(model, ["4"]):
            cap = model(input_ids=ids).logits
    torch.testing.assert_close(cap, dense)


def test_measure_and_outputs(tiny, tmp_path):
    path, model, tok = tiny
    cfg = EntropyConfig(model=path, task="passkey", length=400, samples=2, decode_steps=3,
                        ks=("8", "10%"), label="tiny")
    res = measure(model, tok, cfg, progress=False)
    assert res["decode_calls"] == 2 * 3
    assert 300 <= res["mean_context"] <= 404
    for k in ("8", "10%"):
        for row in res["topk"][k]["mass"]:
            assert all(0 < m <= 1 + 1e-6 for m in row)
    # more keys hold more mass
    m8 = res["per_layer"]["topk"]["8"]["mass"]
    m10 = res["per_layer"]["topk"]["10%"]["mass"]
    assert all(a <= b + 1e-9 for a, b in zip(m8, m10))
    res2 = dict(res, label="tiny-2")
    paths = write_outputs([res, res2], tmp_path / "ent")
    data = json.loads(paths["json"].read_text())
    assert [d["label"] for d in data] == ["tiny", "tiny-2"]
    md = paths["md"].read_text()
    assert "H top-8 (tiny)" in md and "mass top-10% (tiny-2)" in md
    assert paths["heatmap"].stat().st_size > 1000 and paths["layers"].stat().st_size > 1000


def test_config_validation():
    with pytest.raises(ValueError, match="decode_steps"):
        EntropyConfig(decode_steps=0)
    with pytest.raises(ValueError):
        EntropyConfig(ks=("full",))
    with pytest.raises(ValueError):
        EntropyConfig(ks=("abc",))


def test_cli_compare(tiny, tmp_path):
    from typer.testing import CliRunner

    from topkattn.cli import app

    path = tiny[0]
    r = CliRunner().invoke(app, ["entropy", "--model", path, "--compare", path, "--task",
                                 "passkey", "--length", "400", "--samples", "1", "--steps", "2",
                                 "--k", "8", "--device", "cpu", "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    data = json.loads((tmp_path / "o" / "entropy.json").read_text())
    assert len(data) == 2 and data[0]["entropy"] == data[1]["entropy"]


def test_ks_are_parsed_once_into_values():
    from topkattn.analysis.entropy import k_value, parse_ks

    assert parse_ks("16, 64,5%,16") == ["16", "64", "5%"]
    assert k_value("16", 100) == 16 and k_value("5%", 100) == 5 and k_value("0.5", 3) == 2
    acc = EntropyAccumulator(ks=["5%"])
    assert acc.keys_kept("5%", 1000) == 50 and acc.keys_kept("5%", 10) == 1


@pytest.mark.parametrize("k,msg", [("full", "entropy --k takes integers or ratios, not 'full'"),
                                   ("8,abc", "got 'abc'"), ("0", "got k=0")])
def test_cli_bad_k_is_one_line(monkeypatch, capsys, tmp_path, k, msg):
    import sys

    import topkattn.cli as cli

    monkeypatch.setattr(sys, "argv", ["topkattn", "entropy", "--k", k, "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and msg in err
    assert len(err.strip().splitlines()) == 1
