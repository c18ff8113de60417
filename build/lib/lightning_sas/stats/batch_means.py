"""Non-overlapping batch means: standard error of the mean of a correlated series.

Split the series into ``B`` contiguous batches with counts ``c_b`` (``N = sum c_b``) and means
``m_b``; ``m = sum c_b m_b / N`` is the overall mean. If the batches are much longer than the
integrated autocorrelation time, the batch means are nearly independent with
``Var(m_b) ~ sigma_inf^2 / c_b``, where ``sigma_inf^2 = C(0) tau`` is the long-run variance. Then

    E[ sum_b c_b (m_b - m)^2 ] = sum_b c_b Var(m_b) - N Var(m) = B sigma_inf^2 - sigma_inf^2,

so ``sigma_inf^2 ~ sum_b c_b (m_b - m)^2 / (B - 1)`` and, as ``Var(m) = sigma_inf^2 / N``,

    SE(m) = sqrt( sum_b c_b (m_b - m)^2 / ((B - 1) N) ).

With equal counts ``c_b = L`` (``N = B L``) this is ``sqrt( sum_b (m_b - m)^2 / ((B-1) B) ) =
sd(batch means) / sqrt(B)``, the classic estimator [B. W. Schmeiser, "Batch size effects in the
analysis of simulation output", Oper. Res. 30(3), 1982; G. S. Fishman, "Monte Carlo: Concepts,
Algorithms, and Applications" (1996), sec. 6.6; J. M. Flegal & G. L. Jones, "Batch means and
spectral variance estimators in MCMC", Ann. Statist. 38(2), 2010, for ``B ~ sqrt(n)``].
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lightning_sas.stats.autocorr import _as_float64, _finite, _is_constant

__all__ = ["batch_means_se", "batch_means_se_from_blocks", "gap_standard_error"]


def _batch_index(cum_excl: np.ndarray, total: float, n_batches: int) -> np.ndarray:
    """Batch of each block: ``j`` such that ``j N/B <= (count before the block) < (j+1) N/B``.

    Counts are integer-valued floats below 2^53, so ``cum * B`` and ``j * N`` are exact; the
    division is corrected so boundaries fall exactly on multiples of ``N/B``.
    """
    prod = cum_excl * n_batches
    j = np.floor(prod / total)
    j = np.where(j * total > prod, j - 1, j)
    j = np.where((j + 1) * total <= prod, j + 1, j)
    return np.clip(j, 0, n_batches - 1).astype(np.int64)


def _se_from_batches(c: np.ndarray, s: np.ndarray) -> float | None:
    """``sqrt(sum c_b (m_b - m)^2 / ((B-1) N))`` over batches with positive counts."""
    keep = c > 0
    c, s = c[keep], s[keep]
    b = c.size
    if b < 2:
        return None
    m_b = s / c
    if _is_constant(m_b):
        return None
    n = float(c.sum())
    m = float(s.sum() / n)
    ss = float((c * (m_b - m) ** 2).sum())
    return math.sqrt(ss / ((b - 1) * n))


def _merge_short(c: np.ndarray, s: np.ndarray, min_len: float) -> tuple[np.ndarray, np.ndarray]:
    """Merge batches shorter than ``min_len`` into their smaller neighbour until none is left."""
    c, s = list(c), list(s)
    while len(c) > 1:
        i = int(np.argmin(c))
        if c[i] >= min_len:
            break
        if i == 0:
            j = 1
        elif i == len(c) - 1:
            j = i - 1
        else:
            j = i - 1 if c[i - 1] <= c[i + 1] else i + 1
        lo, hi = min(i, j), max(i, j)
        c[lo] += c[hi]
        s[lo] += s[hi]
        del c[hi], s[hi]
    return np.asarray(c, dtype=np.float64), np.asarray(s, dtype=np.float64)


def _batch(c: np.ndarray, s: np.ndarray, n_batches: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge contiguous blocks into ``n_batches`` batches of nearly equal count."""
    total = float(c.sum())
    cum_excl = np.concatenate([[0.0], np.cumsum(c)[:-1]])
    idx = _batch_index(cum_excl, total, n_batches)
    bc = np.bincount(idx, weights=c, minlength=n_batches)
    bs = np.bincount(idx, weights=s, minlength=n_batches)
    keep = bc > 0
    return bc[keep], bs[keep]


def batch_means_se(x: Any, n_batches: int | None = None) -> float | None:
    """Batch-means standard error of the mean of ``x`` (module docstring).

    ``n_batches`` defaults to ``floor(sqrt(n))`` (at least 2) and is capped at ``n`` (batch length
    >= 1). All values are used: batch ``j`` holds the samples ``i`` with ``j n/B <= i < (j+1) n/B``
    (lengths differ by at most one; the count-weighted formula handles that). Non-finite values
    are dropped first. ``None`` for ``n < 4``, fewer than 2 batches, or a constant series.
    """
    a = _finite(x)
    n = a.size
    if n < 4 or _is_constant(a):
        return None
    b = max(math.isqrt(n), 2) if n_batches is None else int(n_batches)
    b = min(b, n)
    if b < 2:
        return None
    bc, bs = _batch(np.ones(n), a, b)
    return _se_from_batches(bc, bs)


def batch_means_se_from_blocks(
    counts: Any,
    sums: Any,
    min_batches: int = 8,
    min_batch_len: float | None = None,
) -> float | None:
    """Batch-means standard error of the mean from contiguous blocks ``(count, sum)``.

    Neighbouring blocks are merged into ``B`` batches of nearly equal count, ``B =
    max(floor(sqrt(K)), min_batches)`` for ``K`` blocks, capped at ``K`` and, when
    ``min_batch_len`` is given (callers pass about twice the IAT, so batches outlast the
    correlation), at ``floor(N / min_batch_len)``: the batch length wins over ``min_batches``.
    Blocks are indivisible, so a batch shorter than ``min_batch_len`` is then merged into its
    smaller neighbour. ``SE = sqrt( sum_b c_b (m_b - m)^2 / ((B-1) N) )`` (module docstring; equal
    counts give ``sd(batch means)/sqrt(B)``). Blocks with a zero or non-finite count or sum are
    dropped. ``None`` with fewer than 2 batches or when all block means are equal.
    """
    c = _as_float64(counts)
    s = _as_float64(sums)
    if c.shape != s.shape:
        raise ValueError(f"counts and sums differ in length: {c.shape} vs {s.shape}")
    keep = np.isfinite(c) & np.isfinite(s) & (c > 0)
    c, s = c[keep], s[keep]
    k = c.size
    if k < 2 or _is_constant(s / c):
        return None
    total = float(c.sum())
    b = min(max(math.isqrt(k), int(min_batches)), k)
    if min_batch_len is not None and min_batch_len > 0:
        b = min(b, math.floor(total / float(min_batch_len)))
    if b < 2:
        return None
    bc, bs = _batch(c, s, b)
    if min_batch_len is not None and min_batch_len > 0:
        bc, bs = _merge_short(bc, bs, float(min_batch_len))
    return _se_from_batches(bc, bs)


def gap_standard_error(temporal_se: float | None, train_values: Any, test_values: Any) -> float | None:
    r"""Standard error of a gap :math:`\bar l_\mathrm{test} - \bar l_\mathrm{train}` of per-point
    time averages: the temporal noise of the time average (``temporal_se``, batch means of the
    per-block gap) and the sampling of the probe points from their populations, in quadrature,

    .. math:: \mathrm{SE}^2 = \mathrm{SE}_\mathrm{time}^2 + \frac{s^2_\mathrm{test}}{n_\mathrm{test}}
              + \frac{s^2_\mathrm{train}}{n_\mathrm{train}},

    with :math:`s^2` the sample variance of the per-point averages (non-finite ones dropped). The
    second part is the uncertainty of the gap as an estimate of the population gap: a few hundred
    probe points of very different losses dominate it. None when neither part is available."""
    parts = [] if temporal_se is None or not math.isfinite(temporal_se) else [float(temporal_se) ** 2]
    for values in (train_values, test_values):
        v = _as_float64(values)
        v = v[np.isfinite(v)]
        if v.size >= 2:
            parts.append(float(v.var(ddof=1)) / v.size)
    return math.sqrt(sum(parts)) if parts else None
