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

__all__ = ["batch_means_se", "batch_means_se_along", "batch_means_se_from_blocks", "gap_standard_error"]


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


def _batch_count(k: int, total: float, min_batches: int, min_batch_len: float | None) -> int:
    """``B = max(floor(sqrt(K)), min_batches)`` for ``K`` blocks of ``N = total`` evaluations,
    capped at ``K`` and, when ``min_batch_len`` is given (callers pass about twice the IAT, so
    batches outlast the correlation), at ``floor(N / min_batch_len)``: the batch length wins over
    ``min_batches``."""
    b = min(max(math.isqrt(k), int(min_batches)), k)
    if min_batch_len is not None and min_batch_len > 0:
        b = min(b, math.floor(total / float(min_batch_len)))
    return b


def _batch_plan(c: np.ndarray, n_batches: int, min_batch_len: float | None) -> tuple[np.ndarray, list[tuple[int, int]]] | None:
    """How contiguous blocks of positive counts ``c`` (``N = sum c``) become ``n_batches`` batches.

    Batch ``j`` takes the blocks that start in ``[j N/B, (j+1) N/B)`` (nearly equal counts; blocks
    are indivisible, so a batch may stay empty and is dropped); then, with ``min_batch_len``, the
    shortest batch is merged into its smaller neighbour until none is shorter. Returns ``(batch
    of each block, merges)``, ``merges`` the ``(lo, hi)`` batch pairs in the order they were
    merged, or None for ``n_batches < 2``."""
    if n_batches < 2:
        return None
    total = float(c.sum())
    cum_excl = np.concatenate([[0.0], np.cumsum(c)[:-1]])
    _, batch = np.unique(_batch_index(cum_excl, total, n_batches), return_inverse=True)  # empty batches dropped
    merges: list[tuple[int, int]] = []
    if min_batch_len is not None and min_batch_len > 0:
        lengths = list(np.bincount(batch, weights=c))
        while len(lengths) > 1:
            i = int(np.argmin(lengths))
            if lengths[i] >= min_batch_len:
                break
            if i == 0:
                j = 1
            elif i == len(lengths) - 1:
                j = i - 1
            else:
                j = i - 1 if lengths[i - 1] <= lengths[i + 1] else i + 1
            lo, hi = min(i, j), max(i, j)
            lengths[lo] += lengths[hi]
            del lengths[hi]
            merges.append((lo, hi))
    return batch, merges


def _batch_sums(values: np.ndarray, batch: np.ndarray, merges: list[tuple[int, int]]) -> np.ndarray:
    """``values`` (blocks on axis 0) summed over each batch, then the merges applied in order:
    ``(batches, ...)``. Block order is kept within a batch (as ``np.bincount`` adds)."""
    n_batches = int(batch.max()) + 1
    flat = values.reshape(values.shape[0], -1)
    width = flat.shape[1]
    bins = (batch[:, None] * width + np.arange(width)[None, :]).ravel()
    sums = np.bincount(bins, weights=flat.ravel(), minlength=n_batches * width).reshape(n_batches, width)
    rows = list(sums)
    for lo, hi in merges:
        rows[lo] = rows[lo] + rows[hi]
        del rows[hi]
    return np.stack(rows).reshape((len(rows),) + values.shape[1:])


def batch_means_se_along(
    counts: Any,
    values: Any,
    axis: int = 1,
    min_batches: int = 8,
    min_batch_len: float | None = None,
) -> np.ndarray | None:
    r"""Batch-means standard errors of many count-weighted time averages at once.

    ``values[..., b, ...]`` (blocks on ``axis``) are block means with ``counts[b]`` evaluations
    each: series ``s`` has the time average :math:`\sum_b c_b v_{s,b} / \sum_b c_b`. The blocks
    are batched once, from ``counts``, by the rule of :func:`batch_means_se_from_blocks` (blocks
    with a zero or non-finite count are dropped), and every series gets

    .. math:: \mathrm{SE}_s = \sqrt{\frac{\sum_j C_{s,j} (M_{s,j} - M_s)^2}{(J_s - 1)\, N_s}}

    over its batches ``j`` of :math:`C_{s,j}` evaluations with means :math:`M_{s,j}` (``N_s`` and
    ``M_s`` their total and mean). A series' non-finite block means are left out of their batch
    (with their counts), and a batch left empty is left out of that series (``J_s`` counts the
    rest); NaN for a series with fewer than 2 batches, 0 for a constant one. Returns the array of
    ``values`` without ``axis``, or None when the counts give fewer than 2 batches."""
    c = _as_float64(counts)
    v = np.moveaxis(np.asarray(values, dtype=np.float64), axis, 0)
    if v.shape[0] != c.size:
        raise ValueError(f"values have {v.shape[0]} blocks on axis {axis}, counts {c.size}")
    keep = np.isfinite(c) & (c > 0)
    c, v = c[keep], v[keep]
    if c.size < 2:
        return None
    plan = _batch_plan(c, _batch_count(c.size, float(c.sum()), min_batches, min_batch_len), min_batch_len)
    if plan is None:
        return None
    finite = np.isfinite(v)
    weights = np.where(finite, c.reshape((-1,) + (1,) * (v.ndim - 1)), 0.0)
    bc = _batch_sums(weights, *plan)
    bs = _batch_sums(np.where(finite, v, 0.0) * weights, *plan)
    used = bc > 0
    n_used = used.sum(axis=0)
    if bc.shape[0] < 2:
        return None
    with np.errstate(invalid="ignore", divide="ignore"):
        m_b = np.where(used, bs / np.where(used, bc, 1.0), 0.0)
        n = bc.sum(axis=0)
        m = bs.sum(axis=0) / n
        ss = np.where(used, bc * (m_b - m) ** 2, 0.0).sum(axis=0)
        se = np.sqrt(ss / ((n_used - 1) * n))
    return np.where(n_used >= 2, se, np.nan)


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
    ones = np.ones(n)
    plan = _batch_plan(ones, b, None)
    assert plan is not None  # b >= 2
    return _se_from_batches(_batch_sums(ones, *plan), _batch_sums(a, *plan))


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
    :func:`batch_means_se_along` is the same rule for many series at once.
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
    plan = _batch_plan(c, _batch_count(k, float(c.sum()), min_batches, min_batch_len), min_batch_len)
    if plan is None:
        return None
    return _se_from_batches(_batch_sums(c, *plan), _batch_sums(s, *plan))


def _se_from_batches(c: np.ndarray, s: np.ndarray) -> float | None:
    """``sqrt(sum c_b (m_b - m)^2 / ((B-1) N))`` over batches of counts ``c`` and sums ``s``;
    None with fewer than 2 batches or equal batch means."""
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
