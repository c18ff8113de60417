r"""95 % intervals that follow the skew of per-sample losses (pure numpy/math, float64).

Per-sample losses of a model that memorizes its training data are heavy-tailed: a handful of
hard held-out points sit a nat or more above the rest. The estimate and its standard error then
move together over seeds (a seed that drew few hard points gets a small value *and* a small SE),
and the symmetric interval ``value ± t SE`` covers less than 95 % (85-88 % on scikit-learn's
digits in ``benchmarks/calibration.py``). Two corrections, one per kind of statistic:

* :func:`log_interval` for a statistic that is positive by construction (a mean or max of
  ``|d|``): the interval of :math:`\log v` by the delta method, :math:`v\,e^{\pm t\,SE/v}`.
* :func:`skew_corrected_interval` for a signed mean (a gap), which may sit at or below 0 where no
  log applies: Hall's transformation of the studentized mean [P. Hall, "On the removal of
  skewness by transformation", J. R. Statist. Soc. B 54(1), 221-228, 1992], with the estimator's
  skewness :math:`\gamma` from the third cumulant of the units its SE is computed from (the
  replicas of a stability gap, the probe points of a measured gap;
  :func:`third_cumulant_of_mean`).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["log_interval", "skew_corrected_interval", "third_cumulant_of_mean", "Z_975"]

#: the two-sided 95 % point of the standard normal
Z_975 = 1.959963984540054


def _usable(value: float | None, se: float | None) -> bool:
    return value is not None and se is not None and math.isfinite(value) and math.isfinite(se) and se >= 0


def log_interval(value: float | None, se: float | None, t: float) -> tuple[float | None, float | None]:
    r"""``(lower, upper)`` = :math:`(v\,e^{-t\,SE/v},\ v\,e^{t\,SE/v})` for :math:`v > 0`: the
    interval ``log v ± t SE/v`` mapped back (:math:`SE/v` is the delta-method SE of
    :math:`\log v`), never below 0 and wider above ``v`` than below. ``v ± t SE`` when
    :math:`v \le 0` (a statistic that is positive by construction only gets there from rounding);
    ``(None, None)`` without a finite value and SE."""
    if not _usable(value, se):
        return None, None
    assert value is not None and se is not None
    if value <= 0:
        return value - t * se, value + t * se
    ratio = min(t * se / value, 700.0)  # exp overflows past ~709
    return value * math.exp(-ratio), value * math.exp(ratio)


def third_cumulant_of_mean(samples: np.ndarray) -> float:
    r"""Third cumulant of the mean of ``n`` independent draws, :math:`\kappa_3 / n^2`, with
    the unbiased :math:`\hat\kappa_3 = \frac{n}{(n-1)(n-2)}\sum_i (x_i - \bar x)^3`
    (non-finite values left out; 0 with fewer than 3)."""
    x = np.asarray(samples, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    n = x.size
    if n < 3:
        return 0.0
    k3 = n / ((n - 1) * (n - 2)) * float(((x - x.mean()) ** 3).sum())
    return k3 / (n * n)


def skew_corrected_interval(
    value: float | None, se: float | None, t: float, third_cumulant: float
) -> tuple[float | None, float | None]:
    r"""Hall's (1992) skewness-corrected 95 % interval of a mean-like estimate ``value``.

    With the estimator's skewness :math:`\gamma = \kappa_3 / SE^3` (``third_cumulant`` =
    :math:`\kappa_3`, the third cumulant of the estimate, e.g. :math:`\hat\kappa_3/n^2` for a mean
    of ``n`` draws), :math:`a = \gamma/3` and :math:`b = \gamma/6`, the monotone map
    :math:`g(T) = T + aT^2 + a^2T^3/3 + b` of the studentized estimate
    :math:`T = (\hat\theta - \theta)/SE` is normal to second order, so

    .. math:: \theta \in \big[\hat\theta - SE\,(g_0^{-1}(z - b) + t - z),\
              \hat\theta - SE\,(g_0^{-1}(-z - b) - t + z)\big],
              \qquad g_0^{-1}(y) = \frac{(1 + 3ay)^{1/3} - 1}{a} ,

    :math:`z` = 1.96 the normal quantile Hall's map is built for, widened by :math:`(t - z)\,SE`
    on each side for Student's ``t`` of a small sample (the Cornish-Fisher expansion of the
    studentized mean's quantile, :math:`t + \gamma(2z^2 + 1)/6`, to that order; with ``t`` inside
    the map the noise of an estimated :math:`\gamma` is amplified by :math:`(2t^2+1)/6`, 3.5 for
    K = 4, and a null gap was flagged 7-8 % of the time at a nominal 5 %). To first order both ends
    move up by :math:`SE\,\gamma\,(2z^2 + 1)/6` (Johnson's modified t, JASA 73(363), 1978): a
    right-skewed estimate, whose SE grows with it, gets room above. With :math:`\gamma = 0` it is
    ``value ± t SE``. ``(None, None)`` without a finite value and SE."""
    if not _usable(value, se):
        return None, None
    assert value is not None and se is not None
    if se == 0 or not math.isfinite(third_cumulant):
        return value - t * se, value + t * se
    gamma = third_cumulant / se**3
    a, b = gamma / 3.0, gamma / 6.0
    if abs(a) < 1e-12:
        return value - t * se, value + t * se

    def inverse(y: float) -> float:
        return (float(np.cbrt(1.0 + 3.0 * a * y)) - 1.0) / a

    widen = max(t - Z_975, 0.0)
    return value - se * (inverse(Z_975 - b) + widen), value - se * (inverse(-Z_975 - b) - widen)
