"""Amortised DynamicCache growth (`integrations.growing_cache`): the same tokens and cache
contents as transformers' concatenation, stable buffers, and every cache operation of
`generate` (crop, beam reordering, batch repeats) still working."""

import warnings

import pytest
import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from tests.helpers import tiny_causal_lm
from topkattn import TopKConfig, sparsify
from topkattn.errors import InputError
from topkattn.integrations.growing_cache import GrowthPolicy, amortized_growth, buffer_of

KW = dict(do_sample=False, pad_token_id=0)
SMALL = GrowthPolicy(room=0.0, min_room=4, align=4)  # regrows every 4 tokens


def _prompt(b=1, n=20, seed=1):
    return torch.randint(3, 97, (b, n), generator=torch.Generator().manual_seed(seed))


def test_policy_capacity_and_validation():
    assert GrowthPolicy().capacity(1000) == 2048  # 1000 + 1024 rounded up to 256
    assert GrowthPolicy().capacity(100_000) == 112_640  # + 12.5 %
    assert SMALL.capacity(21) == 28
    for bad in (dict(room=-1.0), dict(min_room=0), dict(align=True), dict(room="x")):
        with pytest.raises(InputError, match=str(list(bad)[0])):
            GrowthPolicy(**bad)
    with pytest.raises(InputError, match="GrowthPolicy"):
        with amortized_growth("big"):
            pass


@pytest.mark.parametrize("policy", [GrowthPolicy(), SMALL], ids=["default", "regrow"])
def test_same_tokens_and_cache_as_concatenation(policy):
    model = tiny_causal_lm("llama", seed=2)
    x = _prompt(2)
    with torch.no_grad():
        ref_cache = DynamicCache()
        ref = model.generate(x, max_new_tokens=12, min_new_tokens=12, past_key_values=ref_cache, **KW)
        with amortized_growth(policy):
            cache = DynamicCache()
            got = model.generate(x, max_new_tokens=12, min_new_tokens=12, past_key_values=cache, **KW)
    assert torch.equal(got, ref)
    for a, b in zip(cache.layers, ref_cache.layers):
        buf = buffer_of(a.keys)
        assert buf is not None and buffer_of(a.values) is not None
        assert buf.shape[2] >= a.keys.shape[2] == b.keys.shape[2]
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    from topkattn.integrations import growing_cache

    assert DynamicLayer.update is growing_cache._ORIGINAL_UPDATE


def test_buffer_stays_put_between_regrowths():
    model = tiny_causal_lm("llama", seed=2)
    x = _prompt()
    with torch.no_grad(), amortized_growth(GrowthPolicy(room=0.0, min_room=8, align=8)):
        cache = DynamicCache()
        out = model(x, past_key_values=cache)
        tok = out.logits[:, -1:].argmax(-1)
        ptrs = []
        for _ in range(12):
            out = model(input_ids=tok, past_key_values=cache)
            tok = out.logits[:, -1:].argmax(-1)
            ptrs.append(buffer_of(cache.layers[0].keys).data_ptr())
    # the prompt (20) is concatenated; step 1 moves it to a buffer of 32, which holds 12 steps
    assert len(set(ptrs)) == 1
    assert buffer_of(cache.layers[0].keys).shape[2] == 32


def test_crop_reorder_and_repeat_keep_working():
    model = tiny_causal_lm("llama", seed=4)
    x = _prompt(1, 16, seed=3)
    with torch.no_grad():
        beams = model.generate(x, max_new_tokens=8, num_beams=3, num_return_sequences=2, **KW)
        with amortized_growth(SMALL):
            beams_g = model.generate(x, max_new_tokens=8, num_beams=3, num_return_sequences=2, **KW)
            cache = DynamicCache()
            model(x, past_key_values=cache)
            for _ in range(5):
                model(input_ids=x[:, :1], past_key_values=cache)
            buf = buffer_of(cache.layers[0].keys)
            cache.crop(-3)  # 21 -> 18 tokens: a shorter view of the same buffer, which the next step keeps
            model(input_ids=x[:, :1], past_key_values=cache)
            assert buffer_of(cache.layers[0].keys) is buf and cache.get_seq_length() == 19
            cache.batch_repeat_interleave(2)  # new tensors: the next step re-buffers them
            model(input_ids=x[:, :1].repeat(2, 1), past_key_values=cache)
            assert cache.layers[0].keys.shape[:3] == (2, cache.layers[0].keys.shape[1], 20)
            assert buffer_of(cache.layers[0].keys) is not None
    assert torch.equal(beams, beams_g)


def test_gradients_and_other_layers_keep_transformers_update():
    model = tiny_causal_lm("llama", seed=4)
    x = _prompt(1, 8)
    with amortized_growth(SMALL):
        cache = DynamicCache()
        out = model(x, past_key_values=cache)
        out = model(input_ids=x[:, :1], past_key_values=cache)  # grad enabled: concatenated
        assert buffer_of(cache.layers[0].keys) is None
        out.logits.sum().backward()
        assert model.model.embed_tokens.weight.grad is not None


def test_sparsify_on_cpu_leaves_the_cache_alone():
    """Growth (and decode graphs) are for CUDA models; on the CPU `sparsify` keeps
    transformers' concatenation, so CPU results are the dense model's bit for bit."""
    model = tiny_causal_lm("llama", seed=2)
    with torch.no_grad(), sparsify(model, TopKConfig(k=8)), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        cache = DynamicCache()
        model.generate(_prompt(), max_new_tokens=3, past_key_values=cache, **KW)
    assert buffer_of(cache.layers[0].keys) is None


def test_decode_graphs_must_be_a_bool():
    with pytest.raises(InputError, match="decode_graphs must be True or False, got 'no'"):
        TopKConfig(decode_graphs="no")
