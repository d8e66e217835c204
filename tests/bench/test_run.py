"""The benchmark entry point: every op names a module with run(); bad input fails clearly."""

import importlib

import pytest
import torch

from topkattn.bench.run import OPS, run_ops


@pytest.mark.parametrize("op", OPS)
def test_every_op_has_a_runner(op):
    mod = importlib.import_module(f"topkattn.bench.{op}")
    assert callable(mod.run)


def test_unknown_op_names_the_allowed_ones():
    with pytest.raises(ValueError, match="--op must be among .*indexer_decode.*got \\['nope'\\]"):
        run_ops(["nope"], "8k", "64", "1", "runs/x")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU message")
def test_no_cuda_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="need a CUDA device"):
        run_ops(["decode"], "8k", "64", "1", str(tmp_path))
