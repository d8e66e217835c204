"""Statistics of the study: intervals, paired tests and correlations (scipy underneath).

- `accuracy_ci`: accuracy with its 95% Wilson interval (`topkattn.tasks.stats`).
- `mcnemar`: McNemar's test of two paired binary outcomes: the exact binomial test of the
  discordant pairs (`scipy.stats.binomtest`) and the continuity-corrected chi-square.
- `paired_bootstrap`: mean of ``x - y`` over pairs with a percentile bootstrap interval
  (`scipy.stats.bootstrap`), optionally resampling whole clusters (all decode steps of a
  prompt) and within strata (cells).
- `bootstrap_statistic`: any statistic of resampled unit indices, stratified (used for the
  correlations of claim 3, recomputed on each resample of the samples).
- `correlation`: Pearson and Spearman coefficients (nan when a side is constant).
- `wilcoxon`: the signed-rank test of paired differences (a p-value next to the bootstrap).

Every function takes plain sequences and returns plain floats / dicts (JSON-ready).
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Sequence

import numpy as np

from topkattn.tasks.stats import accuracy as _accuracy
from topkattn.tasks.stats import wilson_interval

__all__ = ["accuracy_ci", "bootstrap_statistic", "correlation", "mcnemar", "paired_bootstrap",
           "wilcoxon", "wilson_interval"]


def accuracy_ci(scores: Sequence[float]) -> dict:
    """``{"n", "correct", "accuracy", "ci95"}`` of per-sample scores in [0, 1] (Wilson)."""
    return _accuracy(scores)


def mcnemar(a: Sequence[float], b: Sequence[float], threshold: float = 0.5) -> dict:
    """McNemar's test of paired outcomes ``a`` and ``b`` (scores; >= ``threshold`` is correct).

    Returns ``n`` (pairs), ``a_only`` (a right, b wrong), ``b_only``, the exact two-sided
    p-value (binomial test of ``a_only`` out of the discordant pairs at 1/2) and the
    continuity-corrected chi-square statistic with its p-value (1.0 without discordant pairs).
    """
    from scipy.stats import binomtest, chi2

    if len(a) != len(b):
        raise ValueError(f"paired outcomes need equal lengths, got {len(a)} and {len(b)}")
    ra = [float(x) >= threshold for x in a]
    rb = [float(x) >= threshold for x in b]
    a_only = sum(1 for x, y in zip(ra, rb) if x and not y)
    b_only = sum(1 for x, y in zip(ra, rb) if y and not x)
    disc = a_only + b_only
    if disc == 0:
        return {"n": len(ra), "a_only": 0, "b_only": 0, "p_exact": 1.0, "chi2": 0.0,
                "p_chi2": 1.0}
    p_exact = float(binomtest(a_only, disc, 0.5).pvalue)
    stat = (abs(a_only - b_only) - 1) ** 2 / disc
    return {"n": len(ra), "a_only": a_only, "b_only": b_only, "p_exact": min(1.0, p_exact),
            "chi2": float(stat), "p_chi2": float(chi2.sf(stat, 1))}


def _groups(labels: Sequence | None, n: int) -> list[np.ndarray]:
    """Index arrays of the distinct labels, in first-seen order (one group without labels)."""
    if labels is None:
        return [np.arange(n)]
    order: dict = {}
    for i, lab in enumerate(labels):
        order.setdefault(lab, []).append(i)
    return [np.asarray(v) for v in order.values()]


def bootstrap_statistic(statistic: Callable[[np.ndarray], float], n_units: int,
                        strata: Sequence | None = None, n_boot: int = 2000,
                        level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(units)`` where ``units`` is an index array
    into ``range(n_units)``: each resample draws units with replacement, separately within
    each stratum (``strata[i]`` labels unit i), so strata keep their sizes.

    ``(nan, nan)`` when a resampled statistic is undefined too often (a constant side).
    """
    from scipy.stats import bootstrap

    groups = _groups(strata, n_units)
    if any(len(g) < 2 for g in groups):  # a stratum of one unit cannot be resampled alone
        groups = _groups(None, n_units)
    if n_units < 2:
        return (float("nan"), float("nan"))

    def stat(*parts):
        return statistic(np.concatenate(parts).astype(int))

    kw = dict(n_resamples=n_boot, confidence_level=level, method="percentile",
              vectorized=False, paired=False)
    data = tuple(g.astype(float) for g in groups)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:  # scipy >= 1.15 names the generator rng
            res = bootstrap(data, stat, rng=np.random.default_rng(seed), **kw)
        except TypeError:
            res = bootstrap(data, stat, random_state=np.random.default_rng(seed), **kw)
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return (lo, hi)


def paired_bootstrap(x: Sequence[float], y: Sequence[float], clusters: Sequence | None = None,
                     strata: Sequence | None = None, n_boot: int = 2000, level: float = 0.95,
                     seed: int = 0) -> dict:
    """Mean paired difference ``x - y`` with a percentile bootstrap interval.

    Pairs are resampled with replacement; with ``clusters`` (a label per pair, e.g. the prompt
    of a decode step) whole clusters are resampled, with ``strata`` (a label per pair, e.g.
    the (task, length) cell) within each stratum. Returns ``{"n", "mean_x", "mean_y", "diff",
    "ci": [lo, hi], "level"}``; a constant difference gives a zero-width interval.
    """
    xs, ys = np.asarray(x, float), np.asarray(y, float)
    if xs.shape != ys.shape:
        raise ValueError(f"paired samples need equal lengths, got {xs.size} and {ys.size}")
    n = int(xs.size)
    out = {"n": n, "mean_x": float(xs.mean()) if n else float("nan"),
           "mean_y": float(ys.mean()) if n else float("nan"),
           "diff": float((xs - ys).mean()) if n else float("nan"), "level": level}
    if n == 0:
        out["ci"] = [float("nan"), float("nan")]
        return out
    d = xs - ys
    if np.allclose(d, d[0]):
        out["ci"] = [float(d[0]), float(d[0])]
        return out
    # units: clusters (or single pairs); a unit's stratum is that of its first pair
    unit_of = (_groups(clusters, n) if clusters is not None
               else [np.array([i]) for i in range(n)])
    sums = np.array([d[u].sum() for u in unit_of])
    counts = np.array([len(u) for u in unit_of], float)
    unit_strata = None if strata is None else [strata[u[0]] for u in unit_of]
    if len(unit_of) < 2:
        out["ci"] = [float("nan"), float("nan")]
        return out

    def stat(units):
        return float(sums[units].sum() / counts[units].sum())

    lo, hi = bootstrap_statistic(stat, len(unit_of), unit_strata, n_boot, level, seed)
    out["ci"] = [lo, hi]
    return out


def correlation(x: Sequence[float], y: Sequence[float]) -> dict:
    """``{"pearson", "spearman", "n"}`` (nan when fewer than 3 points or a side is constant).

    Spearman's rho is Pearson's r of the ranks (ties get mean ranks,
    `scipy.stats.rankdata`), as `scipy.stats.spearmanr` computes it; done with numpy here
    because the bootstrap of claim 3 calls this thousands of times.
    """
    from scipy.stats import rankdata

    xs, ys = np.asarray(x, float), np.asarray(y, float)
    n = int(xs.size)
    if n < 3 or np.ptp(xs) == 0 or np.ptp(ys) == 0 or not (
            np.isfinite(xs).all() and np.isfinite(ys).all()):
        return {"pearson": float("nan"), "spearman": float("nan"), "n": n}
    return {"pearson": float(np.corrcoef(xs, ys)[0, 1]),
            "spearman": float(np.corrcoef(rankdata(xs), rankdata(ys))[0, 1]), "n": n}


def wilcoxon(d: Sequence[float]) -> float:
    """Two-sided p-value of the Wilcoxon signed-rank test of differences ``d`` (1.0 when all
    are zero, nan for fewer than 2)."""
    from scipy.stats import wilcoxon as _w

    arr = np.asarray(d, float)
    if arr.size < 2:
        return float("nan")
    if np.allclose(arr, 0):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(_w(arr).pvalue)


def finite(x: float) -> bool:
    """True for a real number (not None, nan or inf)."""
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)
