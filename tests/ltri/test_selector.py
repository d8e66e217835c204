"""The ``ltri`` selector: spec parsing, full budget = dense attention, a planted key is
retrieved by the retrieval heads' vote, and the retrieval order across layers."""

import pytest
import torch

from topkattn.errors import InputError
from topkattn.ltri.config import LtriConfig
from topkattn.ltri.index import SpanIndex
from topkattn.ltri.retrieval import Retriever, decide, head_votes
from topkattn.ltri.selector import LtriSelector
from topkattn.ops.topk.naive import topk_attention_reference
from topkattn.selectors import SelectionContext, make_selector, parse_selector


class _Module:
    class config:  # noqa: N801 - a stand-in for a model config
        num_hidden_layers = 3


def test_spec_parsing_and_errors():
    sel = parse_selector("ltri:max_span=32,retrieval_layers=0;2,gpu_kv_budget=2GiB")
    assert isinstance(sel, LtriSelector)
    assert sel.config().retrieval_layers == (0, 2) and sel.gpu_kv_budget == 2 * 2**30
    # the spec written into results names the lists, and reads back to an equal selector
    from topkattn.config import selector_spec

    assert selector_spec(sel) == ("ltri:max_span=32,retrieval_layers=0;2,"
                                  "gpu_kv_budget=2147483648")
    assert parse_selector(selector_spec(sel)) == sel
    assert make_selector("ltri", boundary="fixed").boundary == "fixed"
    with pytest.raises(InputError, match="boundary must be one of"):
        parse_selector("ltri:boundary=blocks")
    with pytest.raises(InputError, match="min_span must be <= max_span"):
        LtriConfig(min_span=9, max_span=8)
    with pytest.raises(InputError, match="gpu_kv_budget"):
        LtriConfig(gpu_kv_budget="lots")


def _run_layers(sel, q, k, topk, stores, phase="decode"):
    out = []
    for layer in range(3):
        ctx = SelectionContext(layer_idx=layer, topk=topk, scale=0.25, phase=phase,
                               store=stores[layer], module=_Module())
        if phase == "prefill":
            sel.observe_prefill(q[layer], k[layer], k[layer].shape[2], ctx)
        else:
            out.append(sel.select(q[layer], k[layer], ctx))
    return out


def test_full_budget_equals_dense_attention():
    torch.manual_seed(0)
    L, D = 90, 16
    qp = [torch.randn(1, 4, L, D) for _ in range(3)]
    k = [torch.randn(1, 2, L, D) for _ in range(3)]
    v = [torch.randn(1, 2, L, D) for _ in range(3)]
    sel = LtriSelector(max_span=8, min_span=2, sink=2)
    stores = [dict() for _ in range(3)]
    _run_layers(sel, qp, k, L, stores, "prefill")
    st = stores[0]["ltri"]
    assert st.index.covered == L and st.index.n_spans > L // 8
    q = [torch.randn(1, 4, 1, D) for _ in range(3)]
    for layer, idx in enumerate(_run_layers(sel, q, k, L, stores)):
        assert sorted(idx[0, 0, 0].tolist()) == list(range(L))
        got = topk_attention_reference(q[layer], k[layer], v[layer], None, causal=False,
                                       scale=0.25, indices=idx)
        dense = torch.nn.functional.scaled_dot_product_attention(
            q[layer], k[layer].repeat_interleave(2, 1), v[layer].repeat_interleave(2, 1),
            scale=0.25)
        torch.testing.assert_close(got, dense, atol=1e-5, rtol=1e-5)


def test_retrieval_heads_find_a_planted_key():
    torch.manual_seed(1)
    L, D, needle = 200, 16, 137
    d = torch.randn(D)
    d = d / d.norm()
    k = [torch.randn(1, 2, L, D) * 0.2 for _ in range(3)]
    k[1][0, :, needle] = 5 * d  # only the retrieval layer's keys show the needle
    q = [torch.randn(1, 4, 1, D) * 0.1 for _ in range(3)]
    q[1][0, :, 0] = 3 * d
    sel = LtriSelector(max_span=16, boundary="fixed", retrieval_layers=(1,), sink=0)
    stores = [dict() for _ in range(3)]
    _run_layers(sel, [torch.randn(1, 4, L, D)] * 3, k, 16, stores, "prefill")
    first = _run_layers(sel, q, k, 16, stores)
    span = stores[0]["ltri"].index.span_of(needle)
    st = stores[0]["ltri"].index
    a, b = st.host_bounds(span)
    # layer 1 votes; layer 2 uses its vote; layer 0 (before it, first step: no earlier vote)
    # retrieved by its own heads
    assert needle in first[1][0, 0, 0].tolist() and needle in first[2][0, 0, 0].tolist()
    assert set(range(a, b)) <= set(first[2][0, 0, 0].tolist())
    # the next step (one more cached key): layer 0 now uses the previous step's vote
    k2 = [torch.cat([x, torch.randn(1, 2, 1, D)], 2) for x in k]
    second = _run_layers(sel, q, k2, 16, stores)
    assert needle in second[0][0, 0, 0].tolist()


def test_head_votes_and_decide():
    scores = torch.tensor([[3.0, 2.0, 1.0, 0.0], [0.0, 2.0, 3.0, 1.0], [1.0, 3.0, 0.0, 2.0]])
    lengths = torch.tensor([2, 2, 2, 2])
    votes, strength = head_votes(scores, lengths, 4)
    assert votes.tolist() == [1.0, 3.0, 1.0, 1.0]
    ids, take = decide(votes, strength, lengths, 4)
    assert ids[0].item() == 1 and take.sum().item() == 4
    ex = torch.tensor([False, True, False, False])
    ids, _ = decide(*head_votes(scores, lengths, 4, ex), lengths, 4, ex)
    assert 1 not in ids.tolist()


def test_refresh_every_keeps_the_set():
    idx = SpanIndex(2, 1, 4)
    idx.add_spans([(0, 4), (4, 8), (8, 12)])
    torch.manual_seed(2)
    for layer in range(2):
        idx.add_keys(layer, torch.randn(1, 12, 4), 0)
    r = Retriever(LtriConfig(retrieval_layers=(0,), refresh_every=3), 2)
    picks = []
    for step in range(4):
        r.begin()
        picks.append(r.spans_for(idx, 0, torch.randn(1, 4), 4, 12).ids.tolist())
        r.spans_for(idx, 1, torch.randn(1, 4), 4, 12)
    assert picks[1] == picks[0] and picks[2] == picks[0]  # steps 2, 3 keep step 1's set


def test_batch_of_two_is_an_error():
    sel = LtriSelector()
    ctx = SelectionContext(layer_idx=0, topk=4, module=_Module())
    with pytest.raises(InputError, match="one sequence at a time"):
        sel.select(torch.randn(2, 4, 1, 8), torch.randn(2, 2, 10, 8), ctx)
