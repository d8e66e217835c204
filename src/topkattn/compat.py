"""Which models topkattn can switch to Top-k attention: Hugging Face causal LMs whose attention
goes through transformers' AttentionInterface. Used by `models.load_model` (refuse early) and
by `integrations.hf.sparsify`; it depends on neither."""

from __future__ import annotations

import torch

from topkattn.errors import InputError


class UnsupportedModelError(InputError):
    """A model that `sparsify` cannot switch to Top-k attention."""


def attention_modules(model: torch.nn.Module) -> list[tuple[int | None, torch.nn.Module]]:
    """(layer index, module) for every self-attention module of a decoder."""
    found = []
    for name, mod in model.named_modules():
        if name.endswith(("self_attn", "attention", "attn")) and hasattr(mod, "layer_idx"):
            found.append((getattr(mod, "layer_idx", None), mod))
    return found


def check_supported(model: torch.nn.Module) -> None:
    """Raise `UnsupportedModelError` unless Top-k attention can be switched on for ``model``."""
    cls = type(model).__name__
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "set_attn_implementation"):
        raise UnsupportedModelError(
            f"{cls} is not a Hugging Face transformers model; topkattn supports causal LMs "
            "loaded with AutoModelForCausalLM"
        )
    if getattr(config, "is_encoder_decoder", False) or not cls.endswith("ForCausalLM"):
        raise UnsupportedModelError(
            f"{cls} ({config.model_type}) is not a decoder-only causal LM; topkattn supports "
            "*ForCausalLM models (Llama, Qwen2, Qwen3, Mistral, ...)"
        )
    if not model._can_set_attn_implementation() or not attention_modules(model):
        raise UnsupportedModelError(
            f"{cls} ({config.model_type}) does not route attention through transformers' "
            "AttentionInterface, so its attention cannot be replaced by Top-k attention"
        )


__all__ = ["UnsupportedModelError", "attention_modules", "check_supported"]
