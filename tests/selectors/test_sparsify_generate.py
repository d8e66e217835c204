"""Every selector through `sparsify` + `generate` on a tiny Llama, with its selected indices
checked at every call: in range, visible, exactly min(k, visible) distinct positions, equal
to the reference for exact, and the top-k set of the selector's own scores with ties to the
lowest position for score-based selectors (Quest's pages and spans tie by design). Also a
selector defined here, in a few lines, run through `generate` and `topkattn fidelity`."""

from dataclasses import dataclass, field

import pytest
import torch

from .tiny import random_prompt
from topkattn.config import TopKConfig
from topkattn.integrations.hf import sparsify
from topkattn.ops.topk.naive import select_topk_mask, visible_mask
from topkattn.selectors import (
    ExactSelector, LightningIndexer, ScoreSelector, SelectionContext, Selector, expand_heads,
    parse_selector, register,
)
from topkattn.selectors.registry import SELECTORS

SPECS = ["exact", "precision:0.5,protect=1", "window", "random", "quest:8", "spans:8",
         "spans:boundary=fixed,represent=bound", "lightning", "lightning:query_source=query"]


class Recorder(ExactSelector):
    """Wraps a selector (a subclass of exact, so `sparsify` routes it through the selector
    path even for exact) and records every call."""

    def __init__(self, inner: Selector):
        self.inner = inner
        self.calls = []

    @property
    def needs_hidden_states(self):  # type: ignore[override]
        return self.inner.needs_hidden_states

    def select(self, q, k, ctx):
        idx = self.inner.select(q, k, ctx)
        scores = self.inner.group_scores(q, k, ctx) if isinstance(self.inner, ScoreSelector) else None
        self.calls.append((q, k, ctx.topk, ctx.granularity, ctx.scale, idx, scores))
        return idx


def check_indices(name, q, k, topk, granularity, scale, idx, scores):
    """Asserts the call's indices are right; returns whether some row's selection cut a tie
    (its k-th score also held by a visible key left out), i.e. whether the tie rule decided."""
    B, Hq, Lq, _ = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    assert idx.dim() == 4 and idx.shape[0] == B and idx.shape[2] == Lq and idx.shape[1] in (Hq, Hkv)
    vis = visible_mask(Lq, Lk, True, None, q.device).expand(B, idx.shape[1], Lq, Lk)
    valid = idx >= 0
    assert (idx < Lk).all(), name
    pos = idx.clamp(min=0)
    assert vis.gather(-1, pos)[valid].all(), f"{name}: a selected key is not visible"
    mask = torch.zeros(*idx.shape[:-1], Lk + 1, dtype=torch.bool).scatter_(-1, torch.where(valid, idx, Lk), True)
    n = mask[..., :Lk].sum(-1)
    assert torch.equal(n, valid.sum(-1)), f"{name}: duplicate positions"
    want = torch.minimum(vis.sum(-1), torch.full_like(n, topk))
    if name.startswith("window"):  # sink + recent window: duplicates folded, never more than k
        assert (n <= want).all()
        return False
    assert torch.equal(n, want), f"{name}: not exactly min(k, visible) positions"
    cut = False
    if scores is not None and not name.startswith("precision"):
        sel = mask[..., :Lk]
        ref = select_topk_mask(scores, topk, vis)  # the set, ties to the lowest position
        assert torch.equal(sel, ref), f"{name}: not the top-k set of its scores"
        s = scores.float().expand_as(sel)
        kth = torch.where(sel, s, torch.inf).amin(-1, keepdim=True)  # lowest selected score
        tied_out = vis & ~sel & (s == kth)
        cut = bool(tied_out.any())
        # ties at the k-th score keep the lowest positions: every tied key left out lies after
        # every selected key of that score
        last_in = torch.where(sel & (s == kth), torch.arange(Lk), -1).amax(-1, keepdim=True)
        first_out = torch.where(tied_out, torch.arange(Lk), Lk).amin(-1, keepdim=True)
        assert (first_out > last_in).all(), f"{name}: a tie at the k-th score kept a later key"
    if name == "exact":
        qk = torch.matmul(q.float(), expand_heads(k.float(), Hq).transpose(-1, -2)) * scale
        if granularity == "kv_group" and Hq > Hkv:
            qk = qk.view(B, Hkv, Hq // Hkv, Lq, Lk).sum(2)
        assert torch.equal(mask[..., :Lk], select_topk_mask(qk, topk, vis)), "exact != reference"
    return cut


@pytest.mark.filterwarnings("ignore:lightning selector without trained weights")
@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("phases,granularity", [(("decode",), "query_head"),
                                                (("decode", "prefill"), "kv_group")])
def test_every_selector_generates(llama, spec, phases, granularity):
    ids = torch.tensor([[int(t) for t in random_prompt(80).split()]])
    rec = Recorder(parse_selector(spec))
    cfg = TopKConfig(k=12, selector=rec, phases=phases, granularity=granularity)
    with sparsify(llama, cfg) as states:
        out = llama.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                             max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 85)
    assert sum(s.calls["sparse"] for s in states.values()) > 0
    assert len(rec.calls) >= 4 * len(states)  # decode steps of every layer (and the prefill)
    cuts = [check_indices(spec, *call) for call in rec.calls]
    if spec.startswith(("quest", "spans")):  # pages / spans tie by design: the rule decided
        assert any(cuts), f"{spec}: no call cut a tie at the k-th score"


def test_trained_weights_through_config(llama, tmp_path):
    ind = LightningIndexer.for_model(llama, n_heads=2, head_dim=8)
    path = ind.save(tmp_path / "ind.safetensors")
    ids = torch.tensor([[int(t) for t in random_prompt(60).split()]])
    with sparsify(llama, TopKConfig(k=8, selector=parse_selector(f"lightning:{path}"))):
        out = llama.generate(input_ids=ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 63)


@dataclass
class KeyNormSelector(ScoreSelector):
    """Keeps the keys of largest norm (a toy: the whole selector is this class)."""

    power: float = 2.0

    def score(self, q, k, ctx):
        return k.float().norm(dim=-1, p=self.power)[:, :, None].expand(-1, -1, q.shape[2], -1)


def test_a_selector_defined_here_runs_through_generate_and_fidelity(llama, embedded_model, tmp_path,
                                                                    monkeypatch):
    from typer.testing import CliRunner

    from topkattn.cli import app

    monkeypatch.setitem(SELECTORS, "keynorm", KeyNormSelector)  # `register("keynorm")`, undone
    sel = parse_selector("keynorm:power=1")
    assert sel == KeyNormSelector(power=1)
    rec = Recorder(sel)
    ids = torch.tensor([[int(t) for t in random_prompt(50).split()]])
    with sparsify(llama, TopKConfig(k=6, selector=rec, granularity="kv_group")):
        out = llama.generate(input_ids=ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 53) and rec.calls
    for call in rec.calls:
        check_indices("keynorm", *call)
    # the command line knows it by name: fidelity against exact Top-k (the embedded model)
    import topkattn.models as models

    monkeypatch.setattr(models, "load_model", lambda *a, **kw: embedded_model)
    res = CliRunner().invoke(app, ["fidelity", "--selector", "exact,keynorm:power=1", "--k", "6",
                                   "--length", "256", "--samples", "1", "--steps", "2",
                                   "--out", str(tmp_path / "fid"), "--quiet"])
    assert res.exit_code == 0, res.output
    import json

    fid = json.loads((tmp_path / "fid" / "fidelity.json").read_text())["selectors"]
    assert set(fid) == {"exact", "keynorm:power=1"}
    assert fid["exact"]["precision"] == pytest.approx(1.0)
    assert 0.0 <= fid["keynorm:power=1"]["precision"] <= 1.0


def test_registry_specs_and_errors():
    assert parse_selector("quest:16") == parse_selector("quest:page_size=16")
    p = parse_selector("precision:0.8,protect=1,swap=lowest")
    assert (p.p, p.protect, p.swap) == (0.8, 1, "lowest")
    for bad, match in [("nope", "unknown selector 'nope'"), ("exact:false", "exact takes no arguments"),
                       ("precision:0.5,protct=1", "unknown key 'protct'.*p, protect, swap, seed"),
                       ("quest:page_size=0", "page_size must be an integer >= 1"),
                       ("precision:p=0.5,p=0.6", "given twice"), ("", "non-empty")]:
        with pytest.raises(ValueError, match=match):
            parse_selector(bad)
    from topkattn.selectors import split_specs

    assert split_specs("exact,precision:0.5,protect=1,quest:8") == ["exact", "precision:0.5,protect=1", "quest:8"]
    assert register  # the decorator registers a class under a name (used by the built-ins)
    assert SelectionContext().topk == 64
