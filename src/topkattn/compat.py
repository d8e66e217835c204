"""Which models topkattn can switch to Top-k attention: Hugging Face decoder-only causal LMs
whose self-attention goes through transformers' AttentionInterface, with no attention variant
that the ``"topk"`` attention function would drop. Used by `models.load_model` (refuse early:
`check_config` before any weight is read, `check_supported` after) and by
`integrations.hf.sparsify`; it depends on neither.

Refused, each with one line saying why (the matrix of architectures tried, with evidence, is
docs/models.md, made by scripts/model_matrix.py):

- encoder-decoder models (T5, BART, ...) and decoders with cross-attention layers;
- models without attention (Mamba and other state-space / recurrent models);
- attention logit softcapping (Gemma2's ``attn_logit_softcapping``): Top-k attention and the
  dense paths inside `sparsify` compute plain softmax(q.k * scale), so the cap would be dropped;
- learned attention sinks (gpt-oss's per-head ``sinks`` logits), dropped likewise;
- models whose layers compute attention themselves instead of through the AttentionInterface
  (Bloom and MPT with ALiBi, Falcon, ...): there is nothing to switch;
- base models without a language-model head (``LlamaModel``): load them with
  AutoModelForCausalLM.

Sliding windows (Mistral, Qwen2, Gemma3, ...) are honoured: they reach the attention function in
its mask (key ranges or transformers' bool mask), so they are not a reason to refuse.
"""

from __future__ import annotations

import torch

from topkattn.errors import InputError

SUPPORTED_HINT = "see docs/models.md for the architectures that work (Llama, Mistral, Qwen2/3, " \
    "Gemma, Gemma3, Phi3, GPT-2, GPT-NeoX, OPT, ...)"
# model types with no attention layer at all (state-space / recurrent models)
ATTENTION_FREE = ("mamba", "mamba2", "falcon_mamba", "rwkv", "xlstm")
# model types whose attention adds learned sink logits to the softmax
ATTENTION_SINKS = ("gpt_oss",)


class UnsupportedModelError(InputError):
    """A model that `sparsify` cannot switch to Top-k attention."""


def attention_modules(model: torch.nn.Module) -> list[tuple[int | None, torch.nn.Module]]:
    """(layer index, module) for every self-attention module of a decoder."""
    found = []
    for name, mod in model.named_modules():
        if name.endswith(("self_attn", "attention", "attn")) and hasattr(mod, "layer_idx"):
            found.append((getattr(mod, "layer_idx", None), mod))
    return found


def _configs(config):
    """``config`` and its text sub-config (multimodal wrappers keep the decoder's there)."""
    out = [config]
    get_text = getattr(config, "get_text_config", None)
    if callable(get_text):
        try:
            text = get_text()
        except Exception:  # pragma: no cover - odd configs
            text = None
        if text is not None and text is not config:
            out.append(text)
    return out


def _calls_attention_interface(mod: torch.nn.Module) -> bool:
    """Whether the module's forward looks its attention function up in transformers'
    AttentionInterface (``ALL_ATTENTION_FUNCTIONS``); the class flag
    ``_supports_attention_backend`` is not reliable (StableLM calls the interface without it)."""
    import inspect

    try:
        src = inspect.getsource(type(mod).forward)
    except (OSError, TypeError):  # no source: trust the flag of the module's model class
        return True
    return "ALL_ATTENTION_FUNCTIONS" in src or "attention_interface" in src


def check_config(config) -> None:
    """Refuse from the config alone (before weights load): encoder-decoder, attention-free,
    softcapped, ALiBi-biased or sink attention, and model types without a causal-LM class."""
    model_type = getattr(config, "model_type", None) or type(config).__name__
    if getattr(config, "is_encoder_decoder", False):
        raise UnsupportedModelError(
            f"model type {model_type!r} is an encoder-decoder model; topkattn replaces the "
            f"self-attention of decoder-only causal LMs ({SUPPORTED_HINT})")
    if model_type in ATTENTION_FREE:
        raise UnsupportedModelError(
            f"model type {model_type!r} has no attention layers (a state-space / recurrent "
            "model), so there is no attention to replace with Top-k attention")
    for c in _configs(config):
        cap = getattr(c, "attn_logit_softcapping", None)
        if cap:
            raise UnsupportedModelError(
                f"model type {model_type!r} caps its attention logits (attn_logit_softcapping="
                f"{cap}); Top-k attention computes softmax(q.k * scale) without a cap, so it "
                "would silently change the model")
    for c in _configs(config):
        if getattr(c, "alibi", False) is True:
            raise UnsupportedModelError(
                f"model type {model_type!r} adds ALiBi position biases to its attention scores "
                "(alibi=True); Top-k attention selects and weighs keys by q.k * scale alone, so "
                "it would silently change the model")
    if model_type in ATTENTION_SINKS:
        raise UnsupportedModelError(
            f"model type {model_type!r} adds learned attention-sink logits to every softmax; "
            "Top-k attention has no sink logits, so it would silently change the model (its "
            "``sink`` option keeps the first positions, which is another thing)")
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if getattr(config, "model_type", None) and model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise UnsupportedModelError(
            f"model type {model_type!r} has no causal-LM class in transformers "
            f"(AutoModelForCausalLM cannot load it); {SUPPORTED_HINT}")


def check_supported(model: torch.nn.Module) -> None:
    """Raise `UnsupportedModelError` unless Top-k attention can be switched on for ``model``
    and computes what the model's own attention computes (with k covering the context)."""
    cls = type(model).__name__
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "set_attn_implementation"):
        raise UnsupportedModelError(
            f"{cls} is not a Hugging Face transformers model; topkattn supports causal LMs "
            "loaded with AutoModelForCausalLM")
    check_config(config)
    mt = config.model_type
    can_generate = getattr(model, "can_generate", None)
    if callable(can_generate) and not can_generate():
        raise UnsupportedModelError(
            f"{cls} ({mt}) is not a decoder-only causal LM with a language-model head (a base "
            "or encoder model); load a causal LM with AutoModelForCausalLM (topkattn.models."
            "load_model does)")
    modules = attention_modules(model)
    if not modules:
        raise UnsupportedModelError(
            f"{cls} ({mt}) has no attention modules with a layer index, so there is no attention "
            "to replace with Top-k attention")
    for layer, mod in modules:
        where = f"{cls} ({mt}) layer {layer} ({type(mod).__name__})"
        if getattr(mod, "is_cross_attention", False) or getattr(mod, "is_causal", True) is False:
            raise UnsupportedModelError(
                f"{where} is cross-attention or non-causal attention; Top-k attention replaces "
                "causal self-attention only (decoder-only models)")
        cap = getattr(mod, "attn_logit_softcapping", None) or getattr(mod, "softcap", None)
        if cap:
            raise UnsupportedModelError(
                f"{where} caps its attention logits (softcap {cap}); Top-k attention computes "
                "softmax(q.k * scale) without a cap, so it would silently change the model")
        if getattr(mod, "sinks", None) is not None:
            raise UnsupportedModelError(
                f"{where} adds learned attention-sink logits to its softmax; Top-k attention has "
                "none, so it would silently change the model")
    if not model._can_set_attn_implementation() or not all(
            _calls_attention_interface(mod) for _, mod in modules):
        raise UnsupportedModelError(
            f"{cls} ({mt}) computes attention inside its own layers instead of calling "
            "transformers' AttentionInterface (as Bloom and MPT with ALiBi, or Falcon, do), so its "
            "attention cannot be replaced by Top-k attention")


__all__ = ["UnsupportedModelError", "attention_modules", "check_config", "check_supported"]
