import math

import numpy as np
import pytest

from lightning_sas.stats.autocorr import integrated_autocorr_time
from lightning_sas.stats.stationarity import geweke_z


def ar1(n: int, phi: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    e = rng.normal(size=n)
    x = np.empty(n)
    x[0] = e[0] / math.sqrt(1 - phi * phi)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + e[t]
    return x


def test_formula():
    x = ar1(1000, 0.6, seed=0) + 5.0
    a, b = x[:100], x[500:]
    s_a = a.var() * integrated_autocorr_time(a)
    s_b = b.var() * integrated_autocorr_time(b)
    ref = (a.mean() - b.mean()) / math.sqrt(s_a / 100 + s_b / 500)
    assert geweke_z(x) == pytest.approx(ref, rel=1e-12)
    a, b = x[:200], x[700:]
    s_a = a.var() * integrated_autocorr_time(a)
    s_b = b.var() * integrated_autocorr_time(b)
    ref = (a.mean() - b.mean()) / math.sqrt(s_a / 200 + s_b / 300)
    assert geweke_z(x, first=0.2, last=0.3) == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize("phi", [0.0, 0.8])
def test_stationary_ar1_mostly_small(phi):
    zs = np.array([geweke_z(ar1(2000, phi, seed=100 + s)) for s in range(40)])
    assert np.all(np.isfinite(zs))
    assert np.mean(np.abs(zs) < 2) >= 0.85
    # roughly standard normal: the spectral variance keeps the spread near 1 even for phi = 0.8
    assert 0.6 < zs.std() < 1.5


def test_drift_large():
    rng = np.random.default_rng(1)
    n = 2000
    x = np.linspace(3.0, 0.0, n) + rng.normal(size=n)
    assert geweke_z(x) > 5
    assert geweke_z(-x) < -5
    assert abs(geweke_z(ar1(n, 0.9, seed=3) + np.linspace(0, 10, n))) > 4


def test_nonfinite_dropped():
    x = ar1(500, 0.3, seed=2)
    y = np.insert(x, [0, 250], [np.nan, -np.inf])
    assert geweke_z(y) == geweke_z(x)


def test_constant_and_short():
    assert geweke_z(np.full(100, 2.0)) is None
    assert geweke_z(np.zeros(1000)) is None
    assert geweke_z(np.arange(19.0)) is None
    assert geweke_z([np.nan] * 50) is None
    # both segments constant, same value, middle varies: no evidence against stationarity
    x = np.r_[np.ones(10), np.random.default_rng(0).normal(size=40), np.ones(50)]
    assert geweke_z(x) == 0.0
    # both segments constant at different values: undefined (zero denominator)
    x = np.r_[np.ones(10), np.random.default_rng(0).normal(size=40), np.full(50, 3.0)]
    assert geweke_z(x) is None
    # one constant segment is fine: the other supplies the variance
    x = np.r_[np.ones(10), np.random.default_rng(0).normal(size=90)]
    z = geweke_z(x)
    assert z is not None and math.isfinite(z)


def test_bad_fractions():
    with pytest.raises(ValueError):
        geweke_z(np.arange(100.0), first=0.6, last=0.5)
