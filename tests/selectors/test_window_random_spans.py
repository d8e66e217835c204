import pytest
import torch

from topkattn.ops.topk.naive import indices_to_mask
from topkattn.selectors import RandomSelector, SelectionContext, SpanSelector, WindowSelector
from topkattn.selectors.spans import segment


def _qk(Lq=1, Lk=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 4, Lq, 16, generator=g), torch.randn(1, 2, Lk, 16, generator=g)


def test_window_is_sink_plus_recent():
    q, k = _qk()
    idx = WindowSelector(sink=4).select(q, k, SelectionContext(topk=16))
    m = indices_to_mask(idx, 100)[0, 0, 0]
    want = torch.zeros(100, dtype=torch.bool)
    want[:4] = True
    want[88:] = True
    assert torch.equal(m, want)
    # prefill rows: causal, and short rows take everything they see
    q, k = _qk(Lq=20, Lk=20)
    idx = WindowSelector(sink=2).select(q, k, SelectionContext(topk=8))
    qpos = torch.arange(20).view(1, 1, 20, 1)
    assert ((idx < 0) | (idx <= qpos)).all()
    assert (indices_to_mask(idx, 20)[0, 0, 3].sum() == 4)


@pytest.mark.parametrize("topk,sink", [(16, 4), (8, 8), (40, 4), (1, 4), (5, 0)])
def test_window_range_path_is_its_selection_within_each_rows_range(topk, sink):
    """`range_indices` over a padded batch (row b sees [lo_b, hi_b) of a cache with room) is
    `select` on the row alone, shifted by lo_b: its sink counts from its own first key."""
    sel = WindowSelector(sink=sink)
    ctx = SelectionContext(topk=topk)
    lo, hi = torch.tensor([0, 7, 30], dtype=torch.int32), torch.tensor([100, 60, 33], dtype=torch.int32)
    q, k = torch.randn(3, 4, 1, 16), torch.randn(3, 2, 128, 16)
    idx = sel.range_indices(q, k, lo, hi, ctx)
    assert idx.dtype == torch.int32 and idx.shape[:3] == (3, 2, 1)
    for b in range(3):
        n = int(hi[b] - lo[b])
        alone = sel.select(q[b:b + 1], k[b:b + 1, :, :n], ctx)[0, 0, 0]
        want = {int(p) + int(lo[b]) for p in alone if p >= 0}
        got = [int(p) for p in idx[b, 0, 0] if p >= 0]
        assert len(got) == len(set(got)) and set(got) == want, (b, got, want)
        assert torch.equal(idx[b, 0], idx[b, 1])  # one set shared by the KV heads


def test_random_visible_seeded_and_chance_level():
    q, k = _qk(Lq=10, Lk=60)
    a = RandomSelector(seed=1).select(q, k, SelectionContext(topk=8))
    b = RandomSelector(seed=1).select(q, k, SelectionContext(topk=8))
    assert torch.equal(a, b)
    qpos = torch.arange(50, 60).view(1, 1, 10, 1)
    assert ((a >= 0) & (a <= qpos)).all()


def test_segment_bounds():
    sim = torch.rand(500)
    for fixed in (False, True):
        starts = segment(sim, 0, 500, 4, 32, fixed)
        lens = [b - a for a, b in zip(starts, starts[1:] + [500])]
        assert starts[0] == 0 and all(lens[i] >= 4 for i in range(len(lens) - 1))
        assert all(n <= 32 for n in lens)


@pytest.mark.parametrize("boundary", ["similarity", "fixed"])
@pytest.mark.parametrize("score", ["mean", "bound"])
def test_spans_whole_spans_and_incremental_store(boundary, score):
    q, k = _qk(Lk=300, seed=3)
    sel = SpanSelector(max_span=16, min_span=4, boundary=boundary, represent=score)
    store = {}
    idx = sel.select(q, k, SelectionContext(topk=48, store=store))
    sid = sel.span_ids(k, {})[0]
    m = indices_to_mask(idx, 300)[0, 0, 0]
    assert m.sum() == 48
    assert m[sid == sid.max()].all()  # the open last span is always kept
    assert m[sid == 0].all()  # and the first one (attention sink)
    # at most one span is cut (first and last tie at the top score: also whole)
    per_span = torch.zeros(int(sid.max()) + 1).scatter_add_(0, sid, m.float())
    sizes = torch.bincount(sid).float()
    assert ((per_span > 0) & (per_span < sizes)).sum() <= 1
    # growing the cache step by step gives the same spans as segmenting from scratch
    g = torch.Generator().manual_seed(9)
    kk = k
    for _ in range(40):
        kk = torch.cat([kk, torch.randn(1, 2, 1, 16, generator=g)], 2)
        sel.select(q, kk, SelectionContext(topk=48, store=store))
    assert torch.equal(sel.span_ids(kk, store), sel.span_ids(kk, {}))


def test_bad_args():
    with pytest.raises(ValueError, match="min_span"):
        SpanSelector(max_span=4, min_span=8)
    with pytest.raises(ValueError, match="boundary"):
        SpanSelector(boundary="semantic")
    with pytest.raises(ValueError, match="page_size"):
        from topkattn.selectors import QuestSelector

        QuestSelector(page_size=0)
    with pytest.raises(ValueError, match="sink"):
        WindowSelector(sink="x")
