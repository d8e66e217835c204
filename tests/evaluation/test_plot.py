"""The accuracy plot read back: what it shows, and a long title kept inside the canvas."""

import matplotlib.image as mpimg
import numpy as np
from matplotlib.colors import to_rgb

from topkattn.evaluation.report import Cell, plot_accuracy


def _near(img, color, tol=0.08):
    return (np.abs(img[..., :3] - np.asarray(to_rgb(color))).max(-1) < tol)


def test_accuracy_plot_shows_a_line_per_length_and_keeps_a_long_title(tmp_path):
    cells = [Cell(task, length, k, 10, acc)
             for task in ("niah", "vt")
             for length, base in ((512, 9.0), (2048, 4.0))
             for k, acc in (("16", base - 3), ("64", base - 1), ("full", base))]
    title = "a long title " * 12  # wider than the figure unwrapped
    img = mpimg.imread(plot_accuracy(cells, ["16", "64", "full"], tmp_path / "acc.png", title))
    h, w = img.shape[:2]
    for color in ("C0", "C1"):  # one colour per length, in both task panels
        m = _near(img, color)
        assert m[:, : w // 2].sum() > 100 and m[:, w // 2:].sum() > 100, color
    assert _near(img, "C2").sum() == 0  # two lengths only
    dark = img[..., :3].max(-1) < 0.3
    assert not dark[0].any() and not dark[:, 0].any() and not dark[:, -1].any()  # nothing cut
    bare = mpimg.imread(plot_accuracy(cells, ["16", "64", "full"], tmp_path / "bare.png"))
    bare_dark = bare[..., :3].max(-1) < 0.3
    # the wrapped title: text in the top eighth beyond the panel titles alone
    assert dark[: h // 8].sum() > bare_dark[: bare.shape[0] // 8].sum() + 1000
    # the longer context scored lower: its line sits lower (larger image rows) in each panel
    ys = [np.nonzero(_near(img, c)[:, : w // 2])[0] for c in ("C0", "C1")]
    assert np.median(ys[1]) > np.median(ys[0])
