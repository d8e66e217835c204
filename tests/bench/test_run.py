"""The benchmark entry point: every op names a module with run(); bad input fails clearly."""

import importlib
import inspect
import json

import numpy as np
import pytest
import torch

from topkattn.bench.run import OPS, run_ops

# ops whose run() needs no device when given no sizes (the others build CUDA tensors or a model
# before their loops): they then write an empty table
EMPTY_RUNS_ON_CPU = ("select", "decode", "prefill", "indexer_decode")


@pytest.mark.parametrize("op", OPS)
def test_every_op_has_a_runner(op, tmp_path):
    """run() takes what `run_ops` passes it; where it can run here (no sizes), it writes the
    op's JSON, markdown table and plot, with no rows."""
    mod = importlib.import_module(f"topkattn.bench.{op}")
    sig = inspect.signature(mod.run)
    if op == "ltri":  # as run_ops calls it
        sig.bind([8192], [1], str(tmp_path), layers=2, budget_tokens=64)
    else:
        extra = {"layers": 2, "modes": None, "paths": None} if op == "generate" else {}
        sig.bind([8192], [64], [1], str(tmp_path), **extra)
    if op not in EMPTY_RUNS_ON_CPU:
        return
    assert mod.run([], [], [], str(tmp_path)) == []
    data = json.loads((tmp_path / f"{op}.json").read_text())
    assert data["rows"] == [] and data["meta"]["device"] and data["meta"]["torch"] == torch.__version__
    md = (tmp_path / f"{op}.md").read_text().splitlines()
    assert md[0] == f"### {op}" and md[-2].startswith("| ") and set(md[-1]) <= set("|-")


def _pixels_near(img, rgb, tol=0.08):
    """How many pixels of an RGB(A) float image lie within ``tol`` of colour ``rgb``."""
    return int((np.abs(img[..., :3] - np.asarray(rgb)).max(-1) < tol).sum())


def test_results_plot_shows_every_series(tmp_path):
    """`write_results`' plot: one bar series per y column, in matplotlib's first two colours; the
    title is drawn inside the canvas (dark pixels below the top edge, none cut at it)."""
    import matplotlib.image as mpimg
    from matplotlib.colors import to_rgb

    from topkattn.bench.common import write_results

    rows = [{"case": f"c{i}", "ours_us": 10.0 + i, "torch_us": 40.0 + 3 * i} for i in range(4)]
    meta = {"device": "test", "torch": "x", "triton": "y", "date": "d"}
    md = write_results("t", rows, ["case", "ours_us", "torch_us"], tmp_path, meta,
                       plot=("case", "a title", ["ours_us", "torch_us"]))
    assert "| c3 | 13.000 | 49.000 |" in md.read_text()
    img = mpimg.imread(tmp_path / "t.png")
    assert _pixels_near(img, to_rgb("C0")) > 200 and _pixels_near(img, to_rgb("C1")) > 200
    assert _pixels_near(img, to_rgb("C2")) == 0  # no third series
    dark = (img[..., :3].max(-1) < 0.3).any(1)  # rows holding text or axes
    assert not dark[0] and dark[: img.shape[0] // 10].any()  # the title: near the top, not cut
    # the series are drawn where their values say: the torch bars reach above the ours bars
    ys0 = np.nonzero(np.abs(img[..., :3] - to_rgb("C0")).max(-1) < 0.08)[0]
    ys1 = np.nonzero(np.abs(img[..., :3] - to_rgb("C1")).max(-1) < 0.08)[0]
    assert np.median(ys1) < np.median(ys0)  # image rows count down: smaller row = higher value


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
                                         "\\['compiled', 'eager', 'eager-plain', 'graph'\\]"):
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


def test_generate_plot_says_why_a_bar_is_missing(tmp_path, monkeypatch):
    """A mode that ran out of GPU memory (or failed) leaves no bar: the plot writes why in its
    place, and a cell with no bar at all keeps its place on the axis."""
    from matplotlib.axes import Axes

    from topkattn.bench.generate import plot_generate

    said = []
    text = Axes.text
    monkeypatch.setattr(Axes, "text", lambda self, x, y, s, *a, **kw: (said.append((x, s)),
                                                                        text(self, x, y, s, *a, **kw))[1])
    rows = [dict(B=1, ctx=8192, mode="dense-ranges", path="graph", step_ms=9.0),
            dict(B=1, ctx=8192, mode="topk-kv_group", path="graph", step_ms=8.0),
            dict(B=4, ctx=131072, mode="dense-ranges", path="graph", note="out of GPU memory"),
            dict(B=4, ctx=131072, mode="topk-kv_group", path="graph", note="RuntimeError: x"),
            dict(B=4, ctx=131072, mode="topk-lightning", path="graph",
                 note="1 of 2 layers (2 do not fit in GPU memory); RuntimeError: y")]
    plot_generate(rows, {"layers": 2, "k": 64}, tmp_path / "g.png")
    assert (tmp_path / "g.png").stat().st_size > 0
    assert [s for _, s in said] == ["out of memory", "failed", "failed"]
    assert all(x > 0.5 for x, _ in said)  # in the second cell


def test_a_cell_that_does_not_fit_runs_again_with_half_the_layers():
    from topkattn.bench.generate import OUT_OF_MEMORY, fitted_cell

    tried = []

    def cell_at(n):  # two modes; the graph mode fits from 8 layers on, the eager one from 4
        tried.append(n)
        return [{"mode": "a", "layers": n, **({"step_ms": 1.0} if n <= 8 else {"note": OUT_OF_MEMORY})},
                {"mode": "b", "layers": n, **({"step_ms": 2.0} if n <= 4 else {"note": OUT_OF_MEMORY})}]

    cell = fitted_cell(cell_at, 32)
    assert tried == [32, 16, 8, 4]
    assert [r["layers"] for r in cell] == [4, 4] and all(r.get("step_ms") for r in cell)
    assert cell[0]["note"] == "4 of 32 layers (32 do not fit in GPU memory)"
    assert fitted_cell(lambda n: [{"mode": "a", "step_ms": 1.0}], 32) == [{"mode": "a", "step_ms": 1.0}]
    # a mode that fits nowhere stops at one layer, its note kept
    cell = fitted_cell(lambda n: [{"mode": "a", "note": OUT_OF_MEMORY}], 4)
    assert cell[0]["note"] == "1 of 4 layers (4 do not fit in GPU memory); " + OUT_OF_MEMORY


def test_first_layers_runs_the_model_on_its_first_layers_and_restores_it():
    from tests.helpers import tiny_causal_lm
    from topkattn.bench.generate import first_layers

    model = tiny_causal_lm("llama", layers=3)
    x = torch.randint(3, 97, (1, 12))
    with torch.no_grad():
        full = model(x).logits
        with first_layers(model, 1) as m:
            assert len(m.model.layers) == 1 and m.config.num_hidden_layers == 1
            cut = model(x, output_hidden_states=True)
        assert len(cut.hidden_states) == 2  # embeddings + one layer
        assert len(model.model.layers) == 3 and model.config.num_hidden_layers == 3
        assert torch.equal(model(x).logits, full)
