"""95 % intervals that follow the skew of per-sample losses (``lightning_sas.stats.intervals``):
the log interval against its definition, the third cumulant against scipy's k-statistic, Hall's
skewness-corrected interval against its first-order expansion and, on skewed draws with a known
mean, against the coverage of the symmetric interval; and how ``sas_statistics`` and
``heldout_gap`` report them."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from lightning_sas.stats.intervals import Z_975, log_interval, skew_corrected_interval, third_cumulant_of_mean
from lightning_sas.stats.sas import GAP_CRITICAL_T, heldout_gap, sas_statistics, time_average


@pytest.mark.parametrize("value,se,t", [(0.3, 0.1, 2.0), (5.0, 0.7, 3.18), (0.01, 0.02, 3.18)])
def test_log_interval_is_the_interval_of_log_value(value, se, t):
    """Brute force: ``c`` is inside iff ``|log c - log v| <= t SE / v``; never below 0, wider above."""
    lower, upper = log_interval(value, se, t)
    grid = np.exp(np.linspace(math.log(value) - 50, math.log(value) + 50, 400001))
    inside = grid[np.abs(np.log(grid) - math.log(value)) <= t * se / value]
    assert lower == pytest.approx(inside.min(), rel=1e-3)
    assert upper == pytest.approx(inside.max(), rel=1e-3)
    assert 0 < lower < value < upper and upper - value > value - lower


def test_log_interval_edges():
    assert log_interval(None, 0.1, 2.0) == (None, None)
    assert log_interval(1.0, None, 2.0) == (None, None)
    assert log_interval(1.0, math.nan, 2.0) == (None, None)
    assert log_interval(0.0, 0.5, 2.0) == (-1.0, 1.0)  # no log of 0: the symmetric interval
    assert log_interval(2.0, 0.0, 2.0) == (2.0, 2.0)
    lower, upper = log_interval(1e-300, 1.0, 3.0)  # t SE / v huge: no overflow
    assert lower == 0.0 and math.isfinite(upper)


def test_third_cumulant_is_the_unbiased_k_statistic_over_n_squared():
    x = np.random.default_rng(0).lognormal(0.0, 1.0, 37)
    assert third_cumulant_of_mean(x) == pytest.approx(scipy_stats.kstat(x, 3) / 37**2, rel=1e-10)
    assert third_cumulant_of_mean(np.r_[x, np.nan, np.inf]) == pytest.approx(third_cumulant_of_mean(x), rel=1e-12)
    assert third_cumulant_of_mean(np.array([1.0, 2.0])) == 0.0
    assert third_cumulant_of_mean(-x) == pytest.approx(-third_cumulant_of_mean(x), rel=1e-12)


def test_skew_corrected_interval_without_skew_is_symmetric_and_first_order_shifts_up():
    assert skew_corrected_interval(0.4, 0.1, 2.0, 0.0) == pytest.approx((0.2, 0.6))
    assert skew_corrected_interval(None, 0.1, 2.0, 0.0) == (None, None)
    assert skew_corrected_interval(0.4, 0.0, 2.0, 5.0) == (0.4, 0.4)
    # small skew: both ends move by SE gamma (2 z^2 + 1) / 6 (Johnson's modified t), the width t SE
    se, t, gamma = 0.1, 3.18, 0.01
    lower, upper = skew_corrected_interval(0.4, se, t, gamma * se**3)
    shift = se * gamma * (2 * Z_975**2 + 1) / 6
    assert lower == pytest.approx(0.4 - t * se + shift, abs=0.02 * shift)
    assert upper == pytest.approx(0.4 + t * se + shift, abs=0.02 * shift)
    # a left skew moves it down by as much
    mirrored = skew_corrected_interval(-0.4, se, t, -gamma * se**3)
    assert mirrored == pytest.approx((-upper, -lower), rel=1e-9)


@pytest.mark.parametrize("gamma", [-50.0, -3.0, 0.5, 3.0, 50.0])
def test_skew_corrected_interval_is_an_interval_for_any_skew(gamma):
    """Hall's map is monotone: lower < upper at any skew, and a right skew gives more room above."""
    lower, upper = skew_corrected_interval(0.0, 1.0, 3.18, gamma)
    assert lower < upper
    assert (upper - 0.0 > 0.0 - lower) == (gamma > 0)


@pytest.mark.parametrize("n", [10, 30])
def test_skew_corrected_interval_covers_better_on_skewed_draws(n):
    """Means of ``n`` lognormal draws (sigma = 1.5, a heavy right tail like per-sample losses):
    the symmetric ``mean ± 1.96 SE`` covers the known mean far less than 95 % (about 70 % and
    78 %); the skewness-corrected interval covers at least 8 points more."""
    rng = np.random.default_rng(n)
    mu, trials = math.exp(0.5 * 1.5**2), 3000
    symmetric = corrected = 0
    for _ in range(trials):
        x = rng.lognormal(0.0, 1.5, n)
        mean, se = float(x.mean()), float(x.std(ddof=1)) / math.sqrt(n)
        symmetric += abs(mean - mu) <= Z_975 * se
        lower, upper = skew_corrected_interval(mean, se, Z_975, third_cumulant_of_mean(x))
        corrected += lower <= mu <= upper
    assert symmetric / trials < 0.82
    assert corrected / trials >= symmetric / trials + 0.08


def test_sas_statistics_report_the_intervals():
    """``sas_*``: the log interval with their t; the signed gaps: Hall's interval with the third
    cumulant of the mean of their K per-replica values; ``*_resolved`` of a gap: its interval
    excludes 0."""
    rng = np.random.default_rng(3)
    k, b, m, h = 4, 16, 6, 8
    heldout, removed, added = np.arange(h), h + np.arange(m), h + m + np.arange(m)
    control = 1.0 + 0.1 * rng.standard_normal((k, b, h + 2 * m))
    control[:, :, heldout] = control[0:1, :, heldout]
    effect = rng.lognormal(-1.0, 1.0, size=(k, h + 2 * m))  # a right-skewed effect
    effect[:, added] *= -1.0  # the added side's a_k = -d_k is right-skewed too
    perturbed = control + effect[:, None, :] + 0.1 * rng.standard_normal((k, b, h + 2 * m))
    out = sas_statistics(perturbed, control, np.full(b, 3.0), removed, added, heldout)
    t, t_mean = out["sas_critical_t"], out["sas_mean_critical_t"]
    for name, crit in (("sas_max", t), ("sas_mean", t_mean), ("sas_replaced", t)):
        assert (out[f"{name}_lower"], out[f"{name}_upper"]) == pytest.approx(log_interval(out[name], out[f"{name}_se"], crit))
    d = time_average(perturbed, np.full(b, 3.0)) - time_average(control, np.full(b, 3.0))
    r, a = d[:, removed], -d[:, added]
    per_replica = {"stability_gap": np.c_[r, a].mean(axis=1), "stability_gap_removed": r.mean(axis=1),
                   "stability_gap_added": a.mean(axis=1)}
    for name, values in per_replica.items():
        third = third_cumulant_of_mean(values)
        expected = skew_corrected_interval(out[name], out[f"{name}_se"], t, third)
        assert (out[f"{name}_lower"], out[f"{name}_upper"]) == pytest.approx(expected)
        # a right-skewed set of replicas gets room above, a left-skewed one below
        assert (out[f"{name}_upper"] - out[name] > out[name] - out[f"{name}_lower"]) == (third > 0)
        assert out[f"{name}_resolved"] == bool(out[f"{name}_lower"] > 0 or out[f"{name}_upper"] < 0)


def test_heldout_gap_reports_its_interval():
    """The third cumulant of ``test - train``: the test side's minus the train side's."""
    rng = np.random.default_rng(4)
    b, n_train, n_test = 12, 20, 30
    level = np.r_[rng.uniform(0.0, 0.1, n_train), rng.lognormal(-1.0, 1.2, n_test)]
    means = level[None, :] + 0.01 * rng.standard_normal((b, n_train + n_test))
    train, test = np.arange(n_train), n_train + np.arange(n_test)
    gap = heldout_gap(means, np.full(b, 2.0), train, test)
    avg = means.mean(axis=0)
    third = third_cumulant_of_mean(avg[test]) - third_cumulant_of_mean(avg[train])
    expected = skew_corrected_interval(gap["gap"], gap["gap_se"], GAP_CRITICAL_T, third)
    assert (gap["gap_lower"], gap["gap_upper"]) == pytest.approx(expected)
    assert gap["gap_upper"] - gap["gap"] > gap["gap"] - gap["gap_lower"]
    empty = heldout_gap(np.full((b, 4), np.nan), np.full(b, 2.0), np.arange(2), 2 + np.arange(2))
    assert empty["gap_lower"] is None and empty["gap_upper"] is None
