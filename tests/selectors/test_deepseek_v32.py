"""The built-in Lightning Indexer of a deepseek_v32 model, measured like our selectors."""

import pytest
import torch

pytest.importorskip("transformers.models.deepseek_v32")


def tiny_deepseek_v32():
    from transformers import AutoModelForCausalLM
    from transformers.models.deepseek_v32 import DeepseekV32Config

    torch.manual_seed(0)
    cfg = DeepseekV32Config(
        vocab_size=256, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, n_routed_experts=4,
        n_shared_experts=1, num_experts_per_tok=2, n_group=1, topk_group=1,
        first_k_dense_replace=2, q_lora_rank=32, kv_lora_rank=32, qk_rope_head_dim=16,
        qk_nope_head_dim=16, v_head_dim=16, head_dim=16, index_topk=16, index_head_dim=16,
        index_n_heads=4, max_position_embeddings=512)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()


def test_deepseek_v32_indexer_precision():
    from topkattn.analysis.fidelity import deepseek_v32_indexer_fidelity

    model = tiny_deepseek_v32()
    ids = torch.randint(2, 256, (1, 96), generator=torch.Generator().manual_seed(0))
    res = deepseek_v32_indexer_fidelity(model, ids, topk=8)
    assert len(res["per_layer"]) == 2
    for m in ("precision", "precision_per_head", "mass_recall", "random_precision"):
        assert 0.0 <= res[m] <= 1.0
    # an untrained (random) indexer sits near chance; the measurement itself must be exact:
    # with topk >= the row length every position is selected
    full = deepseek_v32_indexer_fidelity(model, ids[:, :40], topk=40, min_pos=39)
    assert full["precision"] == pytest.approx(1.0)
    assert full["mass_recall"] == pytest.approx(1.0, abs=1e-5)
    assert model.config.index_topk == 16  # restored


def test_rejects_other_models():
    from transformers import LlamaConfig, LlamaForCausalLM

    from topkattn.analysis.fidelity import deepseek_v32_indexer_fidelity

    m = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
                                     num_hidden_layers=1, num_attention_heads=2))
    with pytest.raises(ValueError, match="deepseek_v32"):
        deepseek_v32_indexer_fidelity(m, torch.ones(1, 8, dtype=torch.long), 2)
