"""The two-tier cache and streaming prefill on a tiny model (CPU: both tiers in CPU memory):
with a budget covering the context they equal dense attention (logits, cache rows, generated
tokens); the device budget is checked before any work; sparsify hands over to Ltri."""

import pytest
import torch
from transformers import DynamicCache

from tests.selectors.tiny import tiny_llama
from topkattn.config import TopKConfig
from topkattn.errors import InputError
from topkattn.integrations.hf import sparsify
from topkattn.ltri.cache import LtriCache
from topkattn.ltri.config import LtriConfig
from topkattn.ltri.context import ltri_context
from topkattn.ltri.index import SpanIndex
from topkattn.ltri.selector import LtriSelector

L = 260


@pytest.fixture(scope="module")
def model():
    return tiny_llama(layers=4)


@pytest.fixture(scope="module")
def ids():
    return torch.randint(3, 120, (1, L), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def dense(model, ids):
    with torch.no_grad():
        out = model(ids, use_cache=True)
        gen = model.generate(ids, max_new_tokens=10, do_sample=False)[0, L:].tolist()
    return out.logits[:, -1], out.past_key_values, gen


def _cfg(**kw):
    base = dict(budget_tokens=512, sink=4, recent=32, max_span=16, chunk_size=64,
                retrieval_layers=(1,), detect_layers=(1, 2))
    return LtriConfig(**(base | kw))


@pytest.mark.parametrize("chunk", [64, 512])
def test_streaming_prefill_equals_one_shot_when_the_budget_covers_everything(model, ids, dense,
                                                                             chunk):
    logits, kv, _ = dense
    with ltri_context(model, _cfg(chunk_size=chunk)) as run:
        got, cache = run.prefill(ids)
    assert isinstance(cache, LtriCache) and cache.get_seq_length() == L
    torch.testing.assert_close(got, logits, atol=2e-5, rtol=1e-4)
    # the offloaded cache holds the same rows as the in-memory one
    for layer in range(4):
        k, v = cache.full_kv(layer)
        torch.testing.assert_close(k, kv.layers[layer].keys, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(v, kv.layers[layer].values, atol=2e-5, rtol=1e-4)
    st = cache.state
    if chunk == 64:  # streamed: the prompt is segmented by triangles, but for the recent window
        assert L - 32 - 16 < st.index.covered <= L - 32
        assert st.band_seen[1] == st.band_seen[2] == L
        # tier 1 is bounded by the settings, not by the context
        spec = cache.spec
        assert cache.layers[0].t1k.shape[2] == spec.sink + spec.pool + spec.local


def test_generated_tokens_equal_dense(model, ids, dense):
    with ltri_context(model, _cfg()) as run:
        out = run.generate(ids, 10)
    assert out == dense[2]
    assert run.cache.moved_tokens() > 0  # the spans were brought to tier 1


def test_small_budget_moves_only_new_spans_and_stays_bounded(model, ids, dense):
    cfg = _cfg(budget_tokens=48, refresh_every=1)
    with ltri_context(model, cfg) as run:
        out = run.generate(ids, 8)
    cache = run.cache
    assert len(out) == 8
    # tier 1 holds sink + 48 retrieved + local window per layer, whatever the context
    layer = cache.layers[3]
    pool = layer.slot_pos[layer.slot_pos >= 0]
    assert 0 < pool.size <= 48 and (pool >= 4).all() and (pool < layer.local_start).all()
    # every decode step moved at most the budget per layer; spans kept are not copied again
    assert cache.moved_tokens() < 4 * 48 * (1 + L // 64 + 8)


def test_gpu_kv_budget_is_checked_before_any_work(model):
    with ltri_context(model, _cfg(gpu_kv_budget="64KiB")) as run:
        with pytest.raises(InputError, match="over gpu_kv_budget"):
            run.new_cache()


def test_sparsify_hands_over_and_model_generate_uses_the_offloaded_cache(model, ids, dense):
    sel = LtriSelector(sink=4, recent=32, max_span=16, chunk_size=64, retrieval_layers=(1,))
    with torch.no_grad(), sparsify(model, TopKConfig(k=512, selector=sel)) as states:
        run = states[0].run
        cache = run.new_cache()
        out = model.generate(ids, past_key_values=cache, max_new_tokens=10, do_sample=False)
        # a plain cache takes the in-memory path (the selector), as sparsify runs it
        out2 = model.generate(ids, past_key_values=DynamicCache(), max_new_tokens=10,
                              do_sample=False)
    assert out[0, L:].tolist() == dense[2] == out2[0, L:].tolist()
    assert cache.get_seq_length() == L + 9


def test_index_of_a_prefilled_document_round_trips(model, ids, tmp_path):
    with ltri_context(model, _cfg()) as run:
        _, cache = run.prefill(ids)
    idx = cache.state.index
    back = SpanIndex.load(idx.save(tmp_path / "doc.index"))
    q = torch.randn(4, 16)
    for layer in range(4):
        assert back.search(layer, q, 64)[0].tolist() == idx.search(layer, q, 64)[0].tolist()


def test_batch_of_two_is_an_error(model):
    with ltri_context(model, _cfg()) as run:
        with pytest.raises(InputError, match="one sequence"):
            run.prefill(torch.ones(2, 8, dtype=torch.long))


@pytest.mark.parametrize("options", [
    dict(retrieval="per_layer"), dict(boundary="similarity"),
    dict(boundary="fixed", dynamic=True), dict(refresh_every=4, represent="bound"),
])
def test_every_option_equals_dense_when_the_budget_covers_everything(model, ids, dense,
                                                                     options):
    with ltri_context(model, _cfg(**options)) as run:
        out = run.generate(ids, 10)
    assert out == dense[2]


def test_refresh_every_moves_less(model, ids):
    moved = {}
    for m in (1, 4):
        with ltri_context(model, _cfg(budget_tokens=48, refresh_every=m)) as run:
            run.generate(ids, 12)
        moved[m] = run.cache.moved_tokens()
    assert moved[4] <= moved[1]


def test_a_saved_document_is_reused(model, ids, tmp_path):
    from topkattn.ltri.document import load_document, save_document

    doc, question = ids[:, :200], ids[:, 200:]
    with torch.no_grad(), ltri_context(model, _cfg()) as run:
        _, cache = run.prefill(doc)
        path = save_document(cache, tmp_path / "doc.pt")
        spans = cache.state.index.n_spans
        ref = run.generate(question, 6, cache=cache)
        for _ in range(2):  # reused: two fresh caches from one file
            again = load_document(run, path)
            assert again.get_seq_length() == 200
            assert again.state.index.n_spans == spans
            assert run.generate(question, 6, cache=again) == ref
