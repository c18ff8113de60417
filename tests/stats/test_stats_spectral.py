import numpy as np
import pytest
import torch

from lightning_sas.stats.spectral import dominant_period, periodogram


def test_periodogram_brute_force_and_parseval():
    rng = np.random.default_rng(0)
    for n in (16, 17, 50):
        x = rng.normal(size=n) + 3.0
        f, p = periodogram(x)
        k = np.arange(1, n // 2 + 1)
        np.testing.assert_allclose(f, k / n)
        d = x - x.mean()
        t = np.arange(n)
        dft = np.array([np.sum(d * np.exp(-2j * np.pi * kk * t / n)) for kk in k])
        ref = 2 * np.abs(dft) ** 2 / n**2
        if n % 2 == 0:
            ref[-1] /= 2
        np.testing.assert_allclose(p, ref, rtol=1e-10, atol=1e-14)
        assert p.sum() == pytest.approx(x.var(), rel=1e-12)  # mean removed: no DC leak


def test_mean_removed():
    x = np.random.default_rng(1).normal(size=64)
    np.testing.assert_allclose(periodogram(x + 1e3)[1], periodogram(x)[1], rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("n", [17 * 60, 1500])
def test_sinusoid_period_17(n):
    rng = np.random.default_rng(n)
    t = np.arange(n)
    x = 1.0 + np.sin(2 * np.pi * t / 17 + 0.3) + 0.5 * rng.normal(size=n)
    period, frac = dominant_period(x)
    assert abs(period - 17) <= 1
    # signal variance 0.5 of 0.75 total; leakage can cost part of it off a Fourier frequency
    assert frac > (0.5 if n == 17 * 60 else 0.25)


def test_period_two_at_nyquist():
    rng = np.random.default_rng(2)
    x = (-1.0) ** np.arange(400) + 0.3 * rng.normal(size=400)
    period, frac = dominant_period(x)
    assert period == pytest.approx(2.0)
    assert frac > 0.8


def test_white_noise_small_fraction():
    x = np.random.default_rng(3).normal(size=4096)
    period, frac = dominant_period(x)
    assert period is not None and 2.0 <= period <= 4096
    assert frac < 0.01


def test_nonfinite_dropped_and_tensor_input():
    x = np.sin(2 * np.pi * np.arange(340) / 17)
    y = np.insert(x, [5, 100], [np.nan, np.inf])
    assert dominant_period(y) == dominant_period(x)
    assert dominant_period(torch.tensor(x)) == dominant_period(x)


@pytest.mark.parametrize("x", [np.full(64, 0.7), np.zeros(10), np.arange(7.0), [], [np.nan] * 20])
def test_constant_or_short(x):
    assert dominant_period(x) == (None, None)
    f, p = periodogram(x)
    assert np.all(np.isfinite(p)) and f.shape == p.shape
    if len(np.asarray(x)) >= 2 and np.isfinite(np.asarray(x, dtype=float)).all():
        assert f.size == len(x) // 2
