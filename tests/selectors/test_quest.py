import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from topkattn.selectors import QuestSelector, SelectionContext, make_selector
from topkattn.selectors.quest import page_bounds, page_upper_bound


@settings(max_examples=60, deadline=None)
@given(L=st.integers(1, 70), page=st.integers(1, 17), D=st.integers(1, 9),
       seed=st.integers(0, 2**16), scale=st.floats(0.01, 100.0))
def test_bound_never_below_true_page_max(L, page, D, seed, scale):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 2, 3, D, generator=g) * scale
    k = torch.randn(1, 2, L, D, generator=g) * scale
    kmin, kmax = page_bounds(k, page)
    ub = page_upper_bound(q, kmin, kmax)  # [1, 2, 3, P]
    s = torch.matmul(q, k.transpose(-1, -2))  # [1, 2, 3, L]
    P = kmin.shape[2]
    pad = P * page - L
    s = torch.cat([s, s.new_full((1, 2, 3, pad), float("-inf"))], -1)
    true_max = s.view(1, 2, 3, P, page).amax(-1)
    # fp32 rounding of the two sums scales with sum |q_c| max(|min_c|, |max_c|), not with the
    # (possibly cancelling) result
    mag = torch.matmul(q.abs(), torch.maximum(kmin.abs(), kmax.abs()).transpose(-1, -2))
    tol = 1e-4 * (1 + mag)
    assert (ub >= true_max - tol).all()


def test_page_size_one_is_exact_topk():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 4, 1, 16, generator=g), torch.randn(1, 2, 200, 16, generator=g)
    ctx = SelectionContext(topk=24, scale=0.25)
    ex = make_selector("exact").select(q, k, ctx).sort(-1).values
    qu = QuestSelector(page_size=1).select(q, k, ctx).sort(-1).values
    assert torch.equal(ex, qu)


def test_whole_pages_and_store_matches_fresh():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, 4, 1, 16, generator=g), torch.randn(1, 2, 203, 16, generator=g)
    sel = QuestSelector(page_size=16)
    store = {}
    idx = sel.select(q, k, SelectionContext(topk=32, store=store))
    pages = (idx[idx >= 0] // 16).unique()
    assert len(pages) <= 4  # 32 tokens = two whole pages (one more if a partial page wins)
    # the next step reuses stored pages; a branch with other keys gets fresh ones
    k2 = torch.cat([k, torch.randn(1, 2, 1, 16, generator=g)], 2)
    a = sel.select(q, k2, SelectionContext(topk=32, store=store))
    b = sel.select(q, k2, SelectionContext(topk=32, store={}))
    assert torch.equal(a, b)
    k3 = k2.clone()
    k3[:, :, 100:] = torch.randn(1, 2, 104, 16, generator=g)
    a = sel.select(q, k3, SelectionContext(topk=32, store=store))
    b = sel.select(q, k3, SelectionContext(topk=32, store={}))
    assert torch.equal(a, b)
