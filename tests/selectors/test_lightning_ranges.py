"""The Lightning Indexer's fast decode path over key ranges (`LightningSelector.range_indices`,
the index-score kernel `ops.topk.triton_index`): same scores and picks as the indexer's own
`scores`, only inside each sequence's range, and the same tokens through `generate` as the
masked `select` path, with a DynamicCache, a StaticCache and left padding."""

import warnings

import pytest
import torch
from transformers import StaticCache

from tests.helpers import tiny_causal_lm
from topkattn import TopKConfig, sparsify
from topkattn.ops.topk.triton_index import index_scores, index_scores_reference
from topkattn.selectors.base import SelectionContext
from topkattn.selectors.lightning import LightningSelector


@pytest.mark.parametrize("block", [128, 64])
def test_index_scores_kernel_matches_reference_inside_the_ranges(block):
    torch.manual_seed(0)
    B, H, d, cap = 3, 4, 64, 300
    q, w, keys = torch.randn(B, H, d), torch.randn(B, H), torch.randn(B, cap, d)
    lo = torch.tensor([0, 17, 250], dtype=torch.int32)
    hi = torch.tensor([300, 129, 251], dtype=torch.int32)
    got = index_scores(q, w, keys, starts=lo, ends=hi, block=block)
    want = index_scores_reference(q, w, keys)
    for b in range(B):
        torch.testing.assert_close(got[b, lo[b]:hi[b]], want[b, lo[b]:hi[b]], rtol=1e-5, atol=1e-5)


def test_index_scores_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"q \[B=2"):
        index_scores(torch.randn(2, 4, 32), torch.randn(2, 4), torch.randn(2, 10, 64),
                     starts=torch.zeros(2, dtype=torch.int32), ends=torch.ones(2, dtype=torch.int32))


def test_range_indices_are_the_top_k_of_the_indexer_scores_in_range():
    torch.manual_seed(1)
    B, Hq, Hkv, D, cap, k = 2, 4, 2, 16, 90, 8
    sel = LightningSelector(query_source="query")
    q, keys = torch.randn(B, Hq, 1, D), torch.randn(B, Hkv, cap, D)
    lo = torch.tensor([0, 30], dtype=torch.int32)
    hi = torch.tensor([90, 61], dtype=torch.int32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ctx = SelectionContext(layer_idx=0, topk=k, store={})
        idx = sel.range_indices(q, keys, lo, hi, ctx)
        scores = sel.scores(q, keys, SelectionContext(layer_idx=0, topk=k, store={}))[:, 0]
    assert idx.shape == (B, Hkv, 1, k) and idx.dtype == torch.int32
    for b in range(B):
        s = scores[b, lo[b]:hi[b]]
        want = set((s.topk(k).indices + lo[b]).tolist())
        for h in range(Hkv):
            assert set(idx[b, h, 0].tolist()) == want


class _MaskPath(LightningSelector):
    """The same indexer through the generic masked `select` path."""

    def range_indices(self, q, k, starts, ends, ctx):
        return None


class _Counting(LightningSelector):
    calls = 0

    def range_indices(self, q, k, starts, ends, ctx):
        out = super().range_indices(q, k, starts, ends, ctx)
        type(self).calls += out is not None
        return out


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_generate_range_path_matches_mask_path(cache):
    model = tiny_causal_lm("llama")
    x = torch.randint(3, 97, (2, 40))
    mask = torch.ones_like(x)
    mask[1, :5] = 0  # left padding: the second sequence sees [5, ...)
    kw = dict(attention_mask=mask, max_new_tokens=10, min_new_tokens=10, do_sample=False,
              pad_token_id=0)
    if cache == "static":
        kw["past_key_values"] = None
    outs = []
    for cls in (_Counting, _MaskPath):
        if cache == "static":
            kw["past_key_values"] = StaticCache(config=model.config, max_cache_len=64)
        with torch.no_grad(), sparsify(model, TopKConfig(k=8, selector=cls(seed=3))), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outs.append(model.generate(x, **kw))
    assert _Counting.calls > 0
    assert torch.equal(outs[0], outs[1])
