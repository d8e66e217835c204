"""The model compatibility matrix: which Hugging Face architectures `sparsify` handles, found by
trying a tiny random-weight model of each on CPU (nothing downloaded).

For every architecture (`architectures`) `try_arch` builds the model from a config, then:

1. ``check``: `topkattn.compat.check_supported` (what `load_model` and `sparsify` run); a
   refusal is recorded with its one-line message.
2. ``dense``: inside ``sparsify(model, TopKConfig(k=4096, phases=("prefill", "decode")))`` (k
   covers the context, so every call takes topkattn's dense paths) the logits of a 12-token
   prompt and a 3-token greedy ``generate`` must equal the model's own attention (max |logit
   diff| <= `TOL`, same tokens).
3. ``sparse``: with ``k=2`` the prompt logits must equal an independent top-k computation
   (`reference_topk_forward`: eager attention restricted to each query's exact top-2 set).

Steps 2 and 3 run with the check bypassed, so that a refusal is backed by evidence. `markdown`
renders the table of docs/models.md, `doc_rows` reads it back (tests/test_models_matrix.py
checks that the document matches a fresh run); scripts/model_matrix.py prints or rewrites it.
"""

from __future__ import annotations

import time
import traceback
import warnings

import torch

def architectures(tf) -> dict:
    """name -> (config factory, model class or None for AutoModelForCausalLM)."""
    common = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  pad_token_id=0, eos_token_id=1, bos_token_id=2)
    return {
        "llama": lambda: tf.LlamaConfig(**common),
        "mistral": lambda: tf.MistralConfig(**common, head_dim=8),
        "mistral (sliding window 5)": lambda: tf.MistralConfig(**common, head_dim=8, sliding_window=5),
        "mixtral": lambda: tf.MixtralConfig(**common, num_local_experts=2, num_experts_per_tok=1),
        "qwen2": lambda: tf.Qwen2Config(**common),
        "qwen3": lambda: tf.Qwen3Config(**common, head_dim=8),
        "qwen3_moe": lambda: tf.Qwen3MoeConfig(**common, head_dim=8, num_experts=2,
                                               num_experts_per_tok=1, moe_intermediate_size=32),
        "deepseek_v3 (MLA, value dim 16 != query/key dim 12)": lambda: tf.DeepseekV3Config(
            **{**common, "num_key_value_heads": 4}, kv_lora_rank=16, q_lora_rank=16,
            qk_rope_head_dim=4, qk_nope_head_dim=8, v_head_dim=16, n_routed_experts=2,
            num_experts_per_tok=1, moe_intermediate_size=32, first_k_dense_replace=1, n_group=1,
            topk_group=1),
        "olmo": lambda: tf.OlmoConfig(**common),
        "glm": lambda: tf.GlmConfig(**common, head_dim=8),
        "smollm3": lambda: tf.SmolLM3Config(**common),
        "qwen2_moe": lambda: tf.Qwen2MoeConfig(**common, num_experts=2, num_experts_per_tok=1,
                                               moe_intermediate_size=32,
                                               shared_expert_intermediate_size=32),
        "gemma": lambda: tf.GemmaConfig(**common, head_dim=8),
        "gemma2 (softcap)": lambda: tf.Gemma2Config(**common, head_dim=8),
        "gemma2 (softcap off)": lambda: tf.Gemma2Config(**common, head_dim=8,
                                                        attn_logit_softcapping=None),
        "gemma3_text": lambda: tf.Gemma3TextConfig(**common, head_dim=8, sliding_window=5),
        "phi3": lambda: tf.Phi3Config(**common),
        "phi": lambda: tf.PhiConfig(**common),
        "stablelm": lambda: tf.StableLmConfig(**common),
        "starcoder2": lambda: tf.Starcoder2Config(**common),
        "olmo2": lambda: tf.Olmo2Config(**common),
        "granite": lambda: tf.GraniteConfig(**common),
        "cohere": lambda: tf.CohereConfig(**common),
        "gpt_oss (sinks)": lambda: tf.GptOssConfig(**{**common, "intermediate_size": 32}, head_dim=8,
                                                   num_local_experts=2, num_experts_per_tok=1,
                                                   sliding_window=5),
        "gpt2": lambda: tf.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=97,
                                      n_positions=128, bos_token_id=2, eos_token_id=1),
        "gpt_bigcode": lambda: tf.GPTBigCodeConfig(n_layer=2, n_embd=32, n_head=4, vocab_size=97,
                                                   n_positions=128, bos_token_id=2, eos_token_id=1),
        "gpt_neox": lambda: tf.GPTNeoXConfig(**{k: v for k, v in common.items()
                                                if k != "num_key_value_heads"}),
        "gptj": lambda: tf.GPTJConfig(n_layer=2, n_embd=32, n_head=4, vocab_size=97, n_positions=128,
                                      rotary_dim=4, bos_token_id=2, eos_token_id=1),
        "opt": lambda: tf.OPTConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                                    ffn_dim=64, vocab_size=97, word_embed_proj_dim=32,
                                    max_position_embeddings=128, pad_token_id=0, bos_token_id=2,
                                    eos_token_id=1),
        "bloom (ALiBi)": lambda: tf.BloomConfig(n_layer=2, hidden_size=32, n_head=4, vocab_size=97,
                                               bos_token_id=2, eos_token_id=1, pad_token_id=0),
        "falcon": lambda: tf.FalconConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                                          vocab_size=97, bos_token_id=2, eos_token_id=1),
        "falcon (ALiBi)": lambda: tf.FalconConfig(num_hidden_layers=2, hidden_size=32,
                                                  num_attention_heads=4, vocab_size=97, alibi=True,
                                                  bos_token_id=2, eos_token_id=1),
        "mpt (ALiBi)": lambda: tf.MptConfig(n_layers=2, d_model=32, n_heads=4, vocab_size=97,
                                            max_seq_len=128, expansion_ratio=2),
        "t5 (encoder-decoder)": lambda: tf.T5Config(num_layers=1, d_model=32, num_heads=2, d_kv=16,
                                                    d_ff=64, vocab_size=97),
        "bart (encoder-decoder)": lambda: tf.BartConfig(encoder_layers=1, decoder_layers=1,
                                                        d_model=32, encoder_attention_heads=2,
                                                        decoder_attention_heads=2, vocab_size=97,
                                                        encoder_ffn_dim=64, decoder_ffn_dim=64),
        "mamba (no attention)": lambda: tf.MambaConfig(num_hidden_layers=2, hidden_size=32,
                                                       vocab_size=97),
    }


PROMPT_LEN, NEW_TOKENS, TOL = 12, 3, 1e-4
# refused on purpose although this script's test passes when the check is bypassed
DELIBERATE = {
    "bart (encoder-decoder)": "BartForCausalLM's decoder layers hold cross-attention (encoder_attn), "
    "which the causal Top-k path would get wrong once encoder states are passed; the prompt "
    "here passes none",
}


def build(tf, config):
    """The model `load_model` would build: AutoModelForCausalLM, SDPA where the architecture
    has it (eager otherwise, as for Gemma2 / gpt-oss), fp32, eval mode, seed 0."""
    torch.manual_seed(0)
    try:
        return tf.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    except ValueError as e:
        if "does not support an attention implementation" not in str(e):
            raise
        torch.manual_seed(0)
        return tf.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()


def reference_topk_forward(k: int):
    """An attention function independent of topkattn's: eager attention where each query keeps
    its k highest-scoring visible keys (the scores after the model's own mask; softcap and sink
    logits are not modelled, which is the point: models with them must be refused)."""
    from transformers.integrations.sdpa_attention import repeat_kv

    def fwd(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        G = query.shape[1] // key.shape[1]
        key, value = repeat_kv(key, G), repeat_kv(value, G)
        scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
        s = torch.matmul(query.float(), key.float().transpose(-1, -2)) * scaling
        Lq, Lk = s.shape[-2:]
        if attention_mask is not None:
            m = attention_mask[..., :Lk]
            s = s.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else s + m.float()
        else:
            vis = torch.ones(Lq, Lk, dtype=torch.bool).tril(Lk - Lq)
            s = s.masked_fill(~vis, float("-inf"))
        if k < Lk:
            kth = s.topk(k, dim=-1).values[..., -1:]
            s = s.masked_fill(s < kth, float("-inf"))  # random fp32 scores: no ties
        p = torch.softmax(s, -1).nan_to_num(0.0)
        return torch.matmul(p, value.float()).to(query.dtype).transpose(1, 2).contiguous(), None

    return fwd


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits.float()


def _generate(model, ids):
    with torch.no_grad():
        return model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, min_new_tokens=NEW_TOKENS,
                              pad_token_id=0)[0, ids.shape[1]:].tolist()


def try_arch(tf, name, make_config) -> dict:
    from topkattn import TopKConfig, sparsify
    from topkattn.compat import check_supported
    from topkattn.errors import TopkattnError

    row = {"arch": name, "model_type": None, "class": None, "check": None, "dense": None,
           "sparse": None, "status": None, "why": "", "dense_diff": None, "dense_tokens": None,
           "sparse_diff": None}
    config = make_config()
    row["model_type"] = config.model_type
    try:
        model = build(tf, config)
    except Exception as e:  # transformers refuses it outright (encoder-decoder: no causal LM class)
        row["check"] = "refused"
        try:
            from topkattn.compat import check_config
            check_config(config)
            row["why"] = f"transformers: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
        except TopkattnError as te:
            row["why"] = str(te)
        row["status"] = "not supported"
        return row
    row["class"] = type(model).__name__
    try:
        check_supported(model)
        row["check"] = "ok"
    except TopkattnError as e:
        row["check"] = "refused"
        row["why"] = str(e)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 97, (1, PROMPT_LEN), generator=g)
    want_logits, want_tokens = _logits(model, ids), _generate(model, ids)

    def attempt(cfg):
        """sparsify(model, cfg) bypassing its check (to see what a refused model would do)."""
        import topkattn.integrations.hf as hf
        saved = hf.check_supported
        hf.check_supported = lambda m: None
        try:
            from topkattn.compat import attention_modules
            with sparsify(model, cfg):
                got = _logits(model, ids), _generate(model, ids)
                calls = sum(m._topkattn_state.calls["sparse"] for _, m in attention_modules(model)
                            if hasattr(m, "_topkattn_state"))
            if cfg.k < PROMPT_LEN and not calls:
                raise RuntimeError("Top-k attention was never called (the model's attention does "
                                   "not go through transformers' AttentionInterface)")
            return got
        finally:
            hf.check_supported = saved

    try:
        logits, tokens = attempt(TopKConfig(k=4096, phases=("prefill", "decode")))
        diff = float((logits - want_logits).abs().max())
        row["dense_diff"], row["dense_tokens"] = diff, tokens == want_tokens
        row["dense"] = f"logits max abs diff {diff:.1e}, tokens {'same' if tokens == want_tokens else 'differ'}"
        dense_ok = diff <= TOL and tokens == want_tokens
    except Exception as e:
        row["dense"] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:100]}"
        dense_ok = False
    try:
        logits, _ = attempt(TopKConfig(k=2, phases=("prefill", "decode")))
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
        AttentionInterface.register("ref_topk2", reference_topk_forward(2))
        AttentionMaskInterface.register("ref_topk2", sdpa_mask)
        prev = model.config._attn_implementation
        model.set_attn_implementation("ref_topk2")
        try:
            ref = _logits(model, ids)
        finally:
            model.set_attn_implementation(prev)
        diff = float((logits - ref).abs().max())
        row["sparse_diff"] = diff
        row["sparse"] = f"logits vs independent top-2: max abs diff {diff:.1e}"
        sparse_ok = diff <= TOL
    except Exception as e:
        row["sparse"] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:100]}"
        sparse_ok = False
    works = dense_ok and sparse_ok
    if row["check"] == "ok":
        row["status"] = "supported" if works else "WRONG (accepted but differs)"
    else:
        if name in DELIBERATE:
            row["status"] = "not supported (on purpose)"
            row["why"] += f"; {DELIBERATE[name]}"
        else:
            row["status"] = "not supported" + (" (would run correctly: refusal too strict)"
                                               if works else "")
    return row


def markdown(rows) -> str:
    out = ["| architecture | model_type | class | status | refusal message | dense path (k covers "
           "the context) | Top-k path (k = 2) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [r["arch"], f"`{r['model_type']}`", r["class"] or "-", r["status"],
                 r["why"] or "-", r["dense"] or "-", r["sparse"] or "-"]
        out.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(out) + "\n"


#: the columns of the docs/models.md table that do not depend on the machine (the logit
#: differences of the last two columns are rounding noise)
STABLE = ("arch", "model_type", "class", "status", "why")
_DOC_COLS = ("arch", "model_type", "class", "status", "why", "dense", "sparse")
BEGIN, END = "<!-- matrix: begin -->", "<!-- matrix: end -->"


def run_matrix(only: list[str] | None = None, log=None) -> list[dict]:
    """`try_arch` for every architecture (names containing one of ``only``, if given); a
    failure of the matrix code itself is a row with status "script error"."""
    import transformers as tf

    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, make in architectures(tf).items():
            if only and not any(o in name for o in only):
                continue
            t0 = time.time()
            try:
                row = try_arch(tf, name, make)
            except Exception:  # noqa: BLE001  (reported as a row, the matrix goes on)
                row = {"arch": name, "model_type": "?", "class": None, "check": None,
                       "dense": None, "sparse": None, "status": "script error",
                       "why": traceback.format_exc().strip().splitlines()[-1]}
            row["seconds"] = time.time() - t0
            rows.append(row)
            if log is not None:
                log(row)
    return rows


def doc_rows(text: str) -> list[dict]:
    """The rows of the matrix table between `BEGIN` and `END` in a docs/models.md text, as
    dicts with `markdown`'s columns (``model_type`` without backticks, "-" as None/"")."""
    body = text.split(BEGIN, 1)[1].split(END, 1)[0]
    rows = []
    for line in body.strip().splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        r = dict(zip(_DOC_COLS, cells))
        r["model_type"] = r["model_type"].strip("`")
        r["class"] = None if r["class"] == "-" else r["class"]
        r["why"] = "" if r["why"] == "-" else r["why"]
        rows.append(r)
    return rows


def stable(row: dict) -> tuple:
    """The `STABLE` columns of a row as the document shows them."""
    return tuple(str(row[c]).replace("|", "/") if row[c] is not None else None for c in STABLE)


def replace_table(text: str, rows: list[dict]) -> str:
    """``text`` (docs/models.md) with the table between `BEGIN` and `END` replaced."""
    head, rest = text.split(BEGIN, 1)
    return head + BEGIN + "\n" + markdown(rows) + END + rest.split(END, 1)[1]


__all__ = ["BEGIN", "DELIBERATE", "END", "STABLE", "TOL", "architectures", "build", "doc_rows",
           "markdown", "reference_topk_forward", "replace_table", "run_matrix", "stable",
           "try_arch"]
