"""Autocorrelation function, integrated autocorrelation time (IAT) and effective sample size.

For a series ``x_0, ..., x_{n-1}`` with mean ``xbar`` the (biased, positive-definite) estimator
of the autocovariance and the normalised autocorrelation are

    C(t) = (1/n) sum_{i=0}^{n-1-t} (x_i - xbar)(x_{i+t} - xbar),      rho(t) = C(t) / C(0).

The integrated autocorrelation time is ``tau = 1 + 2 sum_{t>=1} rho(t)``: the variance of the
sample mean is ``Var(xbar) ~ C(0) tau / n``, so ``n / tau`` samples are "effectively independent".

References: A. D. Sokal, "Monte Carlo methods in statistical mechanics: foundations and new
algorithms" (1997), sec. 3 (automatic windowing); D. Foreman-Mackey et al., emcee
``emcee/autocorr.py`` (FFT estimator and ``auto_window``).

Conventions shared by every function of :mod:`lightning_sas.stats`:

* inputs are 1-D array-likes (numpy arrays, lists, CPU or GPU tensors), computed in float64;
* non-finite values (NaN, +-inf) are *dropped* before anything is computed (the remaining values
  are treated as one contiguous series);
* a constant series (no variation above float64 rounding) has no autocorrelation: functions
  return ``None``, never NaN, and never raise.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "autocorrelation",
    "effective_sample_size",
    "iat_window",
    "integrated_autocorr_time",
    "integrated_autocorr_time_and_window",
]

# Relative spread below which a series counts as constant (float64 rounding of its values).
_CONST_RTOL = 1e-12


def _as_float64(x: Any) -> np.ndarray:
    """``x`` as a flat float64 numpy array (tensors are detached and moved to the host)."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)


def _finite(x: Any) -> np.ndarray:
    """Flat float64 copy of ``x`` with the non-finite values dropped."""
    a = _as_float64(x)
    return a[np.isfinite(a)]


def _is_constant(a: np.ndarray) -> bool:
    """True when the finite array ``a`` has no variation beyond float64 rounding (or is empty)."""
    if a.size == 0:
        return True
    lo, hi = float(a.min()), float(a.max())
    return (hi - lo) <= _CONST_RTOL * max(abs(lo), abs(hi))


def _acf_full(a: np.ndarray) -> np.ndarray:
    """rho(0..n-1) of a finite, non-constant array via a zero-padded FFT (no circular wrap)."""
    n = a.size
    d = a - a.mean()
    nfft = 1 << int(2 * n - 1).bit_length()  # next power of two >= 2n
    f = np.fft.rfft(d, n=nfft)
    acov = np.fft.irfft(f * np.conj(f), n=nfft)[:n]
    return acov / acov[0]


def autocorrelation(x: Any, max_lag: int | None = None) -> np.ndarray | None:
    """Normalised autocorrelation ``rho(0..max_lag)`` (``rho(0) = 1``) of a 1-D series.

    ``rho(t) = sum_{i<n-t} (x_i - xbar)(x_{i+t} - xbar) / sum_i (x_i - xbar)^2``, computed with
    one FFT of the mean-removed series zero-padded to the next power of two ``>= 2n``, so the
    correlation is linear (no circular wrap-around) [Sokal 1997; emcee ``autocorr.function_1d``].
    ``max_lag`` defaults to ``n - 1`` and is clipped to it. Non-finite values are dropped first.
    Returns ``None`` for a constant series or fewer than two finite values.
    """
    a = _finite(x)
    if a.size < 2 or _is_constant(a):
        return None
    if max_lag is not None and max_lag < 0:
        raise ValueError(f"max_lag must be >= 0, got {max_lag}")
    rho = _acf_full(a)
    if max_lag is not None:
        rho = rho[: max_lag + 1]
    return rho


def integrated_autocorr_time_and_window(x: Any, c: float = 5.0) -> tuple[float, int] | None:
    """``(tau, M)``: integrated autocorrelation time with Sokal's automatic window.

    The windowed estimate is ``tau(M) = 1 + 2 sum_{t=1}^{M} rho(t)`` and the window is the
    smallest ``M >= 1`` with ``M >= c * tau(M)`` [Sokal 1997, sec. 3; emcee ``auto_window``]
    (``c = 5`` is adequate for roughly exponential decay; ``tau`` is then biased by about
    ``exp(-c)``). Two safeguards, both documented deviations that leave positively correlated
    series unchanged:

    * the last lag of the window gets half weight (trapezoidal window),
      ``tau(M) = 1 + 2 sum_{t=1}^{M-1} rho(t) + rho(M)``. For decaying correlations this differs
      from Sokal's sum by ``rho(M) ~ exp(-c)``; for an alternating (period-2) component the plain
      partial sums flip sign with ``M`` (``1 - 2 rho_1``, ``1``, ...) and can go negative, while
      the trapezoidal sum gives the right ``1 + rho(1)`` (e.g. ``sigma^2 / (A^2 + sigma^2)`` for
      ``A (-1)^t + noise``);
    * ``tau`` is floored at ``1/n`` (the IAT of a perfectly alternating series), so the effective
      sample size ``n / tau`` never exceeds ``n^2`` and is never negative.

    Non-finite values are dropped first. Returns ``None`` for a constant series or fewer than 4
    finite values.
    """
    a = _finite(x)
    n = a.size
    if n < 4 or _is_constant(a):
        return None
    rho = _acf_full(a)
    # taus[M] = 1 + 2 sum_{t=1}^{M-1} rho(t) + rho(M) = 2 cumsum(rho)[M] - rho(M) - 1, M >= 1
    taus = 2.0 * np.cumsum(rho) - rho - 1.0
    lags = np.arange(n)
    ok = (lags >= 1) & (lags >= c * taus)
    # For the mean-removed biased estimator sum_{|t|<n} C(t) = 0, so taus[n-1] = -rho(n-1) with
    # |rho(n-1)| <= 1/2: the condition always holds somewhere; the fallback only guards rounding.
    m = int(np.argmax(ok)) if ok.any() else n - 1
    tau = max(float(taus[m]), 1.0 / n)
    return tau, m


def integrated_autocorr_time(x: Any, c: float = 5.0) -> float | None:
    """Integrated autocorrelation time ``tau = 1 + 2 sum_{t=1}^{M} rho(t)`` (Sokal window ``c``).

    See :func:`integrated_autocorr_time_and_window` for the estimator [Sokal 1997]. Non-finite
    values are dropped first; ``None`` for a constant series or fewer than 4 finite values.
    """
    res = integrated_autocorr_time_and_window(x, c)
    return None if res is None else res[0]


def iat_window(x: Any, c: float = 5.0) -> int | None:
    """Sokal's automatic window ``M``: the smallest ``M`` with ``M >= c * tau(M)``.

    See :func:`integrated_autocorr_time_and_window`. ``None`` when the IAT is undefined.
    """
    res = integrated_autocorr_time_and_window(x, c)
    return None if res is None else res[1]


def effective_sample_size(x: Any, c: float = 5.0) -> float | None:
    """Effective sample size ``n / tau`` (``n`` = number of finite values) [Sokal 1997].

    ``None`` when the IAT is undefined (constant series or fewer than 4 finite values).
    """
    a = _finite(x)
    res = integrated_autocorr_time_and_window(a, c)
    return None if res is None else a.size / res[0]
