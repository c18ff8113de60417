"""Periodogram and dominant oscillation period of a series.

With ``d_t = x_t - xbar`` (mean removed first, so the DC bin carries nothing) and
``X_k = sum_t d_t exp(-2 pi i k t / n)``, the one-sided periodogram at ``f_k = k/n`` cycles per
sample, ``k = 1..floor(n/2)``, is normalised so that it decomposes the variance (Parseval):

    P_k = 2 |X_k|^2 / n^2   (0 < f_k < 1/2),      P_{n/2} = |X_{n/2}|^2 / n^2   (Nyquist, n even),

    sum_k P_k = (1/n) sum_t d_t^2 = population variance of x.

So ``P_k / sum P`` is the fraction of the variance at frequency ``f_k``; a sinusoid of amplitude
``A`` at a Fourier frequency contributes ``A^2 / 2`` to one bin. Reference: M. B. Priestley,
"Spectral Analysis and Time Series" (1981), sec. 6.1; P. Bloomfield, "Fourier Analysis of Time
Series" (2000), ch. 2.

Non-finite values are dropped first (see :mod:`lightning_sas.stats.autocorr`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lightning_sas.stats.autocorr import _finite, _is_constant

__all__ = ["dominant_period", "periodogram"]

_MIN_N = 8


def periodogram(x: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(freqs, power)``: one-sided periodogram of the mean-removed series, DC bin excluded.

    ``freqs[k-1] = k / n`` cycles per sample for ``k = 1..floor(n/2)``; ``power`` is normalised
    so that ``power.sum()`` equals the population variance of ``x`` (see the module docstring).
    Non-finite values are dropped first. A constant series gives all-zero power (never NaN);
    fewer than two finite values give two empty arrays.
    """
    a = _finite(x)
    n = a.size
    if n < 2:
        return np.zeros(0), np.zeros(0)
    freqs = np.fft.rfftfreq(n)[1:]
    if _is_constant(a):
        return freqs, np.zeros_like(freqs)
    spec = np.fft.rfft(a - a.mean())[1:]
    power = 2.0 * (spec.real**2 + spec.imag**2) / float(n) ** 2
    if n % 2 == 0:
        power[-1] *= 0.5  # the Nyquist bin has no mirror image
    return freqs, power


def dominant_period(x: Any) -> tuple[float | None, float | None]:
    """``(period, fraction)`` at the periodogram peak: ``1 / f_peak`` samples, and ``P_peak /
    sum_k P_k``, the fraction of the (non-DC) variance in that one frequency bin.

    A period-2 oscillation peaks at the Nyquist frequency (period 2.0). The period is resolved on
    the Fourier grid ``n/k`` (no interpolation); a sinusoid between two bins leaks, so its fraction
    can drop to about 0.4 of its share of the variance. Non-finite values are dropped first;
    ``(None, None)`` for a constant series or fewer than 8 finite values.
    """
    a = _finite(x)
    if a.size < _MIN_N or _is_constant(a):
        return None, None
    freqs, power = periodogram(a)
    total = float(power.sum())
    if not total > 0.0:
        return None, None
    k = int(np.argmax(power))
    return float(1.0 / freqs[k]), float(power[k] / total)
