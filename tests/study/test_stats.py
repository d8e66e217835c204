"""Statistics helpers of the study against known values and scipy."""

import math

import numpy as np
import pytest
from scipy import stats as sst

from topkattn.study import stats as S


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (57, 100), (1, 3)])
def test_wilson_matches_scipy(k, n):
    lo, hi = S.wilson_interval(k, n)
    ref = sst.binomtest(k, n).proportion_ci(method="wilson")
    assert lo == pytest.approx(ref.low, abs=1e-12) and hi == pytest.approx(ref.high, abs=1e-12)
    a = S.accuracy_ci([1.0] * k + [0.0] * (n - k))
    assert a["n"] == n and a["accuracy"] == pytest.approx(k / n)
    assert a["ci95"] == pytest.approx([ref.low, ref.high])


def test_mcnemar_known_values():
    # 10 pairs only a right, 2 only b right, 30 both right, 8 both wrong
    a = [1] * 10 + [0] * 2 + [1] * 30 + [0] * 8
    b = [0] * 10 + [1] * 2 + [1] * 30 + [0] * 8
    m = S.mcnemar(a, b)
    assert (m["n"], m["a_only"], m["b_only"]) == (50, 10, 2)
    # exact: 2 * P(X >= 10), X ~ Bin(12, 1/2) = 2 * (66 + 12 + 1) / 4096
    assert m["p_exact"] == pytest.approx(158 / 4096, rel=1e-9)
    assert m["chi2"] == pytest.approx(49 / 12)  # (|10 - 2| - 1)^2 / 12
    assert m["p_chi2"] == pytest.approx(sst.chi2.sf(49 / 12, 1))
    assert m["p_chi2"] == pytest.approx(0.04331, abs=1e-4)
    same = S.mcnemar([1, 0, 1], [1, 0, 1])
    assert same["p_exact"] == 1.0 and same["a_only"] == same["b_only"] == 0
    with pytest.raises(ValueError):
        S.mcnemar([1], [1, 0])


def test_paired_bootstrap_matches_normal_theory():
    rng = np.random.default_rng(1)
    x = rng.normal(0.3, 1.0, 600)
    y = x - rng.normal(0.1, 0.5, 600)  # d ~ N(0.1, 0.5)
    r = S.paired_bootstrap(x, y, n_boot=2000, seed=0)
    d = x - y
    half = 1.959964 * d.std(ddof=1) / math.sqrt(d.size)
    assert r["diff"] == pytest.approx(d.mean())
    assert r["ci"][0] == pytest.approx(d.mean() - half, abs=0.01)
    assert r["ci"][1] == pytest.approx(d.mean() + half, abs=0.01)
    # a 99% interval is wider than the 95% one
    r99 = S.paired_bootstrap(x, y, n_boot=2000, level=0.99, seed=0)
    assert r99["ci"][0] < r["ci"][0] and r99["ci"][1] > r["ci"][1]


def test_paired_bootstrap_constant_and_clusters():
    r = S.paired_bootstrap([1, 1, 0, 0], [0, 0, -1, -1])
    assert r["diff"] == 1.0 and r["ci"] == [1.0, 1.0]
    # 20 clusters of 10 identical differences: resampling clusters (the honest unit) gives a
    # wider interval than pretending the 200 pairs are independent
    rng = np.random.default_rng(0)
    per = rng.normal(0, 1, 20)
    d = np.repeat(per, 10)
    clusters = np.repeat(np.arange(20), 10)
    flat = S.paired_bootstrap(d, np.zeros_like(d), n_boot=1000)
    clus = S.paired_bootstrap(d, np.zeros_like(d), clusters=list(clusters), n_boot=1000)
    assert clus["diff"] == pytest.approx(flat["diff"])
    assert (clus["ci"][1] - clus["ci"][0]) > 2 * (flat["ci"][1] - flat["ci"][0])


def test_bootstrap_statistic_keeps_strata_sizes():
    seen = set()
    labels = ["a"] * 5 + ["b"] * 15

    def stat(units):
        seen.add((int((units < 5).sum()), int((units >= 5).sum())))
        return float(units.mean())

    lo, hi = S.bootstrap_statistic(stat, 20, strata=labels, n_boot=50)
    assert seen == {(5, 15)} and lo <= hi


def test_correlation_against_scipy():
    x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    y = [2.0, 1.0, 4.0, 3.0, 7.0, 5.0]
    c = S.correlation(x, y)
    assert c["pearson"] == pytest.approx(sst.pearsonr(x, y).statistic)
    assert c["spearman"] == pytest.approx(sst.spearmanr(x, y).statistic)
    assert c["spearman"] == pytest.approx(1 - 6 * (1 + 1 + 1 + 1 + 1 + 1) / (6 * 35))
    assert S.correlation(x, [v ** 3 for v in x])["spearman"] == pytest.approx(1.0)
    assert S.correlation(x, [-v for v in x])["pearson"] == pytest.approx(-1.0)
    assert math.isnan(S.correlation(x, [1.0] * 6)["pearson"])
    assert math.isnan(S.correlation([1, 2], [1, 2])["spearman"])


def test_wilcoxon_against_scipy():
    d = [0.5, -0.2, 0.9, 1.1, 0.3, -0.4, 0.8, 0.6]
    assert S.wilcoxon(d) == pytest.approx(sst.wilcoxon(d).pvalue)
    assert S.wilcoxon([0.0, 0.0, 0.0]) == 1.0
    assert math.isnan(S.wilcoxon([1.0]))
