import math

import pytest
import torch

from topkattn.ops.topk import topk_attention
from topkattn.ops.topk.naive import indices_to_mask
from topkattn.selectors import PrecisionSelector, SelectionContext, make_selector


def _qk(B=2, Hq=4, Hkv=2, Lq=1, Lk=300, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, Hq, Lq, D, generator=g), torch.randn(B, Hkv, Lk, D, generator=g),
            torch.randn(B, Hkv, Lk, D, generator=g))


def _precision(idx, ref, Lk):
    a, b = indices_to_mask(idx, Lk), indices_to_mask(ref, Lk)
    return ((a & b).sum(-1).float() / b.sum(-1).float())


def test_precision_one_equals_exact():
    q, k, v = _qk()
    ctx = SelectionContext(topk=32, scale=0.25)
    exact = make_selector("exact").select(q, k, ctx)
    got = make_selector("precision:1.0").select(q, k, ctx)
    assert torch.equal(got, exact)
    out_sel = topk_attention(q, k, v, topk=32, indices=got, scale=0.25, backend="reference")
    out_ref = topk_attention(q, k, v, topk=32, scale=0.25, backend="reference")
    assert torch.allclose(out_sel, out_ref)


@pytest.mark.parametrize("p", [0.0, 0.25, 0.5, 0.75, 0.9])
@pytest.mark.parametrize("protect", [0, 1])
def test_measured_precision_is_p(p, protect):
    q, k, _ = _qk(B=4, Hq=8, Hkv=2, Lq=16, Lk=400, seed=1)
    ctx = SelectionContext(topk=20, scale=0.25)
    exact = make_selector("exact").select(q, k, ctx)
    got = PrecisionSelector(p=p, protect=protect, seed=3).select(q, k, ctx)
    prec = _precision(got, exact, 400)
    rows = prec.numel()
    # per-row swap count is a Bernoulli-rounded (1-p)*n: std of the mean <= 0.5/(n*sqrt(rows))
    want = max(p, protect / 20)  # protected members cap the swaps at n - protect
    assert abs(prec.mean().item() - want) < 4 * 0.5 / (20 * math.sqrt(rows)) + 1e-6
    assert (indices_to_mask(got, 400).sum(-1) == 20).all()  # still k distinct positions
    if protect:  # the top member (highest score; exact's set is in position order) stays
        from topkattn.ops.topk.naive import visible_mask

        s = make_selector("exact").score(q, k, ctx)
        top = s.masked_fill(~visible_mask(16, 400, True, None, s.device), float("-inf")).argmax(-1)
        assert torch.equal(got[..., 0], top)


def test_swap_lowest_keeps_top_members():
    q, k, _ = _qk(seed=2)
    ctx = SelectionContext(topk=16, scale=0.25)
    exact = make_selector("exact").select(q, k, ctx)  # the set, in position order
    got = PrecisionSelector(p=0.5, swap="lowest").select(q, k, ctx)  # best first
    s = make_selector("exact").score(q, k, ctx).gather(-1, exact)
    best = exact.gather(-1, s.argsort(dim=-1, descending=True, stable=True))
    assert torch.equal(got[..., :8], best[..., :8])


def test_seeded_and_causal():
    q, k, _ = _qk(Lq=8, Lk=40, seed=4)
    ctx = SelectionContext(topk=8, scale=0.25)
    a = PrecisionSelector(p=0.3, seed=5).select(q, k, ctx)
    b = PrecisionSelector(p=0.3, seed=5).select(q, k, ctx)
    assert torch.equal(a, b)
    qpos = torch.arange(32, 40).view(1, 1, 8, 1)
    assert ((a < 0) | (a <= qpos)).all()


def test_spec_and_bad_values():
    s = make_selector("precision:0.75", protect=1)
    assert s.p == 0.75 and s.protect == 1
    with pytest.raises(ValueError, match="precision p"):
        make_selector("precision:1.5")
    with pytest.raises(ValueError, match="swap"):
        PrecisionSelector(p=0.5, swap="middle")
    with pytest.raises(ValueError, match="protect"):
        PrecisionSelector(p=0.5, protect=-1)
