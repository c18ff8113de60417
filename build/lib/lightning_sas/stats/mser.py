"""MSER truncation: where the initial transient of a series ends.

Classic MSER [K. P. White, "An effective truncation heuristic for bias reduction in simulation
output", Simulation 69(6), 1997; W. W. Franklin & K. P. White, "Stationarity tests and MSER-5:
exploring the intuition behind mean-squared-error-reduction in warm-up period determination",
WSC 2008] truncates the first ``d`` observations of ``X_1..X_n`` where ``d`` minimises

    MSER(d) = 1/(n-d)^2 * sum_{i>d} (X_i - Xbar_d)^2,      Xbar_d = mean of X_{d+1..n},

i.e. the squared standard error of the truncated mean (a bias/variance trade-off: dropping a
transient lowers the spread, dropping too much inflates ``1/(n-d)``). MSER-m applies it to the
means of consecutive batches of ``m`` values (MSER-5: ``m = 5``).

Here it runs on contiguous blocks ``i = 0..K-1`` with counts ``c_i`` and block means ``Y_i``
(e.g. the bounded block summary of a stream, whose blocks need not be of equal size):

    MSER(d) = sum_{i>=d} c_i (Y_i - Ybar_d)^2 / N_d^2,   N_d = sum_{i>=d} c_i,
    Ybar_d = sum_{i>=d} c_i Y_i / N_d.

With all ``c_i = m`` this is ``(1/m) * [1/(K-d)^2 sum_{i>=d} (Y_i - Ybar_d)^2]``, a constant
multiple of classic MSER on the batch means (MSER-m), so the minimiser is the same. The search is
restricted to ``d <= K // 2`` (at least half of the blocks kept), as White recommends; a minimum at
that boundary means "not found": the series has not settled.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lightning_sas.stats.autocorr import _as_float64, _is_constant

__all__ = ["mser5", "mser_statistic", "mser_truncation"]

_MIN_BLOCKS = 4


def _clean_blocks(counts: Any, sums: Any) -> tuple[np.ndarray, np.ndarray]:
    c = _as_float64(counts)
    s = _as_float64(sums)
    if c.shape != s.shape:
        raise ValueError(f"counts and sums differ in length: {c.shape} vs {s.shape}")
    bad = ~(np.isfinite(c) & np.isfinite(s)) | (c <= 0)
    c = np.where(bad, 0.0, c)
    s = np.where(bad, 0.0, s)
    return c, s


def mser_statistic(counts: Any, sums: Any) -> np.ndarray:
    """``MSER(d)`` for every ``d = 0..K-1`` (count-weighted, see the module docstring).

    Blocks with a zero count or a non-finite count or sum are ignored (they weigh nothing but
    keep their index). Entries where no counted block remains are ``inf``.
    """
    c, s = _clean_blocks(counts, sums)
    k = c.size
    if k == 0:
        return np.zeros(0)
    y = np.divide(s, c, out=np.zeros_like(s), where=c > 0)
    # Centre on the overall weighted mean first (MSER is shift invariant): keeps the
    # suffix-sum formula below free of cancellation when the mean is large.
    total = c.sum()
    if total > 0:
        y = y - float((c * y).sum() / total)
    y = np.where(c > 0, y, 0.0)
    n_d = np.cumsum(c[::-1])[::-1]
    s1 = np.cumsum((c * y)[::-1])[::-1]
    s2 = np.cumsum((c * y * y)[::-1])[::-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        ss = np.maximum(s2 - np.where(n_d > 0, s1 * s1 / n_d, 0.0), 0.0)
        out = np.where(n_d > 0, ss / np.where(n_d > 0, n_d * n_d, 1.0), np.inf)
    return out


def mser_truncation(counts: Any, sums: Any) -> int | None:
    """Number of leading blocks ``d`` to drop, by count-weighted MSER on block means.

    ``MSER(d) = sum_{i>=d} c_i (Y_i - Ybar_d)^2 / N_d^2`` with ``Y_i = sums_i / counts_i`` (White
    1997; reduces to MSER-m when all counts equal ``m``, see the module docstring). Candidates are
    ``d = 0..K//2``; the minimiser (first one on ties) is returned, ``0`` meaning no transient.
    Returns ``None`` ("not found") when the minimum is at the last candidate ``K//2`` (the series
    has not settled), when fewer than 4 blocks are given, or when all block means are equal (a
    constant series carries no information about a transient). Blocks with a zero or non-finite
    count/sum weigh nothing but keep their index.
    """
    c, s = _clean_blocks(counts, sums)
    k = c.size
    used = c > 0
    if k < _MIN_BLOCKS or used.sum() < 2:
        return None
    if _is_constant(s[used] / c[used]):
        return None
    stat = mser_statistic(c, s)
    d_max = k // 2
    d = int(np.argmin(stat[: d_max + 1]))
    if d == d_max:
        return None
    return d


def mser5(x: Any) -> int | None:
    """MSER-5 truncation point of a series, as a *sample* index (``5 d``) or ``None``.

    Batch means of 5 consecutive values (the incomplete trailing batch is dropped) are passed to
    :func:`mser_truncation` with counts 5 [White 1997; Franklin & White 2008]. Non-finite values
    are excluded inside their batch (the batch count is its number of finite values), so indices
    keep referring to the original series. ``None`` when not found, the series is constant, or
    it has fewer than 4 complete batches.
    """
    a = _as_float64(x)
    nb = a.size // 5
    if nb < _MIN_BLOCKS:
        return None
    a = a[: 5 * nb].reshape(nb, 5)
    fin = np.isfinite(a)
    counts = fin.sum(axis=1).astype(np.float64)
    sums = np.where(fin, a, 0.0).sum(axis=1)
    d = mser_truncation(counts, sums)
    return None if d is None else 5 * d
