"""Fixtures of the selector tests (helpers live in tiny.py)."""

import pytest

from .tiny import ToyTokenizer, tiny_llama


@pytest.fixture(scope="session")
def llama():
    return tiny_llama()


@pytest.fixture(scope="session")
def tok():
    return ToyTokenizer()
