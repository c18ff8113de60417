"""The calibration study's own statistics (``benchmarks/calibration.py``): the Wilson interval
of a coverage, the bootstrap interval of the SE / spread ratio and the goal verdict, against
brute force and on synthetic runs with known answers."""

from __future__ import annotations

import importlib.util
import math
import os

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def calibration():
    spec = importlib.util.spec_from_file_location("calibration", os.path.join(HERE, "..", "benchmarks", "calibration.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("successes,n", [(27, 30), (30, 30), (0, 10), (57, 60), (26, 30)])
def test_wilson_interval_is_the_score_test_inversion(calibration, successes, n):
    """Brute force: the Wilson interval is the set of p whose score test accepts p-hat,
    |p-hat - p| <= z sqrt(p (1 - p) / n)."""
    z = 1.959963984540054
    grid = np.linspace(0, 1, 400001)
    accepted = grid[np.abs(successes / n - grid) <= z * np.sqrt(grid * (1 - grid) / n)]
    low, high = calibration.wilson_interval(successes, n)
    assert low == pytest.approx(accepted.min(), abs=1e-5)
    assert high == pytest.approx(accepted.max(), abs=1e-5)


def test_ratio_interval_holds_the_ratio_and_narrows_with_runs(calibration):
    rng = np.random.default_rng(1)
    widths = []
    for n in (30, 600):
        values, ses = rng.normal(0.0, 2.0, n), np.full(n, 2.0)
        low, high = calibration.ratio_interval(values, ses)
        assert low < ses.mean() / values.std(ddof=1) < high
        assert low < 1.0 < high  # the SE is exactly the spread here
        widths.append(high - low)
    assert widths[1] < widths[0] / 3


def _runs(rng, n, se_scale):
    runs = []
    for _ in range(n):
        value = rng.normal(1.0, 0.1)
        runs.append({"stability_gap": value, "stability_gap_se": 0.1 * se_scale, "sas_critical_t": 1.959963984540054,
                     "control_heldout_gap": value})
    return runs


@pytest.mark.parametrize("se_scale,verdict", [(1.0, "met"), (3.0, "missed"), (0.3, "missed")])
def test_calibration_rows_on_runs_with_known_answers(calibration, se_scale, verdict):
    rows = calibration.calibration_rows({"synthetic": _runs(np.random.default_rng(2), 400, se_scale)})
    row = next(r for r in rows if r["statistic"] == "stability_gap")
    assert row["ratio"] == pytest.approx(se_scale, rel=0.1)
    expected_coverage = math.erf(1.959963984540054 * se_scale / math.sqrt(2))
    assert row["coverage"] == pytest.approx(expected_coverage, abs=0.04)
    assert row["coverage_ci"][0] <= row["coverage"] <= row["coverage_ci"][1]
    assert row["goal"] == verdict


def test_goal_verdict(calibration):
    assert calibration.goal_verdict(1.0, (0.9, 1.1), 0.95, (0.9, 0.99)) == "met"
    assert calibration.goal_verdict(1.3, (1.1, 1.6), 0.95, (0.85, 0.99)) == "within noise"
    assert calibration.goal_verdict(1.0, (0.9, 1.1), 1.0, (0.99, 1.0)) == "missed"
    assert calibration.goal_verdict(None, (0.0, 0.0), 0.95, (0.9, 0.99)) == "missed"


def test_coverage_reads_the_reported_interval(calibration):
    """With ``<name>_lower``/``<name>_upper`` in every run the coverage is theirs, not ± t SE; a
    run without them (a variant) gets the symmetric interval."""
    values, ses, crit = np.array([1.0, 1.0, -0.5]), np.array([0.2, 0.2, 1.0]), np.full(3, 2.0)
    assert calibration.covers(values, ses, crit, 1.45).tolist() == [False, False, True]
    runs = [{"stability_gap": 1.0, "stability_gap_lower": 0.9, "stability_gap_upper": 1.6}] * 2
    assert calibration.covers_reported(runs, "stability_gap", 1.45).tolist() == [True, True]
    assert calibration.covers_reported(runs, "stability_gap", 0.8).tolist() == [False, False]
    assert calibration.covers_reported(runs + [{"stability_gap": 1.0}], "stability_gap", 1.0) is None
    shifted = [{**r, "stability_gap_se": 0.1, "sas_critical_t": 2.0, "stability_gap": 1.0 + 0.01 * i,
                "stability_gap_lower": 5.0, "stability_gap_upper": 6.0} for i, r in enumerate(runs * 3)]
    row = next(r for r in calibration.calibration_rows({"s": shifted}) if r["statistic"] == "stability_gap")
    assert row["coverage"] == 0.0  # ± t SE would cover every run
