"""Accuracy with a 95% Wilson score interval, overall and by group.

Implemented here (five lines) because scipy's ``binomtest(k, n).proportion_ci(method="wilson")``
takes whole ``k`` only, while task scores may be fractional (0.25); for whole ``k`` the two are
equal. The study's other statistics (`topkattn.study.stats`) use scipy.
"""

from __future__ import annotations

import math
from typing import Iterable

Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of ``successes`` out of ``n`` (``(0, 1)`` when ``n == 0``)."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def accuracy(scores: Iterable[float]) -> dict:
    """``{"n", "correct", "accuracy", "ci95": [lo, hi]}`` of per-sample scores in [0, 1].

    ``accuracy`` is None for no samples (its interval is then [0, 1]).
    """
    s = [float(x) for x in scores]
    n, k = len(s), sum(s)
    lo, hi = wilson_interval(k, n)
    return {"n": n, "correct": k, "accuracy": (k / n) if n else None, "ci95": [lo, hi]}
