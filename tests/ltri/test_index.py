"""SpanIndex: representatives, search returns the span holding a planted key, the budget is
filled, dynamic refinement, save/load round-trips."""

import pytest
import torch

from topkattn.errors import InputError, MissingFileError
from topkattn.ltri.detection import fixed_spans
from topkattn.ltri.index import SpanIndex, fill_budget, span_positions


def _index(keys, spans, **kw):
    L, H, n, D = keys.shape
    idx = SpanIndex(L, H, D, **kw)
    idx.add_spans(spans)
    for layer in range(L):
        idx.add_keys(layer, keys[layer], 0)
    return idx


def test_representatives_are_mean_and_bounds():
    torch.manual_seed(0)
    keys = torch.randn(2, 2, 20, 4)
    spans = [(0, 7), (7, 12), (12, 20)]
    idx = _index(keys, spans)
    for layer in range(2):
        for s, (a, b) in enumerate(spans):
            torch.testing.assert_close(idx.means(layer)[:, s], keys[layer, :, a:b].mean(1))
            lo, hi = idx.bounds(layer)
            torch.testing.assert_close(lo[:, s], keys[layer, :, a:b].amin(1))
            torch.testing.assert_close(hi[:, s], keys[layer, :, a:b].amax(1))
    assert idx.span_of(7) == 1 and idx.span_of(19) == 2


def test_streaming_add_in_pieces_equals_one_add():
    torch.manual_seed(1)
    keys = torch.randn(1, 2, 30, 4)
    spans = [(0, 5), (5, 13), (13, 20), (20, 30)]
    whole = _index(keys, spans)
    part = SpanIndex(1, 2, 4)
    part.add_spans(spans[:2])
    assert part.add_keys(0, keys[0, :, :9], 0) == 1  # span (5, 13) is not complete yet
    part.add_keys(0, keys[0, :, 5:13], 5)
    part.add_spans(spans[2:])
    part.add_keys(0, keys[0, :, 13:30], 13)
    torch.testing.assert_close(part.means(0), whole.means(0))
    with pytest.raises(InputError):
        part.add_spans([(31, 40)])  # a hole


@pytest.mark.parametrize("represent", ["mean", "bound"])
def test_search_returns_the_span_holding_a_planted_key(represent):
    torch.manual_seed(2)
    D = 16
    keys = torch.randn(1, 2, 256, D) * 0.3
    needle = 173
    direction = torch.randn(D)
    keys[0, :, needle] = 4 * direction / direction.norm()
    spans = fixed_spans(0, 256, 16)
    idx = _index(keys, spans)
    q = (direction / direction.norm()).expand(4, D) * 3  # 4 query heads, 2 KV heads
    ids, take = idx.search(0, q, budget=16, represent=represent)
    assert ids.tolist() == [idx.span_of(needle)]
    assert needle in idx.positions(ids, take).tolist()


def test_fill_budget_cuts_the_last_span_and_excludes():
    lengths = torch.tensor([4, 6, 3, 5])
    ids, take = fill_budget(torch.tensor([1, 3, 0, 2]), lengths, 9)
    assert ids.tolist() == [1, 3] and take.tolist() == [6, 3]
    starts = torch.tensor([0, 4, 10, 13])
    assert span_positions(starts, ids, take).tolist() == [4, 5, 6, 7, 8, 9, 13, 14, 15]
    keys = torch.randn(1, 1, 18, 4)
    idx = _index(keys, [(0, 4), (4, 10), (10, 13), (13, 18)])
    ex = torch.tensor([True, False, False, False])
    ids, _ = idx.search(0, torch.randn(1, 4), 100, exclude=ex)
    assert sorted(ids.tolist()) == [1, 2, 3]


def test_dynamic_means_follow_neighbour_votes():
    torch.manual_seed(3)
    keys = torch.randn(1, 1, 40, 4)
    spans = fixed_spans(0, 40, 10)
    idx = _index(keys, spans, dynamic=True, dynamic_weight=0.5)
    torch.testing.assert_close(idx.dynamic_means(0), idx.means(0))  # no votes yet
    idx.record_votes(torch.tensor([1, 1, 3]))
    m, dm = idx.means(0), idx.dynamic_means(0)
    torch.testing.assert_close(dm[:, 0], m[:, 0] + 0.5 * m[:, 1])
    torch.testing.assert_close(dm[:, 2], m[:, 2] + 0.5 * (2 * m[:, 1] + m[:, 3]) / 3)
    torch.testing.assert_close(dm[:, 1], m[:, 1])  # its neighbours 0 and 2 have no votes


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(4)
    keys = torch.randn(3, 2, 50, 8)
    idx = _index(keys, [(0, 9), (9, 30), (30, 50)], dynamic=True, dynamic_window=2)
    idx.record_votes(torch.tensor([2]))
    path = idx.save(tmp_path / "doc.index")
    back = SpanIndex.load(path)
    assert back.n_spans == 3 and back.covered == 50 and back.dynamic_window == 2
    for layer in range(3):
        torch.testing.assert_close(back.means(layer), idx.means(layer))
        torch.testing.assert_close(back.bounds(layer)[0], idx.bounds(layer)[0])
        torch.testing.assert_close(back.dynamic_means(layer), idx.dynamic_means(layer))
    q = torch.randn(4, 8)
    assert back.search(1, q, 20)[0].tolist() == idx.search(1, q, 20)[0].tolist()
    with pytest.raises(MissingFileError):
        SpanIndex.load(tmp_path / "missing.index")


def test_bf16_representatives_round_trip(tmp_path):
    torch.manual_seed(5)
    keys = torch.randn(1, 2, 40, 8)
    idx = _index(keys, fixed_spans(0, 40, 8), dtype=torch.bfloat16)
    assert idx._mean[0].buf.dtype == torch.bfloat16 and idx.means(0).dtype == torch.float32
    torch.testing.assert_close(idx.means(0), keys[0].view(2, 5, 8, 8).mean(2), atol=2e-2,
                               rtol=2e-2)
    back = SpanIndex.load(idx.save(tmp_path / "i"))
    assert back.dtype == torch.bfloat16
    torch.testing.assert_close(back.means(0), idx.means(0), atol=0, rtol=0)
