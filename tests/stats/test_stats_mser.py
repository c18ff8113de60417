import numpy as np
import pytest

from lightning_sas.stats.mser import mser5, mser_statistic, mser_truncation


def mser_classic(y: np.ndarray) -> np.ndarray:
    """White (1997): MSER(d) = sum_{i>=d} (y_i - ybar_d)^2 / (n - d)^2, brute force."""
    n = y.size
    return np.array([np.sum((y[d:] - y[d:].mean()) ** 2) / (n - d) ** 2 for d in range(n)])


def weighted_brute(c, s):
    y = s / c
    out = []
    for d in range(c.size):
        cc, yy = c[d:], y[d:]
        m = np.sum(cc * yy) / cc.sum()
        out.append(np.sum(cc * (yy - m) ** 2) / cc.sum() ** 2)
    return np.array(out)


def step_series(n=5000, transient=500, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    x[:transient] += 3.0
    return x


def test_statistic_equal_counts_is_classic_over_m():
    y = np.random.default_rng(0).normal(size=40) + np.linspace(2, 0, 40)
    stat = mser_statistic(np.full(40, 5.0), 5.0 * y)
    np.testing.assert_allclose(stat, mser_classic(y) / 5.0, rtol=1e-10, atol=1e-15)


def test_statistic_weighted_brute_force():
    rng = np.random.default_rng(1)
    c = rng.integers(1, 20, size=30).astype(float)
    s = c * (rng.normal(size=30) + 100.0)  # large offset: the centred suffix sums stay exact
    np.testing.assert_allclose(mser_statistic(c, s), weighted_brute(c, s), rtol=1e-8)


def test_step_transient_found():
    for seed in range(3):
        d = mser5(step_series(seed=seed))
        assert d is not None and abs(d - 500) <= 50, (seed, d)
        assert d % 5 == 0


def test_blocks_unequal_counts_match_step():
    x = step_series(n=6000, transient=1200, seed=4)
    edges = np.r_[0, np.cumsum(np.random.default_rng(5).integers(20, 80, size=200))]
    edges = edges[edges < x.size]
    edges = np.r_[edges, x.size]
    counts = np.diff(edges).astype(float)
    sums = np.add.reduceat(x, edges[:-1])
    d = mser_truncation(counts, sums)
    start = edges[d]
    assert abs(start - 1200) <= 120


def test_stationary_small_index():
    for seed in range(5):
        x = np.random.default_rng(10 + seed).normal(size=5000)
        d = mser5(x)
        assert d is not None and d < 500, (seed, d)


def test_ramp_not_found():
    x = np.linspace(5.0, 0.0, 5000) + 0.1 * np.random.default_rng(0).normal(size=5000)
    assert mser5(x) is None
    assert mser5(np.linspace(1.0, 0.0, 1000)) is None
    c = np.ones(64)
    assert mser_truncation(c, np.arange(64.0)[::-1].copy()) is None


def test_zero_is_valid():
    # mean shift in the *last* blocks only: dropping nothing is best
    y = np.r_[np.zeros(20), 1.0]
    y[:20] = np.random.default_rng(0).normal(size=20) * 0.01
    assert mser_truncation(np.ones(21), y) == 0


def test_boundary_is_last_candidate():
    # K = 10 blocks: candidates 0..5; a transient in the first 5 blocks is the boundary
    y = np.r_[np.full(5, 10.0), 0.0, 0.01, -0.01, 0.02, 0.0]
    assert mser_truncation(np.ones(10), y) is None
    y = np.r_[np.full(4, 10.0), 0.0, 0.01, -0.01, 0.02, 0.0, 0.01]
    assert mser_truncation(np.ones(10), y) == 4


def test_nonfinite_and_empty_blocks():
    x = step_series(seed=6)
    ref = mser5(x)
    y = x.copy()
    y[[7, 2000, 4321]] = np.nan
    assert abs(mser5(y) - ref) <= 10
    c = np.ones(20)
    s = np.r_[np.full(3, 5.0), 0.1 * (-1.0) ** np.arange(17)]
    c2, s2 = c.copy(), s.copy()
    c2[10], s2[10] = 0.0, 0.0  # empty block keeps its index
    s2[12] = np.nan
    assert mser_truncation(c, s) == 3
    assert mser_truncation(c2, s2) == 3


@pytest.mark.parametrize(
    "x", [np.full(1000, 0.25), np.zeros(50), np.full(10, 1.0), [], np.r_[np.full(30, 2.0), np.nan]]
)
def test_constant_or_short_none(x):
    assert mser5(x) is None
    assert mser_truncation(np.ones(len(x)), np.asarray(x, dtype=float)) is None
    assert mser_truncation([], []) is None
    assert mser_truncation([1.0, 1.0, 1.0], [0.0, 1.0, 2.0]) is None  # fewer than 4 blocks
