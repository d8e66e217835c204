"""Ltri tests run their tiny models on one CPU thread (the models are too small for more to
help; on a loaded machine extra threads only wait), restoring the setting afterwards."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
