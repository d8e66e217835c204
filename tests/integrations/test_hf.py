"""sparsify() on tiny random models of each supported family, and on the embedded model."""

import pytest
import torch

from tests.helpers import FAMILIES, tiny_causal_lm
from topkattn import TopKConfig, sparsify
from topkattn.integrations import hf
from topkattn.integrations.hf import UnsupportedModelError, check_supported


def force_sparse(monkeypatch):
    """Route every attention call through the top-k operator, even when k covers the context."""
    monkeypatch.setattr(TopKConfig, "applies_to", lambda self, layer, phase, ctx: phase in self.phases)


@pytest.mark.parametrize("family", FAMILIES)
def test_k_at_least_length_equals_dense(family, monkeypatch):
    model = tiny_causal_lm(family)
    x = torch.randint(3, 97, (2, 24))
    with torch.no_grad():
        dense = model(x).logits
        force_sparse(monkeypatch)
        with sparsify(model, TopKConfig(k=64, phases=("prefill", "decode"), backend="reference")) as st:
            same = model(x).logits
    assert st[0].calls["sparse"] == 1
    assert torch.allclose(dense, same, atol=1e-5)
    assert model.config._attn_implementation == "sdpa"  # restored


@pytest.mark.parametrize("family", FAMILIES)
def test_small_k_differs_and_stays_finite(family):
    model = tiny_causal_lm(family)
    x = torch.randint(3, 97, (1, 40))
    with torch.no_grad():
        dense = model(x).logits
        with sparsify(model, TopKConfig(k=2, phases=("prefill",))):
            sparse = model(x).logits
    assert torch.isfinite(sparse).all()
    assert not torch.allclose(dense, sparse, atol=1e-3)
    # the first rows see at most k + 1 keys: identical to dense there
    assert torch.allclose(dense[:, :2], sparse[:, :2], atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_decode_phase(family):
    model = tiny_causal_lm(family)
    x = torch.randint(3, 97, (1, 30))
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        dense = model.generate(x, **kw)
        with sparsify(model, TopKConfig(k=1000)) as st:
            same = model.generate(x, **kw)
        with sparsify(model, TopKConfig(k=2)) as st2:
            sparse = model.generate(x, **kw)
    assert torch.equal(dense, same)
    assert st2[0].calls["sparse"] == 5 and st2[0].calls["dense"] == 1  # prefill stays dense
    assert sparse.shape == dense.shape


def test_dense_layers_and_restore_after_error():
    model = tiny_causal_lm("llama", layers=3)
    x = torch.randint(3, 97, (1, 20))
    with pytest.raises(RuntimeError, match="boom"):
        with sparsify(model, TopKConfig(k=2, phases="prefill", dense_layers=(1,))) as st:
            model(x)
            assert st[1].calls == {"sparse": 0, "dense": 1}
            assert st[0].calls == {"sparse": 1, "dense": 0}
            raise RuntimeError("boom")
    assert model.config._attn_implementation == "sdpa"
    assert not any(hasattr(m, hf._STATE_ATTR) for _, m in hf.attention_modules(model))


def test_padded_batch_matches_unpadded(monkeypatch):
    model = tiny_causal_lm("llama")
    a = torch.randint(3, 97, (1, 12))
    b = torch.randint(3, 97, (1, 16))
    batch = torch.cat([torch.cat([torch.zeros(1, 4, dtype=torch.long), a], 1), b])
    mask = torch.ones_like(batch)
    mask[0, :4] = 0
    cfg = TopKConfig(k=3, phases=("prefill", "decode"))
    with torch.no_grad(), sparsify(model, cfg):
        alone = model(a).logits
        both = model(batch, attention_mask=mask).logits
    assert torch.allclose(both[0, 4:], alone[0], atol=1e-4)


def test_sink_with_left_padding_is_refused():
    # sink positions are key slots 0..sink-1: in the left-padded row they would be padding
    model = tiny_causal_lm("llama")
    batch = torch.randint(3, 97, (2, 16))
    mask = torch.ones_like(batch)
    mask[0, :4] = 0
    cfg = TopKConfig(k=3, sink=2, phases=("decode",))
    with torch.no_grad(), sparsify(model, cfg):
        with pytest.raises(hf.InputError, match=r"sink=2.*rows 0 \(first key at slot 4\)"):
            model(batch, attention_mask=mask)
        model(batch, attention_mask=torch.ones_like(batch))  # no padding: fine
        model(batch, attention_mask=torch.ones_like(batch).index_fill_(1, torch.tensor([15]), 0))
    with torch.no_grad(), sparsify(model, TopKConfig(k=None, sink=2)):
        model(batch, attention_mask=mask)  # full attention keeps every key: no sink to lose


def test_nested_blocks_restore_outer_config():
    model = tiny_causal_lm("llama")
    x = torch.randint(3, 97, (1, 20))
    with torch.no_grad(), sparsify(model, TopKConfig(k=2, phases="prefill")) as outer:
        with sparsify(model, TopKConfig(k=3, phases="decode")) as inner:
            model(x)
        model(x)
    assert inner[0].calls == {"sparse": 0, "dense": 1}
    assert outer[0].calls == {"sparse": 1, "dense": 0}


def test_unsupported_models_are_refused():
    import transformers as tf

    bert = tf.BertModel(tf.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, intermediate_size=32))
    with pytest.raises(UnsupportedModelError, match="not a decoder-only causal LM"):
        check_supported(bert)
    with pytest.raises(UnsupportedModelError, match="not a Hugging Face transformers model"):
        with sparsify(torch.nn.Linear(2, 2), TopKConfig(k=2)):
            pass
    with pytest.raises(TypeError, match="TopKConfig"):
        with sparsify(tiny_causal_lm(), {"k": 2}):
            pass


def test_training_gradients_flow_through_selected_keys():
    model = tiny_causal_lm("llama").train()
    x = torch.randint(3, 97, (2, 24))
    with sparsify(model, TopKConfig(k=4, phases=("prefill",))):
        loss = model(x, labels=x).loss
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.model.layers[0].self_attn.k_proj.weight.grad.abs().sum() > 0


def test_autocast_bf16_training_forward():
    # under autocast, RoPE leaves q/k in fp32 while v comes out of the projection in bf16
    model = tiny_causal_lm("llama").train()
    x = torch.randint(3, 97, (1, 24))
    with torch.autocast("cpu", dtype=torch.bfloat16), sparsify(model, TopKConfig(k=4, phases="prefill")) as st:
        loss = model(x, labels=x).loss
    loss.backward()
    assert torch.isfinite(loss) and st[0].calls["sparse"] == 1
