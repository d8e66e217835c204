"""The tuning knobs and fault hooks: set for a block, restored after it, and read by the
launches (a recorder in front of the kernels sees the values)."""

from dataclasses import FrozenInstanceError, replace

import pytest
import torch

from tests.ops.compare import dev
from topkattn.ops import testing, tuning
from topkattn.ops.tuning import DEFAULT, DecodeTuning, tuned


def test_tuned_replaces_families_and_restores_them():
    with tuned(decode=DecodeTuning(tiles=2)) as t:
        assert tuning.current() is t and t.decode.tiles == 2 and t.select is DEFAULT.select
        with tuned(select=replace(DEFAULT.select, sample=1)):
            assert tuning.current().decode.tiles == 2 and tuning.current().select.sample == 1
        assert tuning.current() is t
        with pytest.raises(RuntimeError), tuned(dense=replace(DEFAULT.dense, waves=9)):
            raise RuntimeError
        assert tuning.current() is t
    assert tuning.current() is DEFAULT
    with pytest.raises(TypeError, match="unknown tuning families \\['decoder'\\]"):
        with tuned(decoder=DecodeTuning()):
            pass
    with pytest.raises(FrozenInstanceError):
        DEFAULT.decode.tiles = 1  # type: ignore[misc]


def test_inject_sets_hooks_and_restores_them():
    with testing.inject(poison=True) as f:
        with testing.inject(window_shift=3):
            assert testing.active() == replace(f, window_shift=3)
        assert testing.active() is f and f.poison and f.window_shift == 0
    assert testing.active() is testing.NONE
    with pytest.raises(TypeError):
        with testing.inject(posion=True):
            pass


class _Recorder:
    """Stands in for a launched kernel: records each launch's keyword arguments."""

    def __init__(self, kernel):
        self.kernel, self.kwargs = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.kwargs.append(kwargs)
            return self.kernel[grid](*args, **kwargs)
        return launch


def test_decode_knobs_reach_the_scores_launch(monkeypatch):
    import topkattn.ops.topk.triton_decode as td

    rec = _Recorder(td._scores_kernel)
    monkeypatch.setattr(td, "_scores_kernel", rec)
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, L, 16, device=dev()) for L in (1, 70, 70))
    td.topk_decode(q, k, v, topk=5)
    with tuned(decode=DecodeTuning(block_n=16, tiles=2, scores_warps=2, scores_stages=2)):
        td.topk_decode(q, k, v, topk=5)
    (a, b) = rec.kwargs
    assert (a["BLOCK_N"], a["TILES"], a["num_warps"]) == (128, 4, 4)
    assert (b["BLOCK_N"], b["TILES"], b["num_warps"], b["num_stages"]) == (16, 2, 2, 2)


def test_prefill_faults_and_knobs_reach_the_search(monkeypatch):
    import topkattn.ops.select.prefill_threshold as pt

    rec = _Recorder(pt._count_kernel)
    monkeypatch.setattr(pt, "_count_kernel", rec)
    torch.manual_seed(0)
    q, k = torch.randn(1, 2, 20, 16, device=dev()), torch.randn(1, 1, 20, 16, device=dev())
    with testing.inject(estimate_mode=2), tuned(prefill=replace(DEFAULT.prefill, cap=16)):
        pt.prefill_thresholds(q, k, topk=4, causal=True, scale=0.25)
    pt.prefill_thresholds(q, k, topk=4, causal=True, scale=0.25)
    assert [(kw["ESTM"], kw["CAP"]) for kw in rec.kwargs] == [(2, 16), (0, 512)]
