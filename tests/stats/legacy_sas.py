"""Today's SAS estimator (v0.1, one replaced sample per replica), frozen verbatim from
``lightning_sas/stats/sas.py`` before the swap estimator replaced it: ``swaps=1`` must reproduce
it to floating-point agreement (``tests/stats/test_stats_swaps.py``)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lightning_sas.stats.sas import student_t_975, time_average

_HALF_NORMAL_MEAN = math.sqrt(2.0 / math.pi)

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
    r"""The SAS statistics (docs: Statistics, "SAS"), each with ``_se``, ``_null`` and ``_resolved``.

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


