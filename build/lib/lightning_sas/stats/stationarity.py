"""Geweke-type stationarity z-score.

Compare the mean of the first ``first`` fraction (segment A) with the mean of the last ``last``
fraction (segment B) of a series [J. Geweke, "Evaluating the accuracy of sampling-based approaches
to the calculation of posterior moments", Bayesian Statistics 4, 1992]:

    z = (mean_A - mean_B) / sqrt(S_A / n_A + S_B / n_B),

where ``S`` is the spectral density at frequency zero of each segment, i.e. its long-run
(autocorrelation-aware) variance, estimated as ``S = C(0) * tau`` with ``C(0)`` the segment's
population variance and ``tau`` its integrated autocorrelation time with Sokal's window
(:func:`lightning_sas.stats.autocorr.integrated_autocorr_time`). Under stationarity and with
segments far enough apart ``z`` is approximately standard normal; ``|z| < 2`` reads "stationary".
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lightning_sas.stats.autocorr import _finite, _is_constant, integrated_autocorr_time

__all__ = ["geweke_z"]

_MIN_N = 20


def _long_run_var(seg: np.ndarray) -> float:
    """``C(0) * tau`` of a segment; ``tau := 1`` when the IAT is undefined (constant or short)."""
    if _is_constant(seg):
        return 0.0
    tau = integrated_autocorr_time(seg)
    return float(seg.var()) * (1.0 if tau is None else tau)


def geweke_z(x: Any, first: float = 0.1, last: float = 0.5) -> float | None:
    """Geweke's z between the first ``first`` and the last ``last`` fraction of ``x``.

    ``z = (mean_A - mean_B) / sqrt(S_A/n_A + S_B/n_B)`` with spectral variances ``S = var * tau``
    [Geweke 1992] (module docstring). Non-finite values are dropped first. Returns ``None`` for
    fewer than 20 finite values, for a constant series, and when both segments are constant at
    *different* values (zero denominator: the difference is not measurable on this scale; a
    caller should not read it as stationary). Both segments constant at the same value (the
    middle varies) gives ``0.0``. Requires ``0 < first``, ``0 < last`` and ``first + last <= 1``.
    """
    if not (0.0 < first and 0.0 < last and first + last <= 1.0):
        raise ValueError(f"need 0 < first, 0 < last, first + last <= 1; got {first}, {last}")
    a = _finite(x)
    n = a.size
    if n < _MIN_N or _is_constant(a):
        return None
    n_a = max(math.floor(first * n), 2)
    n_b = max(math.floor(last * n), 2)
    seg_a, seg_b = a[:n_a], a[n - n_b :]
    diff = float(seg_a.mean() - seg_b.mean())
    denom2 = _long_run_var(seg_a) / n_a + _long_run_var(seg_b) / n_b
    if not denom2 > 0.0:
        both = np.concatenate([seg_a, seg_b])
        return 0.0 if _is_constant(both) else None
    return diff / math.sqrt(denom2)
