"""Tiny random models and a toy tokenizer for selector and fidelity tests (CPU, seconds)."""

import torch


class ToyTokenizer:
    """Whitespace-separated integers <-> token ids (enough for generate and the analysis)."""

    pad_token_id = 0
    eos_token_id = None
    chat_template = None

    def __call__(self, text, return_tensors=None, add_special_tokens=False):
        from transformers import BatchEncoding

        ids = torch.tensor([[int(t) for t in text.split()]])
        return BatchEncoding({"input_ids": ids, "attention_mask": torch.ones_like(ids)})

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(int(i)) for i in ids)


def tiny_llama(seed: int = 0, layers: int = 2, init: float = 0.02):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=16, max_position_embeddings=1024, initializer_range=init)
    model = LlamaForCausalLM(cfg).eval()
    model.set_attn_implementation("sdpa")
    return model


def random_prompt(n: int, seed: int = 0) -> str:
    g = torch.Generator().manual_seed(seed)
    return " ".join(str(int(x)) for x in torch.randint(1, 128, (n,), generator=g))
