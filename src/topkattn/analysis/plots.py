"""Plots of the analyses (matplotlib, Agg backend: files only, no display)."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def interval_yerr(values, intervals) -> list[list[float]]:
    """matplotlib's ``yerr`` [[below...], [above...]] of ``values`` and their intervals
    ``(lo, hi)`` (None: no bar); never negative (an interval computed apart from its value
    may miss it by a rounding error, which matplotlib rejects)."""
    pairs = [(0.0, 0.0) if ci is None else (max(0.0, y - ci[0]), max(0.0, ci[1] - y))
             for y, ci in zip(values, intervals)]
    return [[b for b, _ in pairs], [a for _, a in pairs]]


def save_figure(fig, path, dpi: int = 110) -> Path:
    """Lay out, write (parent folders created) and close ``fig``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, bbox_inches="tight")  # figure-level legends and titles too
    pyplot().close(fig)
    return path


# --------------------------------------------------------------------------------------------
# Attention entropy (topkattn.analysis.entropy)


def plot_entropy_heatmap(results: list[dict], path) -> None:
    """Layers x heads heatmaps of decode-step attention entropy, one panel per model, plus the
    top-k mass of the first k (shared colour scales so models compare directly)."""
    import numpy as np

    plt = pyplot()

    k0 = next(iter(results[0]["topk"]))
    n = len(results)
    fig, axes = plt.subplots(2, n, figsize=(3.2 + 2.6 * n, 7.5), squeeze=False)
    ent = [np.array(r["entropy"]) for r in results]
    mass = [np.array(r["topk"][k0]["mass"]) for r in results]
    e_max = max(float(e.max()) for e in ent)
    for j, r in enumerate(results):
        for i, (arr, title, vmin, vmax, cmap) in enumerate((
                (ent[j], "entropy (nats)", 0.0, e_max, "viridis"),
                (mass[j], f"top-{k0} mass", 0.0, 1.0, "magma"))):
            ax = axes[i, j]
            im = ax.imshow(arr, aspect="auto", origin="lower", vmin=vmin, vmax=vmax, cmap=cmap)
            ax.set_title(f"{r['label']}\n{title}", fontsize=9)
            ax.set_xlabel("head")
            ax.set_ylabel("layer")
            fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"decode-step attention, task {results[0]['config']['task']}, "
                 f"~{results[0]['mean_context']:.0f} keys (log n = "
                 f"{results[0]['log_context']:.2f})", fontsize=10)
    save_figure(fig, path)


def plot_entropy_layers(results: list[dict], path) -> None:
    """Per-layer mean entropy (dense and renormalised top-k) and top-k mass, per model."""
    plt = pyplot()

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    styles = ["-", "--", ":", "-."]
    for j, r in enumerate(results):
        ls = styles[j % len(styles)]
        layers = r["layers"]
        pl = r["per_layer"]
        a1.plot(layers, pl["entropy"], ls, color="k", label=f"{r['label']}: dense")
        for i, (k, v) in enumerate(pl["topk"].items()):
            a1.plot(layers, v["entropy"], ls, color=f"C{i}", label=f"{r['label']}: top-{k}")
            a2.plot(layers, v["mass"], ls, color=f"C{i}", label=f"{r['label']}: top-{k}")
    a1.axhline(results[0]["log_context"], color="grey", lw=0.8, label="log n (uniform)")
    a1.set_xlabel("layer")
    a1.set_ylabel("entropy (nats)")
    a1.set_title("attention entropy at decode steps")
    a2.set_xlabel("layer")
    a2.set_ylabel("share of attention mass")
    a2.set_ylim(0, 1.02)
    a2.set_title("mass held by the top-k keys")
    a1.legend(fontsize=7)
    a2.legend(fontsize=7)
    save_figure(fig, path)
