r"""Statistical algorithmic stability (SAS) from replica time averages (pure numpy, float64).

Chandramoorthy, Loukas, Gatmiry and Jegelka, "On the generalization of learning algorithms that
do not converge", NeurIPS 2022 (arXiv 2208.07951). With replica 0 the control (trained on ``S``)
and replica ``k`` trained on ``S^(k)`` (sample ``i_k`` replaced by ``z'_k``), and time averages
:math:`\langle l_r(z) \rangle` over the late phase,

.. math:: d_k(z) = \langle l_k(z)\rangle - \langle l_0(z)\rangle .

Inputs are block means ``m[r, b, z]`` (``R`` replicas, ``B`` contiguous time blocks of ``c_b``
probe evaluations each, ``P`` probe points), so the time average is
:math:`\langle l_r(z)\rangle = \sum_b c_b m[r,b,z] / \sum_b c_b` and the difference series
``D[k, b, z] = m[k, b, z] - m[0, b, z]`` gives temporal standard errors by batch means.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

__all__ = [
    "sas_statistics",
    "estimate_by_window",
    "forgetting_curve",
    "paper_coefficient",
    "mean_pairwise_abs_difference",
    "least_squares_sas",
    "time_average",
    "student_t_975",
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
    z = 1.959963984540054
    if not math.isfinite(dof) or dof < 1:
        return z
    if dof <= 30 and float(dof).is_integer():
        return _T_975[int(dof) - 1]
    nu = float(dof)
    return z + (z**3 + z) / (4 * nu) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * nu**2)


def time_average(means: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Count-weighted average over axis 1 (blocks), ignoring NaN blocks: ``(R, B, P) -> (R, P)``."""
    w = np.where(np.isfinite(means), counts[None, :, None], 0.0)
    total = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        avg = np.where(total > 0, np.nansum(means * w, axis=1) / np.where(total > 0, total, 1.0), np.nan)
    return avg


def _batch_edges(counts: np.ndarray, min_batch_len: float | None) -> list[tuple[int, int]]:
    """Contiguous groups of blocks, about ``sqrt(B)`` of them (at least 2 when possible), each
    holding at least ``min_batch_len`` evaluations when given."""
    n_blocks = len(counts)
    if n_blocks < 2:
        return []
    n_batches = max(2, int(math.isqrt(n_blocks)))
    total = float(counts.sum())
    if min_batch_len:
        n_batches = max(2, min(n_batches, int(total // max(min_batch_len, 1e-12))))
    n_batches = min(n_batches, n_blocks)
    cum = np.concatenate([[0.0], np.cumsum(counts)])
    targets = np.linspace(0.0, total, n_batches + 1)
    cuts = sorted(set(int(np.searchsorted(cum, t, side="left")) for t in targets[1:-1]) - {0, n_blocks})
    edges = [0, *cuts, n_blocks]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def _temporal_se(series: np.ndarray, counts: np.ndarray, min_batch_len: float | None) -> np.ndarray | None:
    """Batch-means SE of the count-weighted time average of ``series[..., b, ...]`` along axis 1.

    ``SE^2 = sum_j C_j (M_j - M)^2 / ((J - 1) N)`` over batches ``j`` of ``C_j`` evaluations with
    means ``M_j`` (reduces to ``sd(batch means)/sqrt(J)`` for equal batches). None if ``J < 2``.
    """
    edges = _batch_edges(counts, min_batch_len)
    if len(edges) < 2:
        return None
    batch_means, batch_counts = [], []
    for a, b in edges:
        c = counts[a:b]
        batch_counts.append(c.sum())
        batch_means.append(np.nansum(series[:, a:b] * c[None, :, None], axis=1) / max(c.sum(), 1e-300))
    means = np.stack(batch_means, axis=1)
    cj = np.asarray(batch_counts)[None, :, None]
    n = cj.sum()
    overall = (means * cj).sum(axis=1, keepdims=True) / n
    var = ((means - overall) ** 2 * cj).sum(axis=1) / ((len(edges) - 1) * n)
    return np.sqrt(var)


def _combine(values: np.ndarray, temporal: np.ndarray | None) -> float | None:
    """SE of ``mean_k values_k``: spread between replicas (``sd / sqrt(K)``) and temporal noise
    (``sqrt(mean_k s_k^2 / K)``) added in quadrature; None when neither is available."""
    k = len(values)
    parts = []
    if k >= 2:
        parts.append(float(np.std(values, ddof=1)) / math.sqrt(k))
    if temporal is not None and np.all(np.isfinite(temporal)):
        parts.append(math.sqrt(float(np.mean(temporal**2)) / k))
    if not parts:
        return None
    return math.sqrt(sum(p * p for p in parts))


def _finite_or_none(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def sas_statistics(
    block_means: np.ndarray,
    block_counts: np.ndarray,
    replaced_cols: np.ndarray,
    replacement_cols: np.ndarray,
    heldout_cols: np.ndarray,
    min_batch_len: float | None = None,
) -> dict[str, Any]:
    r"""The SAS statistics of DESIGN section 4, each with ``_se``, ``_null`` and ``_resolved``.

    * ``sas_max`` = :math:`\frac1K\sum_k \max_{z \in \{i_k, z'_k\} \cup P_\mathrm{test}} |d_k(z)|`;
    * ``sas_mean`` = :math:`\frac1K\sum_k \frac1{|P_\mathrm{test}|}\sum_{z} |d_k(z)|` (held-out);
    * ``sas_replaced`` = :math:`\frac1K\sum_k |d_k(i_k)|`; ``stability_gap`` = :math:`\frac1K\sum_k d_k(i_k)`.

    SE: between-replica spread and temporal batch means of ``D`` in quadrature (``_combine``).
    The statistics average over K random pairs ``(i_k, z'_k)``, so their uncertainty is that of a
    K-sample mean: the critical value is Student's :math:`t_{0.975, K-1}` (``sas_critical_t``;
    3.18 for K = 4, 2.20 for K = 12), not 2. Null level (no effect at all): a mean of ``|d|`` with
    per-point SE ``s`` sits near :math:`\sqrt{2/\pi}\,s`, and a max over ``m`` points adds about
    :math:`s\sqrt{2\ln m}`; ``*_resolved`` means ``estimate > null + t SE`` (``|gap| > t SE`` for
    the signed gap).

    ``d_k(i_k)`` is heavy-tailed (a replaced sample with a noisy label moves by several nats, a
    clean one by almost nothing), so a mean over few replicas can rest on one of them:
    ``stability_gap_max_share`` = :math:`\max_k |d_k(i_k)| / \sum_k |d_k(i_k)|` says how much
    (``1/K`` when all contribute alike, near 1 when one replica carries the estimate and its SE
    from K samples is not to be trusted; raise K).
    """
    means = np.asarray(block_means, dtype=np.float64)
    counts = np.asarray(block_counts, dtype=np.float64)
    replaced = np.asarray(replaced_cols, dtype=np.int64)
    replacement = np.asarray(replacement_cols, dtype=np.int64)
    heldout = np.asarray(heldout_cols, dtype=np.int64)
    r, b, _p = means.shape
    k = r - 1
    if k < 1 or b < 1:
        raise ValueError(f"need a control and >= 1 perturbed replica and >= 1 block, got shape {means.shape}")
    avg = time_average(means, counts)
    d = avg[1:] - avg[0:1]  # (K, P)
    diff_series = means[1:] - means[0:1]  # (K, B, P)
    se = _temporal_se(diff_series, counts, min_batch_len)  # (K, P) or None
    rows = np.arange(k)

    d_rep = d[rows, replaced]
    se_rep = se[rows, replaced] if se is not None else None
    abs_held = np.abs(d[:, heldout])
    held_per_k = abs_held.mean(axis=1)
    se_held = se[:, heldout].mean(axis=1) if se is not None else None
    candidates = [np.concatenate([[replaced[j], replacement[j]], heldout]) for j in range(k)]
    max_per_k = np.asarray([np.abs(d[j, c]).max() for j, c in enumerate(candidates)])
    se_max = (np.asarray([se[j, c][np.argmax(np.abs(d[j, c]))] for j, c in enumerate(candidates)])
              if se is not None else None)
    se_max_mean = np.asarray([se[j, c].mean() for j, c in enumerate(candidates)]) if se is not None else None

    crit = student_t_975(k - 1) if k >= 2 else 2.0
    out: dict[str, Any] = {"n_replicas": k, "n_blocks": b, "sas_critical_t": crit}
    stats = {
        "sas_max": (max_per_k, se_max),
        "sas_mean": (held_per_k, se_held),
        "sas_replaced": (np.abs(d_rep), se_rep),
        "stability_gap": (d_rep, se_rep),
    }
    for name, (values, temporal) in stats.items():
        out[name] = _finite_or_none(values.mean())
        out[f"{name}_se"] = _combine(values, temporal)
    if se is not None:
        m = len(candidates[0])
        out["sas_max_null"] = float(np.mean(se_max_mean) * (_HALF_NORMAL_MEAN + math.sqrt(2.0 * math.log(max(m, 2)))))
        out["sas_mean_null"] = float(np.mean(se_held) * _HALF_NORMAL_MEAN)
        out["sas_replaced_null"] = float(np.mean(se_rep) * _HALF_NORMAL_MEAN)
    else:
        out["sas_max_null"] = out["sas_mean_null"] = out["sas_replaced_null"] = None
    for name in ("sas_max", "sas_mean", "sas_replaced"):
        value, err, null = out[name], out[f"{name}_se"], out[f"{name}_null"]
        out[f"{name}_resolved"] = bool(value is not None and err is not None and null is not None and value > null + crit * err)
    gap, gap_se = out["stability_gap"], out["stability_gap_se"]
    out["stability_gap_null"] = 0.0
    out["stability_gap_resolved"] = bool(gap is not None and gap_se is not None and abs(gap) > crit * gap_se)
    abs_rep = np.abs(d_rep[np.isfinite(d_rep)])
    out["stability_gap_max_share"] = float(abs_rep.max() / abs_rep.sum()) if abs_rep.size and abs_rep.sum() > 0 else None
    out["sas_resolved"] = out["sas_max_resolved"]
    out["d_replaced"] = d_rep
    out["d_heldout_abs_mean"] = held_per_k
    out["abs_d"] = np.abs(d)
    return out


def estimate_by_window(
    block_means: np.ndarray,
    block_counts: np.ndarray,
    replaced_cols: np.ndarray,
    replacement_cols: np.ndarray,
    heldout_cols: np.ndarray,
    block_steps: np.ndarray,
    fork_step: int,
) -> dict[str, Any]:
    """The estimate over the last 1/8, 1/4, 1/2 and all of the blocks (window doublings).

    Returns lists ``steps_since_fork`` (window start minus ``fork_step``), ``window_blocks`` and
    each statistic with its SE; ``converged`` is True when ``sas_max`` over the last two windows
    (half and all) agrees within twice their combined SE.
    """
    means = np.asarray(block_means, dtype=np.float64)
    b = means.shape[1]
    out: dict[str, Any] = {"steps_since_fork": [], "window_blocks": []}
    names = ("sas_max", "sas_mean", "sas_replaced", "stability_gap")
    for n in names:
        out[n], out[f"{n}_se"] = [], []
    for fraction in (8, 4, 2, 1):
        n_blocks = max(2, b // fraction) if b >= 2 else b
        if n_blocks < 1 or (out["window_blocks"] and out["window_blocks"][-1] == n_blocks):
            continue
        sl = slice(b - n_blocks, b)
        stats = sas_statistics(means[:, sl], np.asarray(block_counts)[sl], replaced_cols, replacement_cols, heldout_cols)
        out["window_blocks"].append(n_blocks)
        out["steps_since_fork"].append(int(np.asarray(block_steps)[b - n_blocks]) - int(fork_step))
        for n in names:
            out[n].append(stats[n])
            out[f"{n}_se"].append(stats[f"{n}_se"])
    converged = False
    if len(out["sas_max"]) >= 2:
        a, c = out["sas_max"][-2], out["sas_max"][-1]
        sa, sc = out["sas_max_se"][-2], out["sas_max_se"][-1]
        if None not in (a, c, sa, sc):
            converged = abs(a - c) <= 2.0 * math.sqrt(sa * sa + sc * sc)
    out["converged"] = bool(converged)
    return out


def forgetting_curve(
    block_means: np.ndarray, block_steps: np.ndarray, replaced_cols: np.ndarray, fork_step: int
) -> dict[str, Any]:
    """Loss of the replaced samples ``i_k`` over time since the fork: in the perturbed replicas
    that no longer train on them (``perturbed``, mean over k) and in the control (``control``).
    A late fork whose replicas memorised ``i_k`` shows ``perturbed`` staying near ``control``."""
    means = np.asarray(block_means, dtype=np.float64)
    replaced = np.asarray(replaced_cols, dtype=np.int64)
    k = means.shape[0] - 1
    perturbed = np.stack([means[1 + j, :, replaced[j]] for j in range(k)]).mean(axis=0)
    control = means[0][:, replaced].mean(axis=1)
    return {
        "steps_since_fork": (np.asarray(block_steps, dtype=np.int64) - int(fork_step)).tolist(),
        "perturbed": perturbed.tolist(),
        "control": control.tolist(),
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
