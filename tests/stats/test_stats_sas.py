"""SAS statistics (``lightning_sas.stats.sas``) against numpy brute force and under the null."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lightning_sas.stats.sas import sas_statistics, student_t_975, time_average

K, B, P = 4, 16, 12
REPLACED = np.array([0, 1, 2, 3])
REPLACEMENT = np.array([4, 5, 6, 7])
HELDOUT = np.array([8, 9, 10, 11])


def _series(rng: np.random.Generator, effect: np.ndarray | None = None, noise: float = 0.1) -> np.ndarray:
    """Block means ``(K + 1, B, P)``: a common per-point level, independent noise per replica
    and block, plus ``effect[k - 1, z]`` added to perturbed replica ``k``."""
    level = rng.uniform(0.5, 2.0, size=P)
    means = level[None, None, :] + noise * rng.standard_normal((K + 1, B, P))
    if effect is not None:
        means[1:] += effect[:, None, :]
    return means


def test_statistics_equal_brute_force() -> None:
    rng = np.random.default_rng(0)
    effect = rng.normal(0.0, 0.5, size=(K, P))
    means = _series(rng, effect)
    counts = np.full(B, 5.0)
    out = sas_statistics(means, counts, REPLACED, REPLACEMENT, HELDOUT)

    avg = means.mean(axis=1)  # equal counts: the plain mean over blocks
    d = avg[1:] - avg[0]
    max_k = [np.abs(d[k, np.r_[REPLACED[k], REPLACEMENT[k], HELDOUT]]).max() for k in range(K)]
    assert out["sas_max"] == pytest.approx(np.mean(max_k), rel=1e-12)
    assert out["sas_mean"] == pytest.approx(np.abs(d[:, HELDOUT]).mean(), rel=1e-12)
    d_rep = d[np.arange(K), REPLACED]
    assert out["sas_replaced"] == pytest.approx(np.abs(d_rep).mean(), rel=1e-12)
    assert out["stability_gap"] == pytest.approx(d_rep.mean(), rel=1e-12)
    assert out["stability_gap_max_share"] == pytest.approx(np.abs(d_rep).max() / np.abs(d_rep).sum(), rel=1e-12)

    # SE: replica spread and batch means (4 batches of 4 equal blocks) in quadrature
    diff = means[1:] - means[0:1]
    batch = diff.reshape(K, 4, 4, P).mean(axis=2)
    temporal = batch.std(axis=1, ddof=1) / 2.0  # (K, P)
    se_rep = temporal[np.arange(K), REPLACED]
    expected = math.sqrt(d_rep.var(ddof=1) / K + np.mean(se_rep**2) / K)
    assert out["stability_gap_se"] == pytest.approx(expected, rel=1e-10)
    assert out["sas_critical_t"] == pytest.approx(3.1824, abs=1e-4)
    assert np.allclose(time_average(means, counts), avg)


def test_nan_blocks_are_ignored_by_the_time_average() -> None:
    rng = np.random.default_rng(1)
    means = _series(rng)
    means[2, 3, 5] = np.nan
    counts = np.arange(1.0, B + 1)
    avg = time_average(means, counts)
    keep = np.ones(B, dtype=bool)
    keep[3] = False
    assert avg[2, 5] == pytest.approx(np.average(means[2, keep, 5], weights=counts[keep]), rel=1e-12)
    assert avg[1, 5] == pytest.approx(np.average(means[1, :, 5], weights=counts), rel=1e-12)


def test_no_effect_is_rarely_resolved() -> None:
    """Under the null (all replicas alike), the t-based flags fire at about their nominal rate."""
    rng = np.random.default_rng(2)
    trials = 300
    gap_hits = max_hits = mean_hits = 0
    for _ in range(trials):
        out = sas_statistics(_series(rng), np.full(B, 5.0), REPLACED, REPLACEMENT, HELDOUT)
        gap_hits += out["stability_gap_resolved"]
        max_hits += out["sas_max_resolved"]
        mean_hits += out["sas_mean_resolved"]
    assert gap_hits / trials < 0.1
    assert max_hits / trials < 0.1
    assert mean_hits / trials < 0.1


def test_a_real_effect_is_resolved() -> None:
    rng = np.random.default_rng(3)
    effect = np.zeros((K, P))
    effect[np.arange(K), REPLACED] = rng.uniform(1.0, 2.0, size=K)  # loss rises on the replaced samples
    out = sas_statistics(_series(rng, effect), np.full(B, 5.0), REPLACED, REPLACEMENT, HELDOUT)
    assert out["stability_gap_resolved"] and out["sas_max_resolved"] and out["sas_replaced_resolved"]
    assert out["stability_gap"] > 0.9


def test_one_dominant_replica_is_flagged() -> None:
    rng = np.random.default_rng(4)
    effect = np.zeros((K, P))
    effect[0, REPLACED[0]] = 8.0  # one noisy-label sample carries the whole estimate
    out = sas_statistics(_series(rng, effect, noise=0.01), np.full(B, 5.0), REPLACED, REPLACEMENT, HELDOUT)
    assert out["stability_gap_max_share"] > 0.9
    assert not out["stability_gap_resolved"]  # t_{3} * SE of a 4-sample mean with one outlier


@pytest.mark.parametrize("dof", [1, 3, 11, 30, 31, 60, 500])
def test_student_t_quantile(dof: int) -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    assert student_t_975(dof) == pytest.approx(scipy_stats.t.ppf(0.975, dof), abs=1e-4)


def test_shapes_are_checked() -> None:
    with pytest.raises(ValueError):
        sas_statistics(np.zeros((1, 4, P)), np.ones(4), REPLACED[:0], REPLACEMENT[:0], HELDOUT)
