import math

import numpy as np
import pytest
import torch

from lightning_sas.stats.autocorr import (
    autocorrelation,
    effective_sample_size,
    iat_window,
    integrated_autocorr_time,
    integrated_autocorr_time_and_window,
)


def ar1(n: int, phi: float, seed: int, sigma: float = 1.0) -> np.ndarray:
    """Stationary AR(1): x_t = phi x_{t-1} + e_t, Var(x) = sigma^2 / (1 - phi^2)."""
    rng = np.random.default_rng(seed)
    e = rng.normal(0.0, sigma, n)
    x = np.empty(n)
    x[0] = e[0] / math.sqrt(1.0 - phi * phi)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + e[t]
    return x


def acf_brute(x: np.ndarray) -> np.ndarray:
    d = x - x.mean()
    n = d.size
    return np.array([np.dot(d[: n - t], d[t:]) for t in range(n)]) / np.dot(d, d)


@pytest.mark.parametrize("n", [5, 17, 64, 200])
def test_acf_matches_direct_sum(n):
    x = np.random.default_rng(n).normal(size=n).cumsum()
    rho = autocorrelation(x)
    assert rho.shape == (n,)
    assert rho[0] == pytest.approx(1.0, abs=1e-15)
    np.testing.assert_allclose(rho, acf_brute(x), rtol=0, atol=1e-12)


def test_acf_no_circular_wrap():
    # a linear ramp: a circular ACF would come back up near lag n-1; the linear one does not
    x = np.arange(64.0)
    rho = autocorrelation(x)
    np.testing.assert_allclose(rho, acf_brute(x), atol=1e-12)
    assert rho[-1] < 0


def test_acf_max_lag_and_inputs():
    x = np.random.default_rng(0).normal(size=100)
    full = autocorrelation(x)
    np.testing.assert_allclose(autocorrelation(x, max_lag=10), full[:11])
    assert autocorrelation(x, max_lag=0).tolist() == [1.0]
    assert autocorrelation(x, max_lag=10_000).shape == (100,)
    x32 = x.astype(np.float32)
    np.testing.assert_allclose(
        autocorrelation(torch.from_numpy(x32)), autocorrelation(x32), atol=1e-12
    )
    np.testing.assert_allclose(autocorrelation(list(x)), full)
    with pytest.raises(ValueError):
        autocorrelation(x, max_lag=-1)


@pytest.mark.parametrize("phi", [0.5, 0.9])
def test_iat_ar1(phi):
    x = ar1(200_000, phi, seed=1)
    tau, m = integrated_autocorr_time_and_window(x)
    true = (1 + phi) / (1 - phi)
    assert tau == pytest.approx(true, rel=0.10)
    assert m >= 5.0 * tau  # Sokal's window condition
    assert integrated_autocorr_time(x) == tau
    assert iat_window(x) == m
    assert effective_sample_size(x) == pytest.approx(x.size / tau)


def test_window_is_smallest_satisfying_m():
    x = ar1(5000, 0.7, seed=3)
    rho = acf_brute(x)
    tau_m = [1 + 2 * rho[1:m].sum() + rho[m] for m in range(1, 200)]
    m_ref = next(m for m, t in zip(range(1, 200), tau_m) if m >= 5.0 * t)
    tau, m = integrated_autocorr_time_and_window(x)
    assert m == m_ref
    assert tau == pytest.approx(tau_m[m - 1], abs=1e-10)
    # the window grows with c
    assert iat_window(x, c=10.0) > m


def test_iat_white_noise():
    x = np.random.default_rng(7).normal(size=20_000)
    tau = integrated_autocorr_time(x)
    assert tau == pytest.approx(1.0, abs=0.1)
    assert effective_sample_size(x) == pytest.approx(20_000, rel=0.1)


def test_iat_anticorrelated_and_period2_positive():
    # AR(1) with phi = -0.5: true tau = 1/3; plain Sokal partial sums can go negative
    tau = integrated_autocorr_time(ar1(50_000, -0.5, seed=2))
    assert 0 < tau < 1
    # A (-1)^t + noise: tau = sigma^2 / (A^2 + sigma^2) = 0.2
    rng = np.random.default_rng(4)
    n = 20_000
    x = 2.0 * (-1.0) ** np.arange(n) + rng.normal(size=n)
    tau = integrated_autocorr_time(x)
    assert tau == pytest.approx(0.2, abs=0.03)
    # a perfect alternation: floor 1/n, ESS finite and positive
    alt = (-1.0) ** np.arange(100)
    assert integrated_autocorr_time(alt) == pytest.approx(1 / 100)
    assert 0 < effective_sample_size(alt) <= 100**2


def test_nonfinite_dropped():
    x = ar1(4000, 0.5, seed=5)
    y = x.copy()
    y[[3, 100, 2500]] = [np.nan, np.inf, -np.inf]
    keep = np.isfinite(y)
    assert integrated_autocorr_time(y) == integrated_autocorr_time(y[keep])
    np.testing.assert_allclose(autocorrelation(y), autocorrelation(y[keep]))
    assert effective_sample_size(y) == pytest.approx(keep.sum() / integrated_autocorr_time(y[keep]))


@pytest.mark.parametrize(
    "x",
    [
        np.full(100, 0.1),
        np.full(100, 3.0),
        np.zeros(1000),
        np.full(50, 1e6) + np.r_[0.0, 1e-10, np.zeros(48)],  # below rounding of the values
        np.array([1.0, np.nan, 1.0, np.inf, 1.0, 1.0]),
        np.array([]),
        np.array([np.nan, np.nan]),
        np.array([2.0]),
    ],
)
def test_constant_or_empty_gives_none(x):
    assert autocorrelation(x) is None
    assert integrated_autocorr_time(x) is None
    assert integrated_autocorr_time_and_window(x) is None
    assert iat_window(x) is None
    assert effective_sample_size(x) is None


def test_too_short_for_iat():
    assert integrated_autocorr_time([1.0, 2.0, 0.5]) is None
    assert autocorrelation([1.0, 2.0]) is not None
    tau = integrated_autocorr_time([1.0, 2.0, 0.5, 3.0])
    assert tau is not None and math.isfinite(tau) and tau > 0
