"""Project-wide test set-up.

Without a GPU, Triton kernels run under the interpreter (TRITON_INTERPRET=1 must be set before
triton is imported). Tests marked `gpu` skip without CUDA; `slow` marks real-model tests.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device (run on the device machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def embedded_model():
    """The embedded SmolLM2-135M-Instruct (model, tokenizer), loaded once per test session."""
    from topkattn.models import load_model

    return load_model()


@pytest.fixture(scope="session")
def tokenizer():
    """SmolLM2-135M-Instruct's tokenizer from the embedded GGUF (chat template included)."""
    from transformers import AutoTokenizer

    from topkattn.models import embedded_model_file

    f = embedded_model_file()
    return AutoTokenizer.from_pretrained(str(f.parent), gguf_file=f.name)
