r"""Statistical algorithmic stability (SAS) from replica time averages (pure numpy, float64).

Chandramoorthy, Loukas, Gatmiry and Jegelka, "On the generalization of learning algorithms that
do not converge", NeurIPS 2022 (arXiv 2208.07951). With replica 0 the control (trained on ``S``)
and replica ``k`` trained on ``S^(k)`` (``S`` with ``m`` samples swapped), and time averages
:math:`\langle l_r(z) \rangle` over the late phase,

.. math:: d_k(z) = \langle l_k(z)\rangle - \langle l_0(z)\rangle .

Replica ``k`` swaps ``m`` samples ``I_k`` of ``S`` for ``m`` held-out samples ``Z'_k``. Inputs are
block means of replica ``k`` and of the control at replica ``k``'s probe points (``R = K``
aligned pairs, ``B`` contiguous time blocks of ``c_b`` probe evaluations each, ``P`` probe
points), so the time average is
:math:`\langle l(z)\rangle = \sum_b c_b m[b,z] / \sum_b c_b` and the difference series
``D[k, b, z]`` (replica minus control) gives temporal standard errors by batch means.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from lightning_sas.stats.batch_means import batch_means_se_along, batch_means_se_from_blocks, gap_standard_error
from lightning_sas.stats.intervals import Z_975, log_interval, skew_corrected_interval, third_cumulant_of_mean

__all__ = [
    "sas_statistics",
    "heldout_gap",
    "GAP_CRITICAL_T",
    "estimate_by_window",
    "forgetting_curve",
    "paper_coefficient",
    "mean_pairwise_abs_difference",
    "least_squares_sas",
    "time_average",
    "student_t_975",
    "replica_standard_error",
    "detrend",
]

_HALF_NORMAL_MEAN = math.sqrt(2.0 / math.pi)

#: two-sided 95 % critical values of Student's t, ``t_{0.975, dof}`` for dof = 1..30
_T_975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)


def student_t_975(dof: int | float) -> float:
    r"""Two-sided 95 % critical value :math:`t_{0.975,\nu}` of Student's t with ``dof`` degrees
    of freedom: a table for :math:`\nu \le 30`, above it the Cornish-Fisher expansion
    :math:`z + (z^3 + z)/(4\nu) + (5z^5 + 16z^3 + 3z)/(96\nu^2)` with :math:`z = 1.95996`
    (error below 1e-4). ``dof < 1`` or infinite gives the normal value ``z``."""
    z = Z_975
    if not math.isfinite(dof) or dof < 1:
        return z
    if dof <= 30 and float(dof).is_integer():
        return _T_975[int(dof) - 1]
    nu = float(dof)
    return z + (z**3 + z) / (4 * nu) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * nu**2)


def time_average(means: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Count-weighted average over axis 1 (blocks), ignoring NaN blocks: ``(R, B, P) -> (R, P)``;
    ``counts`` per block ``(B,)`` or per block and point ``(B, P)``. NaN for a point without a
    finite block."""
    c = np.asarray(counts, dtype=np.float64)
    w = np.where(np.isfinite(means), c[None, :, None] if c.ndim == 1 else c[None], 0.0)
    total = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        avg = np.where(total > 0, np.nansum(means * w, axis=1) / np.where(total > 0, total, 1.0), np.nan)
    return avg


def detrend(series: np.ndarray, counts: np.ndarray) -> np.ndarray:
    r"""``series`` (blocks on axis 1) minus its count-weighted least-squares line in time, plus its
    count-weighted mean: the time average is unchanged, a linear drift is taken out. Block ``b``
    sits at :math:`t_b = \sum_{b' < b} c_{b'} + c_b / 2` evaluations."""
    x = np.asarray(series, dtype=np.float64)
    c = np.asarray(counts, dtype=np.float64)
    if x.shape[1] < 3 or c.sum() <= 0:
        return x
    t = np.cumsum(c) - 0.5 * c
    w = c / c.sum()
    t_bar = float((w * t).sum())
    var_t = float((w * (t - t_bar) ** 2).sum())
    if var_t <= 0:
        return x
    shape = [1] * x.ndim
    shape[1] = len(c)
    wv, tv = w.reshape(shape), (t - t_bar).reshape(shape)
    finite = np.where(np.isfinite(x), x, 0.0)
    slope = (wv * tv * finite).sum(axis=1, keepdims=True) / var_t
    return x - slope * tv


def _temporal_se(series: np.ndarray, counts: np.ndarray, min_batch_len: float | None) -> np.ndarray | None:
    """Batch-means SE of the count-weighted time average of ``series[:, b, ...]`` along axis 1
    (blocks with ``counts[b]`` evaluations): :func:`~lightning_sas.stats.batch_means.batch_means_se_along`,
    the batch rule of every batch-means SE in the package. None with fewer than 2 batches."""
    return batch_means_se_along(counts, series, axis=1, min_batch_len=min_batch_len)


def replica_standard_error(values: np.ndarray, temporal: np.ndarray | None = None) -> float | None:
    r"""SE of :math:`\bar v = \frac1K\sum_k v_k`, the mean over the ``K`` replicas.

    With :math:`K \ge 2`: the spread between replicas alone,
    :math:`s/\sqrt K` with :math:`s^2 = \frac{1}{K-1}\sum_k (v_k - \bar v)^2` (read against
    Student's t with ``K - 1`` dof). Each :math:`v_k` is a time average over its own trajectory,
    so :math:`\mathrm{Var}(v_k) = \sigma^2_\mathrm{swaps} + \sigma^2_{\mathrm{time},k}` and
    :math:`s^2` already estimates both parts: adding the temporal batch-means variance
    :math:`\frac1K\overline{s^2_{\mathrm{time}}}` again would count the temporal noise twice (the
    SE came out about 1.3 times too large and the nominal 5 % flag fired 0.15 % of the time under
    the null). With ``K = 1`` there is no spread: the temporal SE of the one replica
    (``temporal``, batch means), None without it."""
    v = np.asarray(values, dtype=np.float64)
    k = len(v)
    if k >= 2:
        return float(np.std(v, ddof=1)) / math.sqrt(k)
    if temporal is not None and np.all(np.isfinite(temporal)) and np.size(temporal):
        return float(np.sqrt(np.mean(np.asarray(temporal, dtype=np.float64) ** 2)))
    return None


def _common_mode_se(shared: np.ndarray, counts: np.ndarray, weights: np.ndarray, min_batch_len: float | None) -> float:
    r"""Temporal SE of the control's part of a statistic on the shared points: batch means of
    :math:`c(b) = \sum_z w_z\, C[b, z]` over the control's block means ``shared[b, z]``, after
    :func:`detrend` (0 when all weights vanish or there are fewer than 2 batches)."""
    if not np.any(weights):
        return 0.0
    series = np.nansum(shared * weights[None, :], axis=1)[None, :, None]
    series = detrend(series, counts)  # a drift of the window is no noise (benchmarks/calibration.py)
    se = _temporal_se(series, counts, min_batch_len)
    return float(se[0, 0]) if se is not None and np.isfinite(se[0, 0]) else 0.0


def _rms(x: np.ndarray) -> float:
    """Root mean square: the per-point temporal SEs ``s`` enter the null levels as
    ``sqrt(mean s^2)``, because ``s^2`` (not ``s``) is unbiased for the variance; ``mean s`` sits
    low by Jensen's inequality (about 8 % with 4 batches) and let the null flag of ``sas_mean``
    fire 10 % of the time at a nominal 5 %."""
    return float(np.sqrt(np.mean(np.asarray(x, dtype=np.float64) ** 2)))


def crossed_mean_standard_error(table: np.ndarray) -> tuple[float, float] | None:
    r"""SE of the grand mean of a ``K x P`` table whose rows (replicas) and columns (points) are
    both random samples, and its Satterthwaite degrees of freedom.

    With the two-way random-effects model :math:`x_{kz} = \mu + \rho_k + \gamma_z + \epsilon_{kz}`
    and mean squares :math:`MS_r = P\sum_k(\bar x_{k\cdot} - \bar x)^2/(K-1)`,
    :math:`MS_c = K\sum_z(\bar x_{\cdot z} - \bar x)^2/(P-1)`,
    :math:`MS_e = \sum_{kz}(x_{kz} - \bar x_{k\cdot} - \bar x_{\cdot z} + \bar x)^2/((K-1)(P-1))`,

    .. math:: \mathrm{Var}(\bar x) = \frac{\sigma^2_\rho}{K} + \frac{\sigma^2_\gamma}{P}
              + \frac{\sigma^2_\epsilon}{KP}, \quad
              \hat\sigma^2_\rho = \frac{(MS_r - MS_e)_+}{P},\
              \hat\sigma^2_\gamma = \frac{(MS_c - MS_e)_+}{K},\
              \hat\sigma^2_\epsilon = MS_e

    (the ANOVA estimators, truncated at 0; without truncation the sum is
    :math:`(MS_r + MS_c - MS_e)/(KP)`). The spread between row means alone sees
    :math:`\sigma^2_\rho/K + \sigma^2_\epsilon/(KP)` and misses the points' part, which all
    replicas share; adding the spread of the column means instead would count
    :math:`\sigma^2_\epsilon/(KP)` twice. Degrees of freedom: Satterthwaite's
    :math:`\nu = V^2 / \sum_i (a_i MS_i)^2/\nu_i` over the mean squares that enter :math:`V`
    [F. E. Satterthwaite, Biometrics Bulletin 2(6), 1946]. None for ``K < 2`` or ``P < 2``."""
    x = np.asarray(table, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 2 or not np.all(np.isfinite(x)):
        return None
    k, p = x.shape
    grand, rows, cols = x.mean(), x.mean(axis=1), x.mean(axis=0)
    ms_r = p * float(((rows - grand) ** 2).sum()) / (k - 1)
    ms_c = k * float(((cols - grand) ** 2).sum()) / (p - 1)
    ms_e = float(((x - rows[:, None] - cols[None, :] + grand) ** 2).sum()) / ((k - 1) * (p - 1))
    # V = sum_i a_i MS_i over the terms kept: (coefficient, mean square, its dof)
    terms = [(1.0 / (k * p), ms_e, (k - 1) * (p - 1))]
    if ms_r > ms_e:
        terms += [(1.0 / (k * p), ms_r, k - 1), (-1.0 / (k * p), ms_e, (k - 1) * (p - 1))]
    if ms_c > ms_e:
        terms += [(1.0 / (k * p), ms_c, p - 1), (-1.0 / (k * p), ms_e, (k - 1) * (p - 1))]
    var = sum(a * ms for a, ms, _ in terms)
    if not var > 0:
        return None
    denominator = sum((a * ms) ** 2 / dof for a, ms, dof in terms)
    dof = var**2 / denominator if denominator > 0 else math.inf
    return math.sqrt(var), dof


def _finite_or_none(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def sas_statistics(
    perturbed: np.ndarray,
    control: np.ndarray,
    block_counts: np.ndarray,
    removed_cols: np.ndarray,
    added_cols: np.ndarray,
    heldout_cols: np.ndarray,
    min_batch_len: float | None = None,
) -> dict[str, Any]:
    r"""The SAS statistics with ``m`` swaps per replica, each with ``_se``,
    ``_null`` and ``_resolved``.

    Inputs are *aligned* block means: ``perturbed[k, b, c]`` of replica ``k + 1`` and
    ``control[k, b, c]`` of the control at the same probe point, over replica ``k + 1``'s columns
    (see :class:`~lightning_sas.data.SwapLayout`): the removed samples ``I_k`` (``removed_cols``),
    the added held-out samples ``Z'_k`` (``added_cols``) and ``P_test`` (``heldout_cols``). With
    :math:`d_k(z) = \langle l_k(z)\rangle - \langle l_0(z)\rangle`:

    * ``sas_max`` = :math:`\frac1K\sum_k \max_{z \in I_k \cup Z'_k \cup P_\mathrm{test}} |d_k(z)|`;
    * ``sas_mean`` = :math:`\frac1K\sum_k \frac1{|P_\mathrm{test}|}\sum_{z} |d_k(z)|` (held-out);
    * ``sas_replaced`` = :math:`\frac1K\sum_k \frac1m\sum_{i \in I_k} |d_k(i)|`;
    * the replace-one identity on both sides of every swap: removed
      :math:`r_k(i) = d_k(i)` (the replica never saw ``i``, the control did), added
      :math:`a_k(z') = -d_k(z')` (the control never saw ``z'``, the replica did);
      ``stability_gap_removed`` = :math:`\frac1K\sum_k \bar r_k`, ``stability_gap_added`` =
      :math:`\frac1K\sum_k \bar a_k`, and ``stability_gap`` = :math:`\frac1K\sum_k g_k` with
      :math:`g_k = \frac{1}{2m}(\sum_i r_k(i) + \sum_{z'} a_k(z'))`, the mean of the replica's
      ``2m`` values (the symmetric mean cancels much of each side's bias).

    SE: the replicas are the independent units (the ``2m`` values of one replica share its
    trajectory): the spread of the ``K`` per-replica values, ``sd / sqrt(K)``, which already holds
    each replica's temporal noise (:func:`replica_standard_error`; with ``K = 1`` the temporal
    batch-means SE of the replica's series, :math:`G_k(b)` for ``g_k``, linear in the block
    differences; for means of ``|d|`` the delta method, :math:`\mathrm{sign}(d)\,D`). The critical
    value is Student's :math:`t_{0.975, K-1}` (``sas_critical_t``; 3.18 for K = 4; 2 for K = 1).
    ``benchmarks/calibration.py`` checks these SEs against the spread of the estimates over seeds.
    Null level (no effect at all): a mean of ``|d|`` with per-point SE ``s`` sits near
    :math:`\sqrt{2/\pi}\,s`, a max over ``n`` points adds at most about :math:`s\sqrt{2\ln n}`
    (``s`` the root mean square of the per-point temporal SEs; the max's bound is conservative);
    ``*_lower``/``*_upper``: the 95 % interval, on the log scale for the positive ``sas_*``
    (:func:`~lightning_sas.stats.intervals.log_interval`) and skewness-corrected for the signed
    gaps (:func:`~lightning_sas.stats.intervals.skew_corrected_interval`, the third cumulant of
    their mean from the ``K`` per-replica values, the units of the SE): per-sample losses are
    heavy-tailed, and the symmetric ``value ± t SE`` covered 85-88 % in
    ``benchmarks/calibration.py``.
    ``*_resolved`` means ``estimate > null + t SE`` for the ``sas_*`` (a one-sided test against
    the null level) and, for the signed gaps, that their interval excludes 0.
    ``stability_gap_max_share`` = :math:`\max_k |g_k| / \sum_k |g_k|` says whether one replica
    carries the estimate (``1/K`` when all contribute alike). With ``m = 1`` every statistic but
    the symmetric ``stability_gap`` is the one-replacement estimator of v0.1, whose
    ``stability_gap`` is ``stability_gap_removed`` here.
    """
    pert = np.asarray(perturbed, dtype=np.float64)
    ctrl = np.asarray(control, dtype=np.float64)
    counts = np.asarray(block_counts, dtype=np.float64)
    removed = np.asarray(removed_cols, dtype=np.int64)
    added = np.asarray(added_cols, dtype=np.int64)
    heldout = np.asarray(heldout_cols, dtype=np.int64)
    if pert.shape != ctrl.shape or pert.ndim != 3:
        raise ValueError(f"perturbed and control must be aligned (K, B, P) arrays, got {pert.shape} and {ctrl.shape}")
    k, b, _p = pert.shape
    if k < 1 or b < 1 or len(removed) < 1 or len(removed) != len(added):
        raise ValueError(f"need >= 1 perturbed replica, >= 1 block and m >= 1 swaps on each side, got shape {pert.shape}, "
                         f"{len(removed)} removed and {len(added)} added columns")
    d = time_average(pert, counts) - time_average(ctrl, counts)  # (K, P)
    diff = pert - ctrl  # (K, B, P)
    se = _temporal_se(diff, counts, min_batch_len)  # (K, P) or None
    r = d[:, removed]  # (K, m): removed side
    a = -d[:, added]  # (K, m): added side
    g = 0.5 * (r.mean(axis=1) + a.mean(axis=1))
    # per-replica series, linear in the block differences: their batch means give temporal SEs
    sign = np.where(r >= 0, 1.0, -1.0)
    series = np.stack([
        diff[:, :, removed].mean(axis=2),  # removed side
        -diff[:, :, added].mean(axis=2),  # added side
        0.5 * (diff[:, :, removed].mean(axis=2) - diff[:, :, added].mean(axis=2)),  # symmetric
        (sign[:, None, :] * diff[:, :, removed]).mean(axis=2),  # delta method for mean |r|
    ], axis=2)  # (K, B, 4)
    series_se = _temporal_se(series, counts, min_batch_len)  # (K, 4) or None

    def column(j: int) -> np.ndarray | None:
        return series_se[:, j] if series_se is not None else None

    candidates = np.concatenate([removed, added, heldout])
    abs_cand = np.abs(d[:, candidates])
    max_per_k = abs_cand.max(axis=1)
    held_per_k = np.abs(d[:, heldout]).mean(axis=1)
    se_max = se[np.arange(k), candidates[np.argmax(abs_cand, axis=1)]] if se is not None else None
    se_held = se[:, heldout].mean(axis=1) if se is not None else None

    # the control's noise on the shared points P_test moves every replica's |d| alike: it is not in
    # the spread between replicas, so it is added (delta method: d/dl_0(z) of the statistic)
    shared = ctrl[0][:, heldout]  # (B, |P_test|): one control trajectory on the shared points
    held_weights = np.where(d[:, heldout] >= 0, 1.0, -1.0).mean(axis=0) / max(len(heldout), 1)
    argmax = candidates[np.argmax(abs_cand, axis=1)]
    max_weights = np.zeros(len(heldout))
    for kk in range(k):
        where = np.flatnonzero(heldout == argmax[kk])
        if where.size:
            max_weights[where[0]] += (1.0 if d[kk, argmax[kk]] >= 0 else -1.0) / k
    common = {"sas_mean": _common_mode_se(shared, counts, held_weights, min_batch_len),
              "sas_max": _common_mode_se(shared, counts, max_weights, min_batch_len)}

    crit = student_t_975(k - 1) if k >= 2 else 2.0
    out: dict[str, Any] = {"n_replicas": k, "n_blocks": b, "swaps": int(len(removed)), "sas_critical_t": crit}
    stats = {
        "sas_max": (max_per_k, se_max),
        "sas_mean": (held_per_k, se_held),
        "sas_replaced": (np.abs(r).mean(axis=1), column(3)),
        "stability_gap": (g, column(2)),
        "stability_gap_removed": (r.mean(axis=1), column(0)),
        "stability_gap_added": (a.mean(axis=1), column(1)),
    }
    for name, (values, temporal) in stats.items():
        out[name] = _finite_or_none(values.mean())
        out[f"{name}_se"] = replica_standard_error(values, temporal)
        if k >= 2 and name in common and out[f"{name}_se"] is not None:
            out[f"{name}_se"] = math.hypot(out[f"{name}_se"], common[name])
    # sas_mean averages over replicas AND over the held-out points P_test, both random samples:
    # every replica sees the same points, so the spread between replicas misses which points were
    # drawn (the crossed two-way SE; benchmarks/calibration.py: the ratio SE / spread over seeds
    # went from 0.34-0.81 to 0.89-1.21). Its interval uses the Satterthwaite dof of that SE.
    crit_mean = crit
    crossed = crossed_mean_standard_error(np.abs(d[:, heldout])) if k >= 2 else None
    if crossed is not None and out["sas_mean"] is not None:
        crossed_se, crossed_dof = crossed
        out["sas_mean_se"] = math.hypot(crossed_se, common["sas_mean"])
        crit_mean = student_t_975(math.floor(crossed_dof) if math.isfinite(crossed_dof) else math.inf)
    out["sas_mean_critical_t"] = crit_mean
    if se is not None:
        out["sas_max_null"] = float(_rms(se[:, candidates]) * (_HALF_NORMAL_MEAN + math.sqrt(2.0 * math.log(max(len(candidates), 2)))))
        out["sas_mean_null"] = float(_rms(se[:, heldout]) * _HALF_NORMAL_MEAN)
        out["sas_replaced_null"] = float(_rms(se[:, removed]) * _HALF_NORMAL_MEAN)
    else:
        out["sas_max_null"] = out["sas_mean_null"] = out["sas_replaced_null"] = None
    for name in ("sas_max", "sas_mean", "sas_replaced"):
        value, err, null = out[name], out[f"{name}_se"], out[f"{name}_null"]
        t_name = crit_mean if name == "sas_mean" else crit
        out[f"{name}_lower"], out[f"{name}_upper"] = log_interval(value, err, t_name)
        out[f"{name}_resolved"] = bool(value is not None and err is not None and null is not None and value > null + t_name * err)
    # the signed gaps: Hall's skewness-corrected interval of a mean of the K per-replica values,
    # the skew from those same units (as the SE): a few hard samples make them right-skewed
    for name in ("stability_gap", "stability_gap_removed", "stability_gap_added"):
        values, _temporal = stats[name]
        gap, gap_se = out[name], out[f"{name}_se"]
        out[f"{name}_null"] = 0.0
        lower, upper = skew_corrected_interval(gap, gap_se, crit, third_cumulant_of_mean(values))
        out[f"{name}_lower"], out[f"{name}_upper"] = lower, upper
        out[f"{name}_resolved"] = bool(lower is not None and upper is not None and (lower > 0 or upper < 0))
    abs_g = np.abs(g[np.isfinite(g)])
    out["stability_gap_max_share"] = float(abs_g.max() / abs_g.sum()) if abs_g.size and abs_g.sum() > 0 else None
    out["sas_resolved"] = out["sas_max_resolved"]
    out["d_replaced"] = r.mean(axis=1)
    out["d_heldout_abs_mean"] = held_per_k
    out["abs_d"] = np.abs(d)
    return out


#: critical value of the measured gaps' intervals (``ergodic_gap``, ``control_heldout_gap``): 2, the
#: normal 95 % point rounded up, as for every SE that is not read against Student's t
GAP_CRITICAL_T = 2.0


def heldout_gap(
    block_means: np.ndarray,
    block_counts: np.ndarray,
    train_cols: np.ndarray,
    test_cols: np.ndarray,
    min_batch_len: float | None = None,
) -> dict[str, float | None]:
    r"""The ergodic generalization gap of per-point time averages, the one implementation behind
    the main model's ``ergodic_gap`` (:class:`~lightning_sas.metrics.ErgodicGap`) and the control
    replica's ``control_heldout_gap`` (the gap ``stability_gap`` estimates):

    .. math:: \mathrm{gap} = \frac{1}{|P_\mathrm{test}|}\sum_{z \in P_\mathrm{test}} \langle l(z)\rangle
              - \frac{1}{|T|}\sum_{z \in T} \langle l(z)\rangle ,

    ``T`` = ``train_cols``, ``P_test`` = ``test_cols``, from the block means ``block_means[b, c]``
    (NaN where block ``b`` has no finite value of point ``c``) with ``block_counts`` evaluations
    per block ``(B,)`` or per block and point ``(B, P)`` (:func:`time_average`). A point without a
    finite value is left out of its mean (``|T|`` and ``|P_test|`` count the others). SE:
    :func:`~lightning_sas.stats.batch_means.gap_standard_error` (batch means of the per-block gap,
    :func:`detrend`-ed, on blocks of the largest count of the block, merged into batches longer
    than ``min_batch_len`` evaluations when given; and the sampling of the probe points, in
    quadrature). ``gap_lower``/``gap_upper``: the 95 % interval with ``t`` =
    :data:`GAP_CRITICAL_T`, skewness-corrected
    (:func:`~lightning_sas.stats.intervals.skew_corrected_interval`; the third cumulant of the gap
    is :math:`\hat\kappa_{3,\mathrm{test}}/|P_\mathrm{test}|^2 - \hat\kappa_{3,T}/|T|^2` from
    the per-point time averages: a few hard held-out points make it right-skewed). Keys ``gap``,
    ``gap_se``, ``gap_lower``, ``gap_upper``, ``train_loss``, ``test_loss``; None without a finite
    point on either side."""
    full = np.asarray(block_means, dtype=np.float64)
    counts = np.asarray(block_counts, dtype=np.float64)
    train_cols, test_cols = np.asarray(train_cols, dtype=np.int64), np.asarray(test_cols, dtype=np.int64)
    empty: dict[str, float | None] = dict.fromkeys(("gap", "gap_se", "gap_lower", "gap_upper", "train_loss", "test_loss"))
    if full.ndim != 2 or full.shape[0] == 0 or counts.sum() <= 0:
        return empty
    avg = time_average(full[None], counts)[0]
    train_avg, test_avg = avg[train_cols], avg[test_cols]
    train_avg, test_avg = train_avg[np.isfinite(train_avg)], test_avg[np.isfinite(test_avg)]
    if not (train_avg.size and test_avg.size):
        return empty
    train, test = float(train_avg.mean()), float(test_avg.mean())
    with np.errstate(invalid="ignore"):
        block_gap = np.nanmean(full[:, test_cols], axis=1) - np.nanmean(full[:, train_cols], axis=1)
    rows = counts if counts.ndim == 1 else counts.max(axis=1)
    ok = np.isfinite(block_gap) & (rows > 0)
    drift_free = detrend(block_gap[ok][None, :], rows[ok])[0]  # a drift of the window is no noise
    temporal = batch_means_se_from_blocks(rows[ok], drift_free * rows[ok], min_batch_len=min_batch_len)
    se = gap_standard_error(temporal, train_avg, test_avg)
    # test minus train: the third cumulants of the two independent means subtract
    skew = third_cumulant_of_mean(test_avg) - third_cumulant_of_mean(train_avg)
    lower, upper = skew_corrected_interval(test - train, se, GAP_CRITICAL_T, skew)
    return {"gap": test - train, "gap_se": se, "gap_lower": lower, "gap_upper": upper, "train_loss": train,
            "test_loss": test}


#: statistics reported against the averaging window
WINDOW_STATISTICS = ("sas_max", "sas_mean", "sas_replaced", "stability_gap")


def estimate_by_window(
    perturbed: np.ndarray,
    control: np.ndarray,
    block_counts: np.ndarray,
    removed_cols: np.ndarray,
    added_cols: np.ndarray,
    heldout_cols: np.ndarray,
    block_steps: np.ndarray,
    fork_step: int,
) -> dict[str, Any]:
    """The estimate over the last 1/8, 1/4, 1/2 and all of the blocks (window doublings).

    Returns lists ``steps_since_fork`` (window start minus ``fork_step``), ``window_blocks`` and
    each statistic with its SE; ``converged`` is True when ``sas_max`` over the last two windows
    (half and all) agrees within twice their combined SE.
    """
    pert = np.asarray(perturbed, dtype=np.float64)
    ctrl = np.asarray(control, dtype=np.float64)
    b = pert.shape[1]
    out: dict[str, Any] = {"steps_since_fork": [], "window_blocks": []}
    for n in WINDOW_STATISTICS:
        out[n], out[f"{n}_se"] = [], []
    for fraction in (8, 4, 2, 1):
        n_blocks = max(2, b // fraction) if b >= 2 else b
        if n_blocks < 1 or (out["window_blocks"] and out["window_blocks"][-1] == n_blocks):
            continue
        sl = slice(b - n_blocks, b)
        stats = sas_statistics(pert[:, sl], ctrl[:, sl], np.asarray(block_counts)[sl], removed_cols, added_cols, heldout_cols)
        out["window_blocks"].append(n_blocks)
        out["steps_since_fork"].append(int(np.asarray(block_steps)[b - n_blocks]) - int(fork_step))
        for n in WINDOW_STATISTICS:
            out[n].append(stats[n])
            out[f"{n}_se"].append(stats[f"{n}_se"])
    converged = False
    if len(out["sas_max"]) >= 2:
        a, c = out["sas_max"][-2], out["sas_max"][-1]
        sa, sc = out["sas_max_se"][-2], out["sas_max_se"][-1]
        if None not in (a, c, sa, sc):
            converged = abs(a - c) <= 2.0 * math.sqrt(sa * sa + sc * sc)
    out["converged"] = bool(converged)
    out["t"] = student_t_975(pert.shape[0] - 1) if pert.shape[0] >= 2 else 2.0
    return out


def forgetting_curve(
    perturbed: np.ndarray, control: np.ndarray, block_steps: np.ndarray, removed_cols: np.ndarray, fork_step: int
) -> dict[str, Any]:
    """Loss of the removed samples over time since the fork: in the perturbed replicas that no
    longer train on them (``perturbed``, mean over replicas and their ``m`` removed samples) and in
    the control (``control``). A late fork whose replicas memorised them shows ``perturbed``
    staying near ``control``."""
    removed = np.asarray(removed_cols, dtype=np.int64)
    pert = np.asarray(perturbed, dtype=np.float64)[:, :, removed].mean(axis=(0, 2))
    ctrl = np.asarray(control, dtype=np.float64)[:, :, removed].mean(axis=(0, 2))
    return {
        "steps_since_fork": (np.asarray(block_steps, dtype=np.int64) - int(fork_step)).tolist(),
        "perturbed": pert.tolist(),
        "control": ctrl.tolist(),
    }


def _jackknife(values_by_pair: dict[tuple[int, int], float], n_runs: int) -> float | None:
    """Leave-one-run-out jackknife SE of the mean over pairs (None with fewer than 3 runs)."""
    if n_runs < 3:
        return None
    estimates = []
    for r in range(n_runs):
        kept = [v for (p, q), v in values_by_pair.items() if r not in (p, q)]
        if kept:
            estimates.append(float(np.mean(kept)))
    n = len(estimates)
    if n < 2:
        return None
    est = np.asarray(estimates)
    return float(math.sqrt((n - 1) / n * float(((est - est.mean()) ** 2).sum())))


def paper_coefficient(run_test_means: np.ndarray, pairs: Sequence[tuple[int, int]]) -> tuple[float, float | None]:
    """The authors' "statistical stability coefficient": mean over neighbouring ``pairs`` of
    ``|a_p - a_q|``, ``a_r`` = run ``r``'s time-averaged *mean* test loss; jackknife SE over runs."""
    a = np.asarray(run_test_means, dtype=np.float64)
    if not pairs:
        raise ValueError("paper_coefficient needs at least one pair of runs")
    values = {(int(p), int(q)): abs(float(a[p] - a[q])) for p, q in pairs}
    return float(np.mean(list(values.values()))), _jackknife(values, len(a))


def mean_pairwise_abs_difference(per_point_means: np.ndarray, pairs: Sequence[tuple[int, int]]) -> tuple[float, float | None]:
    """Mean over ``pairs`` and probe points of ``|<l_p(z)> - <l_q(z)>|`` (a per-point statistic,
    distinct from :func:`paper_coefficient`); jackknife SE over runs."""
    m = np.asarray(per_point_means, dtype=np.float64)
    if not pairs:
        raise ValueError("mean_pairwise_abs_difference needs at least one pair of runs")
    values = {(int(p), int(q)): float(np.nanmean(np.abs(m[p] - m[q]))) for p, q in pairs}
    return float(np.mean(list(values.values()))), _jackknife(values, len(m))


def least_squares_sas(
    X: np.ndarray, y: np.ndarray, X_perturbed: np.ndarray, y_perturbed: np.ndarray, X_probe: np.ndarray, y_probe: np.ndarray
) -> np.ndarray:
    r"""Closed-form ``d(z)`` for least squares: with :math:`w = \arg\min \|Xw - y\|^2` on each
    dataset and the loss :math:`l(w, (x, y)) = \tfrac12 (x^\top w - y)^2`, returns
    :math:`l(w', z) - l(w, z)` per probe point. Small-step SGD's time-averaged loss approaches
    :math:`l(\bar w)` plus an O(step) covariance term, so this is the SAS limit."""
    w = np.linalg.lstsq(X, y, rcond=None)[0]
    w_p = np.linalg.lstsq(X_perturbed, y_perturbed, rcond=None)[0]
    return 0.5 * (X_probe @ w_p - y_probe) ** 2 - 0.5 * (X_probe @ w - y_probe) ** 2
