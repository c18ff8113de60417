"""SAS statistics with m swaps per replica (``lightning_sas.stats.sas``) against numpy brute
force, under the null, with a known effect, and against the frozen one-replacement estimator."""

from __future__ import annotations

import math

import numpy as np
import pytest

from legacy_sas import sas_statistics as legacy_sas_statistics
from lightning_sas.data.probes import SwapLayout
from lightning_sas.stats.sas import crossed_mean_standard_error, sas_statistics, student_t_975, time_average

K, B, M, H = 4, 16, 2, 5  # replicas, blocks, swaps per replica, held-out points
HELDOUT = np.arange(H)
REMOVED = H + np.arange(M)
ADDED = H + M + np.arange(M)
P = H + 2 * M


def _series(rng: np.random.Generator, effect: np.ndarray | None = None, noise: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Aligned block means ``(K, B, P)`` of the replicas and of the control at their points: a
    per-point level (the held-out points shared by every replica, the swapped points each
    replica's own), independent noise per replica and block, plus ``effect[k, c]`` added to
    replica ``k``."""
    level = rng.uniform(0.5, 2.0, size=(K, P))
    level[:, HELDOUT] = level[0, HELDOUT]
    control = level[:, None, :] + noise * rng.standard_normal((K, B, P))
    control[:, :, HELDOUT] = control[0:1, :, HELDOUT]  # one control trajectory on the shared points
    perturbed = level[:, None, :] + noise * rng.standard_normal((K, B, P))
    if effect is not None:
        perturbed += effect[:, None, :]
    return perturbed, control


def _batch_se(series: np.ndarray) -> np.ndarray:
    """Batch-means SE over axis 1 with 8 batches of 2 equal blocks (what B = 16 gives: the rule
    of every batch-means SE, max(floor(sqrt(16)), 8) batches)."""
    batch = series.reshape(series.shape[0], 8, 2, *series.shape[2:]).mean(axis=2)
    return batch.std(axis=1, ddof=1) / math.sqrt(8)


def _drift_free(series: np.ndarray) -> np.ndarray:
    """``series`` (equal counts) minus its least-squares line in time, its mean kept."""
    t = np.arange(len(series), dtype=float)
    return series - np.polyfit(t, series, 1)[0] * (t - t.mean())


def test_statistics_equal_brute_force() -> None:
    rng = np.random.default_rng(0)
    perturbed, control = _series(rng, rng.normal(0.0, 0.5, size=(K, P)))
    counts = np.full(B, 5.0)
    out = sas_statistics(perturbed, control, counts, REMOVED, ADDED, HELDOUT)

    d = perturbed.mean(axis=1) - control.mean(axis=1)  # equal counts: plain means over blocks
    cand = np.r_[REMOVED, ADDED, HELDOUT]
    assert out["sas_max"] == pytest.approx(np.abs(d[:, cand]).max(axis=1).mean(), rel=1e-12)
    assert out["sas_mean"] == pytest.approx(np.abs(d[:, HELDOUT]).mean(), rel=1e-12)
    assert out["sas_replaced"] == pytest.approx(np.abs(d[:, REMOVED]).mean(), rel=1e-12)
    r, a = d[:, REMOVED], -d[:, ADDED]
    g = np.concatenate([r, a], axis=1).mean(axis=1)  # each replica: the mean of its 2m values
    assert out["stability_gap_removed"] == pytest.approx(r.mean(), rel=1e-12)
    assert out["stability_gap_added"] == pytest.approx(a.mean(), rel=1e-12)
    assert out["stability_gap"] == pytest.approx(g.mean(), rel=1e-12)
    assert out["stability_gap_max_share"] == pytest.approx(np.abs(g).max() / np.abs(g).sum(), rel=1e-12)
    assert out["swaps"] == M

    # SE: the spread of the K per-replica values alone (it already holds their temporal noise)
    assert out["stability_gap_se"] == pytest.approx(g.std(ddof=1) / math.sqrt(K), rel=1e-10)
    assert out["stability_gap_removed_se"] == pytest.approx(r.mean(axis=1).std(ddof=1) / math.sqrt(K), rel=1e-10)
    # sas_mean and sas_max: plus the control's noise on the shared points, which moves every
    # replica's |d| alike (delta method: weights sign(d_k(z)) / (K |P_test|) on the control's
    # series, its drift removed)
    shared = control[0][:, HELDOUT]  # (B, H)
    w_mean = np.sign(d[:, HELDOUT]).mean(axis=0) / H
    common_mean = float(_batch_se(_drift_free(shared @ w_mean)[None, :])[0])
    assert common_mean > 0
    # sas_mean averages over replicas and over the shared held-out points: the crossed two-way SE
    # (ANOVA mean squares of the K x H table of |d|, each variance component truncated at 0)
    table = np.abs(d[:, HELDOUT])
    rows, cols, grand = table.mean(axis=1), table.mean(axis=0), table.mean()
    ms_r = H * np.sum((rows - grand) ** 2) / (K - 1)
    ms_c = K * np.sum((cols - grand) ** 2) / (H - 1)
    ms_e = np.sum((table - rows[:, None] - cols[None, :] + grand) ** 2) / ((K - 1) * (H - 1))
    crossed_var = max(ms_r - ms_e, 0) / (H * K) + max(ms_c - ms_e, 0) / (K * H) + ms_e / (K * H)
    assert out["sas_mean_se"] == pytest.approx(math.hypot(math.sqrt(crossed_var), common_mean), rel=1e-10)
    assert out["sas_mean_critical_t"] > out["sas_critical_t"] or out["sas_mean_critical_t"] >= 1.96
    w_max = np.zeros(H)
    for k in range(K):
        z = cand[np.argmax(np.abs(d[k, cand]))]
        if z in HELDOUT:
            w_max[list(HELDOUT).index(z)] += np.sign(d[k, z]) / K
    common_max = float(_batch_se(_drift_free(shared @ w_max)[None, :])[0]) if w_max.any() else 0.0
    spread_max = np.abs(d[:, cand]).max(axis=1).std(ddof=1) / math.sqrt(K)
    assert out["sas_max_se"] == pytest.approx(math.hypot(spread_max, common_max), rel=1e-10)
    # null levels: the root mean square of the per-point batch-means SEs
    diff = perturbed - control
    per_point = _batch_se(diff)  # (K, P)
    null = math.sqrt(np.mean(per_point[:, cand] ** 2)) * (math.sqrt(2 / math.pi) + math.sqrt(2 * math.log(len(cand))))
    assert out["sas_max_null"] == pytest.approx(null, rel=1e-10)
    assert out["sas_mean_null"] == pytest.approx(math.sqrt(np.mean(per_point[:, HELDOUT] ** 2)) * math.sqrt(2 / math.pi),
                                                 rel=1e-10)
    assert out["sas_critical_t"] == pytest.approx(3.1824, abs=1e-4)
    assert np.allclose(time_average(perturbed, counts), perturbed.mean(axis=1))


def test_one_swap_reproduces_the_one_replacement_estimator() -> None:
    """``m = 1``: every statistic of v0.1 (frozen in ``legacy_sas.py``) to floating-point
    agreement; v0.1's ``stability_gap`` (the removed side alone) is ``stability_gap_removed``."""
    rng = np.random.default_rng(5)
    n_train, n_held = 3, 6
    # v0.1 layout: (K + 1, B, P) with P = [train (i_k included)..., replacements z'_k..., held-out...]
    p_old = n_train + K + K + n_held
    means = rng.uniform(0.5, 2.0, size=p_old)[None, None, :] + 0.2 * rng.standard_normal((K + 1, B, p_old))
    means[1:] += rng.normal(0.0, 0.3, size=(K, 1, p_old))
    replaced_old = n_train + np.arange(K)  # the i_k sit after the other training points
    replacement_old = n_train + K + np.arange(K)
    heldout_old = n_train + 2 * K + np.arange(n_held)
    counts = rng.integers(1, 6, size=B).astype(float)
    legacy = legacy_sas_statistics(means, counts, replaced_old, replacement_old, heldout_old)

    # the same probe values in the swap layout (K replicas, m = 1)
    layout = SwapLayout(replicas=K, n_train=n_train, n_heldout=n_held, m=1)
    flat = np.zeros((B, layout.total))
    shared_old = np.r_[np.arange(n_train), heldout_old]
    for row in range(K + 1):
        start = layout.segment_start(row)
        flat[:, start : start + layout.shared] = means[row][:, shared_old]
        if row == 0:
            swaps = np.stack([replaced_old, replacement_old], axis=1).reshape(-1)  # (i_1, z'_1, i_2, z'_2, ...)
            flat[:, start + layout.shared : start + layout.segment_length(0)] = means[0][:, swaps]
        else:
            own = [replaced_old[row - 1], replacement_old[row - 1]]
            flat[:, start + layout.shared : start + layout.segment_length(row)] = means[row][:, own]
    perturbed, control, _ = layout.aligned(flat)
    new = sas_statistics(np.moveaxis(perturbed, 0, 1), np.moveaxis(control, 0, 1), counts,
                         layout.removed_columns, layout.added_columns, layout.heldout_columns)
    # the estimates are v0.1's; the SEs are no longer (v0.1 added the temporal SE to the spread
    # between replicas, counting the temporal noise twice), nor the null levels (now from the
    # root mean square of the per-point SEs): both are checked against brute force above
    for key in ("sas_max", "sas_mean", "sas_replaced", "sas_critical_t"):
        assert new[key] == pytest.approx(legacy[key], rel=1e-12, abs=1e-15), key
    assert new["stability_gap_removed"] == pytest.approx(legacy["stability_gap"], rel=1e-12)
    assert new["stability_gap_removed_se"] == pytest.approx(np.std(legacy["d_replaced"], ddof=1) / math.sqrt(K), rel=1e-12)
    assert new["stability_gap_removed_se"] < legacy["stability_gap_se"]  # v0.1's double count
    np.testing.assert_allclose(new["d_replaced"], legacy["d_replaced"], rtol=1e-12)


def test_no_effect_is_resolved_at_the_nominal_rate() -> None:
    """Under the null (all replicas alike) the signed gaps' flags (their skewness-corrected interval
    excludes 0; about ``|gap| > t_{K-1} SE`` for symmetric noise) fire at their nominal 5 %: not more (a false alarm) and not far less (an SE that double counts the
    temporal noise fired 0.15 % of the time, with sd(gap / SE) = 0.77). The flags of the means
    of ``|d|`` are read against approximate null levels (the max's is a conservative bound): they
    must not fire more than nominal."""
    rng = np.random.default_rng(2)
    trials = 2000
    keys = ("stability_gap_resolved", "stability_gap_removed_resolved", "stability_gap_added_resolved",
            "sas_max_resolved", "sas_mean_resolved", "sas_replaced_resolved")
    hits = dict.fromkeys(keys, 0)
    ratios = []
    for _ in range(trials):
        out = sas_statistics(*_series(rng), np.full(B, 5.0), REMOVED, ADDED, HELDOUT)
        for key in hits:
            hits[key] += out[key]
        ratios.append(out["stability_gap"] / out["stability_gap_se"])
    rates = {key: count / trials for key, count in hits.items()}
    for key in keys[:3]:  # 5 % +- 3 binomial sd (0.5 %)
        assert 0.035 <= rates[key] <= 0.065, rates
    for key in keys[3:]:
        assert rates[key] <= 0.08, rates
    # gap / SE follows Student's t with K - 1 = 3 dof, whose sd is sqrt(3)
    assert 1.4 <= float(np.std(ratios)) <= 2.1


def test_detrend_removes_a_drift_and_keeps_the_mean() -> None:
    """A drift inside the window is not noise: the series minus its count-weighted least-squares
    line, plus its mean. A straight line becomes constant; the weighted mean never changes."""
    from lightning_sas.stats.sas import detrend

    rng = np.random.default_rng(11)
    counts = rng.integers(1, 5, size=20).astype(float)
    t = np.cumsum(counts) - 0.5 * counts
    line = (2.0 + 0.3 * t)[None, :, None]
    flat = detrend(line, counts)
    mean = np.average(line[0, :, 0], weights=counts)
    np.testing.assert_allclose(flat[0, :, 0], mean, rtol=1e-12)
    noisy = line + rng.standard_normal(line.shape)
    out = detrend(noisy, counts)
    assert np.average(out[0, :, 0], weights=counts) == pytest.approx(np.average(noisy[0, :, 0], weights=counts), rel=1e-12)
    slope = np.polyfit(t, out[0, :, 0], 1, w=np.sqrt(counts))[0]
    assert abs(slope) < 1e-10


def test_one_replica_uses_the_temporal_standard_error() -> None:
    """K = 1: no spread between replicas, so the SE is the replica's batch-means SE."""
    rng = np.random.default_rng(8)
    perturbed, control = _series(rng)
    out = sas_statistics(perturbed[:1], control[:1], np.full(B, 5.0), REMOVED, ADDED, HELDOUT)
    diff = perturbed[:1] - control[:1]
    series = 0.5 * (diff[:, :, REMOVED].mean(axis=2) - diff[:, :, ADDED].mean(axis=2))
    assert out["stability_gap_se"] == pytest.approx(float(_batch_se(series)[0]), rel=1e-10)
    assert out["sas_critical_t"] == 2.0


def test_heldout_gap_equals_brute_force() -> None:
    """``control_heldout_gap``: the control's time-averaged loss on P_test minus on its training
    points, SE = batch means of the per-block gap and the sampling of the points in quadrature."""
    from lightning_sas.stats.sas import heldout_gap

    rng = np.random.default_rng(9)
    n_blocks, train_cols, test_cols = 16, np.arange(6), np.arange(6, 11)
    full = rng.uniform(0.2, 1.0, size=(n_blocks, 11)) + 0.05 * rng.standard_normal((n_blocks, 11))
    full[:, test_cols] += 0.5
    counts = np.full(n_blocks, 3.0)
    out = heldout_gap(full, counts, train_cols, test_cols)
    avg = full.mean(axis=0)
    assert out["gap"] == pytest.approx(avg[test_cols].mean() - avg[train_cols].mean(), rel=1e-12)
    block_gap = full[:, test_cols].mean(axis=1) - full[:, train_cols].mean(axis=1)
    t = np.arange(n_blocks, dtype=float)
    slope, intercept = np.polyfit(t, block_gap, 1)
    drift_free = block_gap - slope * (t - t.mean())  # its least-squares line removed, its mean kept
    temporal = drift_free.reshape(8, 2).mean(axis=1).std(ddof=1) / math.sqrt(8)  # B = max(sqrt(16), 8) batches
    sampling = avg[test_cols].var(ddof=1) / 5 + avg[train_cols].var(ddof=1) / 6
    assert out["gap_se"] == pytest.approx(math.sqrt(temporal**2 + sampling), rel=1e-10)
    assert heldout_gap(full[:0], counts[:0], train_cols, test_cols)["gap"] is None


def test_both_sides_of_a_swap_estimate_the_gap() -> None:
    """A generalization effect: a replica's loss rises on the samples it lost and falls on the
    samples it gained. Both sides and their symmetric mean resolve it."""
    rng = np.random.default_rng(3)
    effect = np.zeros((K, P))
    effect[:, REMOVED] = rng.uniform(1.0, 2.0, size=(K, M))
    effect[:, ADDED] = -rng.uniform(1.0, 2.0, size=(K, M))
    out = sas_statistics(*_series(rng, effect), np.full(B, 5.0), REMOVED, ADDED, HELDOUT)
    for name in ("stability_gap", "stability_gap_removed", "stability_gap_added"):
        assert out[f"{name}_resolved"] and out[name] > 0.9, name
    assert out["sas_max_resolved"] and out["sas_replaced_resolved"]


def test_identical_added_and_removed_points_cancel() -> None:
    """A swap of a sample for an identical one: the replica's loss change on it is ``r`` on the
    removed side and ``-r`` on the added side, so the symmetric gap is 0 and not resolved."""
    rng = np.random.default_rng(6)
    perturbed, control = _series(rng, rng.normal(0.0, 0.5, size=(K, P)))
    perturbed[:, :, ADDED] = perturbed[:, :, REMOVED]
    control[:, :, ADDED] = control[:, :, REMOVED]
    out = sas_statistics(perturbed, control, np.full(B, 5.0), REMOVED, ADDED, HELDOUT)
    assert out["stability_gap"] == pytest.approx(0.0, abs=1e-12) and not out["stability_gap_resolved"]
    assert out["stability_gap_removed"] == pytest.approx(-out["stability_gap_added"], rel=1e-12)


def test_one_dominant_replica_is_flagged() -> None:
    rng = np.random.default_rng(4)
    effect = np.zeros((K, P))
    effect[0, REMOVED] = 8.0  # one noisy-label sample carries the whole estimate
    out = sas_statistics(*_series(rng, effect, noise=0.01), np.full(B, 5.0), REMOVED, ADDED, HELDOUT)
    assert out["stability_gap_max_share"] > 0.9
    assert not out["stability_gap_resolved"]  # t_{3} * SE of a 4-sample mean with one outlier


def test_nan_blocks_are_ignored_by_the_time_average() -> None:
    rng = np.random.default_rng(1)
    means, _ = _series(rng)
    means[2, 3, 5] = np.nan
    counts = np.arange(1.0, B + 1)
    avg = time_average(means, counts)
    keep = np.ones(B, dtype=bool)
    keep[3] = False
    assert avg[2, 5] == pytest.approx(np.average(means[2, keep, 5], weights=counts[keep]), rel=1e-12)
    assert avg[1, 5] == pytest.approx(np.average(means[1, :, 5], weights=counts), rel=1e-12)


@pytest.mark.parametrize("dof", [1, 3, 11, 30, 31, 60, 500])
def test_student_t_quantile(dof: int) -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    assert student_t_975(dof) == pytest.approx(scipy_stats.t.ppf(0.975, dof), abs=1e-4)


def test_shapes_are_checked() -> None:
    with pytest.raises(ValueError):
        sas_statistics(np.zeros((1, 4, P)), np.zeros((1, 4, P)), np.ones(4), REMOVED[:0], ADDED[:0], HELDOUT)
    with pytest.raises(ValueError):
        sas_statistics(np.zeros((2, 4, P)), np.zeros((1, 4, P)), np.ones(4), REMOVED, ADDED, HELDOUT)


def test_layout_positions_and_alignment() -> None:
    layout = SwapLayout(replicas=3, n_train=2, n_heldout=3, m=2)
    assert layout.total == 4 * 5 + 4 * 2 * 3
    assert layout.segment_length(0) == 5 + 12 and layout.segment_start(2) == 17 + 9
    flat = np.arange(layout.total, dtype=float)
    perturbed, control, full = layout.aligned(flat)
    assert perturbed.shape == control.shape == (3, 9)
    np.testing.assert_array_equal(control[1, :5], flat[:5])  # shared points: the control's own
    np.testing.assert_array_equal(control[1, 5:], flat[5 + 4 : 5 + 8])  # replica 2's swaps in the control
    np.testing.assert_array_equal(perturbed[1], flat[26:35])
    np.testing.assert_array_equal(layout.positions([2, 0]), np.r_[26:35, 0:17])


@pytest.mark.parametrize("rows_sd,cols_sd", [(1.0, 0.0), (0.0, 1.0), (0.5, 0.5), (0.0, 0.0)])
def test_crossed_standard_error_matches_the_spread_of_the_grand_mean(rows_sd: float, cols_sd: float) -> None:
    """A K x P table with random row effects, random column effects and noise: over many tables
    the SE matches the true standard deviation of the grand mean, and ``mean ± t(Satterthwaite) SE``
    holds the true mean about 95 % of the time. The spread of the row means alone (what the SE
    was before) misses the column part. With no row or column effect at all, truncating the
    variance components at 0 makes the SE conservative (up to about 1.25 times)."""
    rng = np.random.default_rng(11)
    k, p, noise, n = 4, 40, 0.5, 3000
    true_var = rows_sd**2 / k + cols_sd**2 / p + noise**2 / (k * p)
    tables = (rows_sd * rng.standard_normal((n, k, 1)) + cols_sd * rng.standard_normal((n, 1, p))
              + noise * rng.standard_normal((n, k, p)))
    results = [crossed_mean_standard_error(x) for x in tables]
    se = np.array([r[0] for r in results])
    t = np.array([student_t_975(math.floor(r[1])) for r in results])
    grand = tables.mean(axis=(1, 2))
    ratio = np.sqrt(np.mean(se**2)) / math.sqrt(true_var)
    coverage = np.mean(np.abs(grand) <= t * se)
    if rows_sd == cols_sd == 0:
        assert 1.0 <= ratio <= 1.25 and 0.95 <= coverage <= 0.999, (ratio, coverage)
    else:
        assert ratio == pytest.approx(1.0, abs=0.1)
        assert 0.92 <= coverage <= 0.99, coverage
    if cols_sd > 0 and rows_sd == 0:
        rows_only = tables.mean(axis=2).std(axis=1, ddof=1) / math.sqrt(k)
        assert np.mean(np.abs(grand) <= 3.18 * rows_only) < 0.85  # the old SE under-covers


def test_crossed_standard_error_refuses_what_it_cannot_estimate() -> None:
    assert crossed_mean_standard_error(np.ones((1, 5))) is None
    assert crossed_mean_standard_error(np.ones((3, 1))) is None
    assert crossed_mean_standard_error(np.ones((3, 4))) is None  # no variation at all
    assert crossed_mean_standard_error(np.array([[1.0, np.nan], [0.0, 1.0]])) is None


def test_ergodic_gap_leaves_out_points_without_a_finite_value() -> None:
    """The one implementation of the ergodic gap (``heldout_gap``, behind the main model's
    ``ErgodicGap`` and the control's ``control_heldout_gap``) against numpy brute force, with a
    training point whose every loss is infinite (it has no time average and must not count as 0)
    and a test point with some NaN losses (its average is over its finite ones)."""
    import torch

    from lightning_sas.metrics import ErgodicGap
    from lightning_sas.stats.sas import heldout_gap

    rng = np.random.default_rng(10)
    steps, n_train, n_test = 32, 5, 4
    losses = rng.uniform(0.2, 1.0, size=(steps, n_train + n_test)) + 0.02 * np.arange(steps)[:, None]
    losses[:, n_train:] += 0.5
    losses[:, 1] = np.inf
    losses[::3, n_train + 2] = np.nan
    finite = np.where(np.isfinite(losses), losses, np.nan)
    per_point = np.nanmean(finite, axis=0)  # every step is one evaluation of every point
    train_avg, test_avg = np.delete(per_point[:n_train], 1), per_point[n_train:]
    gap = test_avg.mean() - train_avg.mean()
    block_gap = np.nanmean(finite[:, n_train:], axis=1) - np.nanmean(finite[:, :n_train], axis=1)
    drift_free = _drift_free(block_gap)
    temporal = drift_free.reshape(8, 4).mean(axis=1).std(ddof=1) / math.sqrt(8)  # max(sqrt(32), 8) batches
    se = math.sqrt(temporal**2 + train_avg.var(ddof=1) / 4 + test_avg.var(ddof=1) / n_test)

    metric = ErgodicGap(n_train, n_test, max_blocks=64)
    for step, row in enumerate(losses):
        metric.update(torch.from_numpy(row), step)
    assert metric.cursor.n_blocks == steps  # one block per step: the brute force's blocks
    out = metric.gap_with_se()
    assert out["gap"] == pytest.approx(gap, rel=1e-12)
    assert out["train_loss"] == pytest.approx(train_avg.mean(), rel=1e-12)
    assert out["test_loss"] == pytest.approx(test_avg.mean(), rel=1e-12)
    assert out["gap_se"] == pytest.approx(se, rel=1e-10)
    assert float(metric.compute()) == pytest.approx(gap, rel=1e-12)
    # the control's gap: the same function on block means with one count per block
    control = heldout_gap(finite, np.ones(steps), np.arange(n_train), np.arange(n_train, n_train + n_test))
    assert control["gap"] == pytest.approx(gap, rel=1e-12) and control["gap_se"] == pytest.approx(se, rel=1e-10)
    # a side without any finite point has no gap
    assert heldout_gap(finite, np.ones(steps), [1], np.arange(n_train, n_train + n_test))["gap"] is None
