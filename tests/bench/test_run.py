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


def test_bad_layers_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="--layers must be a positive integer, got 0"):
        run_ops(["generate"], "8k", "64", "1", str(tmp_path), layers=0)


def test_generate_modes_and_paths_are_checked_before_any_gpu_work(tmp_path):
    with pytest.raises(ValueError, match="unknown generate paths \\['graphs'\\]; allowed: "
                                         "\\['compiled', 'eager', 'graph'\\]"):
        run_ops(["generate"], "8k", "64", "1", str(tmp_path), paths="eager,graphs")
    with pytest.raises(ValueError, match="unknown generate modes \\['topk'\\]"):
        run_ops(["generate"], "8k", "64", "1", str(tmp_path), modes="topk")
    with pytest.raises(ValueError, match="add generate to --op"):
        run_ops(["decode"], "8k", "64", "1", str(tmp_path), paths="compiled")


def test_generate_mode_table_filters_modes_and_paths():
    from topkattn.bench.generate import mode_table

    runs = mode_table(64, ("topk-kv_group", "dense-ranges"), ("compiled", "graph"))
    assert [(m[0], m[2]) for m in runs] == [("dense-ranges", "graph"), ("dense-ranges", "compiled"),
                                            ("topk-kv_group", "graph"), ("topk-kv_group", "compiled")]
    assert all(m[1].k == (None if m[0] == "dense-ranges" else 64) for m in runs)


def test_generate_plot_has_one_bar_per_mode_and_cell(tmp_path):
    import json

    import matplotlib.image as mpimg

    from topkattn.bench.generate import replot

    rows = [{"B": b, "ctx": c, "mode": m, "path": p, "step_ms": ms}
            for b, c in ((1, 8192), (4, 8192))
            for (m, p), ms in ((("dense-ranges", "graph"), 8.0), (("topk-kv_group", "graph"), 10.0 * b))]
    meta = {"layers": 2, "k": 64, "device": "test", "torch": "x", "date": "d"}
    (tmp_path / "generate.json").write_text(json.dumps({"meta": meta, "rows": rows}))
    img = mpimg.imread(replot(tmp_path / "generate.json"))
    assert img.shape[0] > 300 and img.shape[1] > 600
    # the bars are drawn in colour: some pixels are neither white nor grey
    rgb = img[..., :3]
    coloured = (rgb.max(-1) - rgb.min(-1)) > 0.3
    assert coloured.mean() > 0.01
