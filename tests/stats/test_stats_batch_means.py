import math

import numpy as np
import pytest

from lightning_sas.stats.batch_means import batch_means_se, batch_means_se_along, batch_means_se_from_blocks


def ar1(n: int, phi: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    e = rng.normal(size=n)
    x = np.empty(n)
    x[0] = e[0] / math.sqrt(1 - phi * phi)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + e[t]
    return x


def classic(x: np.ndarray, b: int) -> float:
    m = x.reshape(b, -1).mean(axis=1)
    return m.std(ddof=1) / math.sqrt(b)


def test_classic_formula_equal_batches():
    x = np.random.default_rng(0).normal(size=400)
    assert batch_means_se(x) == pytest.approx(classic(x, 20), rel=1e-12)
    assert batch_means_se(x, n_batches=8) == pytest.approx(classic(x, 8), rel=1e-12)


def test_unequal_batches_use_all_data():
    x = np.random.default_rng(1).normal(size=103)
    b = 10
    idx = (np.arange(103) * b) // 103
    c = np.bincount(idx).astype(float)
    m = np.bincount(idx, weights=x) / c
    ref = math.sqrt(np.sum(c * (m - x.mean()) ** 2) / ((b - 1) * 103))
    assert batch_means_se(x) == pytest.approx(ref, rel=1e-12)
    assert sorted(set(c)) == [10.0, 11.0]


@pytest.mark.parametrize("phi", [0.5, 0.9])
def test_ar1_true_se(phi):
    # true SE of the mean: sqrt(sigma_x^2 tau / n), sigma_x^2 = 1/(1-phi^2), tau = (1+phi)/(1-phi)
    n = 100_000
    x = ar1(n, phi, seed=11)
    true = math.sqrt((1 / (1 - phi**2)) * (1 + phi) / (1 - phi) / n)
    assert batch_means_se(x) == pytest.approx(true, rel=0.25)
    c = np.full(1000, 100.0)
    s = x.reshape(1000, 100).sum(axis=1)
    assert batch_means_se_from_blocks(
        c, s, min_batch_len=2 * (1 + phi) / (1 - phi)
    ) == pytest.approx(true, rel=0.25)


def test_blocks_equal_array_on_equal_blocks():
    x = ar1(4096, 0.7, seed=2)
    c = np.full(256, 16.0)
    s = x.reshape(256, 16).sum(axis=1)
    # 256 blocks -> sqrt = 16 batches of 16 blocks = 256 samples
    assert batch_means_se_from_blocks(c, s) == pytest.approx(
        batch_means_se(x, n_batches=16), rel=1e-12
    )
    assert batch_means_se_from_blocks(c, s) == pytest.approx(classic(x, 16), rel=1e-12)
    # unit blocks reproduce the array version exactly (same batch boundaries)
    y = x[:1000]
    assert batch_means_se_from_blocks(np.ones(1000), y, min_batches=2) == pytest.approx(
        batch_means_se(y), rel=1e-12
    )


def test_min_batches_and_min_batch_len():
    x = np.random.default_rng(3).normal(size=640)
    c = np.full(16, 40.0)
    s = x.reshape(16, 40).sum(axis=1)
    # sqrt(16) = 4 < min_batches = 8 -> 8 batches of 2 blocks
    assert batch_means_se_from_blocks(c, s) == pytest.approx(classic(x, 8), rel=1e-12)
    assert batch_means_se_from_blocks(c, s, min_batches=4) == pytest.approx(
        classic(x, 4), rel=1e-12
    )
    # min_batch_len = 150 -> at most floor(640/150) = 4 batches (beats min_batches)
    assert batch_means_se_from_blocks(c, s, min_batch_len=150) == pytest.approx(
        classic(x, 4), rel=1e-12
    )
    # longer than half the data: fewer than 2 batches
    assert batch_means_se_from_blocks(c, s, min_batch_len=400) is None


def test_lumpy_blocks_respect_min_batch_len():
    rng = np.random.default_rng(4)
    c = np.r_[1000.0, np.ones(50), 300.0, np.ones(30)]
    x = rng.normal(size=int(c.sum()))
    edges = np.r_[0, np.cumsum(c)[:-1]].astype(int)
    s = np.add.reduceat(x, edges)
    se = batch_means_se_from_blocks(c, s, min_batch_len=200)
    assert se is not None and se > 0
    # brute force: greedy merge must leave every batch >= 200; check the weighted formula on
    # the batches it must have made (blocks are indivisible: 1000 | 50 ones + 300 | 30 ones)
    bc = np.array([1000.0, 350.0 + 30.0])
    bs = np.array([s[0], s[1:].sum()])
    m = bs / bc
    ref = math.sqrt(np.sum(bc * (m - bs.sum() / bc.sum()) ** 2) / (1 * bc.sum()))
    assert se == pytest.approx(ref, rel=1e-12)


def test_weighted_reduces_to_classic():
    # SE = sqrt(sum c_b (m_b - m)^2 / ((B-1) N)) == sd(m_b)/sqrt(B) when c_b are equal
    rng = np.random.default_rng(5)
    m_b = rng.normal(size=12)
    c = np.full(12, 7.0)
    se = batch_means_se_from_blocks(c, c * m_b, min_batches=12)
    assert se == pytest.approx(m_b.std(ddof=1) / math.sqrt(12), rel=1e-12)


def test_nonfinite_dropped():
    x = np.random.default_rng(6).normal(size=400)
    y = np.insert(x, [3, 200], [np.nan, np.inf])
    assert batch_means_se(y) == batch_means_se(x)
    c = np.full(20, 20.0)
    s = x.reshape(20, 20).sum(axis=1)
    c2 = np.r_[c, 5.0, 0.0]
    s2 = np.r_[s, np.nan, 0.0]
    assert batch_means_se_from_blocks(c2, s2) == batch_means_se_from_blocks(c, s)


@pytest.mark.parametrize("x", [np.full(100, 1.5), np.zeros(9), [1.0, 2.0, 3.0], [], [np.nan] * 10])
def test_constant_or_short(x):
    assert batch_means_se(x) is None  # constant, or n < 4 finite values


@pytest.mark.parametrize("counts", [np.ones(100), np.arange(1.0, 101.0)])
def test_blocks_constant(counts):
    assert batch_means_se_from_blocks(counts, 0.25 * counts) is None
    assert batch_means_se_from_blocks(counts, np.zeros(100)) is None
    assert batch_means_se_from_blocks([], []) is None
    assert batch_means_se_from_blocks([3.0, np.nan], [1.0, 2.0]) is None


def test_too_few_batches():
    assert batch_means_se(np.arange(10.0), n_batches=1) is None
    assert batch_means_se_from_blocks([5.0], [1.0]) is None
    se = batch_means_se_from_blocks([5.0, 5.0], [1.0, 3.0])
    assert se == pytest.approx(math.sqrt(5 * (0.2 - 0.4) ** 2 * 2 / (1 * 10)))
    assert batch_means_se(np.arange(4.0), n_batches=100) is not None  # capped at n


@pytest.mark.parametrize("min_batch_len", [None, 90.0, 300.0])
def test_along_axis_equals_one_series_at_a_time(min_batch_len):
    """``batch_means_se_along`` batches like ``batch_means_se_from_blocks`` (the one rule): the
    SE of every series of a (replicas, blocks, points) array equals the one-series SE, with
    unequal counts, merges of short batches and a min_batch_len that allows fewer batches."""
    rng = np.random.default_rng(7)
    c = rng.integers(1, 40, size=37).astype(float)
    v = rng.normal(size=(3, 37, 5)) + np.linspace(0.0, 2.0, 37)[None, :, None]
    se = batch_means_se_along(c, v, axis=1, min_batch_len=min_batch_len)
    assert se is not None and se.shape == (3, 5)
    for k in range(3):
        for p in range(5):
            assert se[k, p] == pytest.approx(batch_means_se_from_blocks(c, c * v[k, :, p], min_batch_len=min_batch_len),
                                             rel=1e-12)


def test_along_axis_leaves_a_non_finite_block_out_of_its_batch():
    """A NaN block mean drops that block (and its count) from its batch for that series only;
    the other series keep it. Brute force: 16 equal blocks, 8 batches of 2."""
    rng = np.random.default_rng(8)
    c = np.full(16, 3.0)
    v = rng.normal(size=(16, 2))
    v[5, 1] = np.nan  # batch 2 of series 1 keeps block 4 alone
    se = batch_means_se_along(c, v, axis=0)
    blocks = [[2 * j, 2 * j + 1] for j in range(8)]
    for series, drop in ((0, None), (1, 5)):
        kept = [[b for b in pair if b != drop] for pair in blocks]
        bc = np.array([3.0 * len(pair) for pair in kept])
        bm = np.array([v[pair, series].mean() for pair in kept])
        m = (bc * bm).sum() / bc.sum()
        assert se[series] == pytest.approx(math.sqrt((bc * (bm - m) ** 2).sum() / (7 * bc.sum())), rel=1e-12)
    # fewer than 2 batches with data for a series: NaN for it; too few blocks: None
    v[:, 1] = np.nan
    v[0, 1] = 1.0
    assert np.isnan(batch_means_se_along(c, v, axis=0)[1])
    assert batch_means_se_along(c[:1], v[:1], axis=0) is None
    assert batch_means_se_along(c, v, axis=0, min_batch_len=30.0) is None  # 48 evaluations: 1 batch


def test_gap_standard_error_adds_the_sampling_of_probe_points() -> None:
    """SE of a gap of per-point averages: the temporal part and s^2/n of each probe set in
    quadrature (brute force), so a gap over few, very different points is not over-resolved."""
    from lightning_sas.stats.batch_means import gap_standard_error

    rng = np.random.default_rng(0)
    train, test = rng.gamma(2.0, 0.5, size=50), rng.gamma(2.0, 1.0, size=40)
    expected = math.sqrt(0.01**2 + train.var(ddof=1) / 50 + test.var(ddof=1) / 40)
    assert gap_standard_error(0.01, train, test) == pytest.approx(expected, rel=1e-12)
    assert gap_standard_error(None, train, np.append(test, np.nan)) == pytest.approx(
        math.sqrt(train.var(ddof=1) / 50 + test.var(ddof=1) / 40), rel=1e-12)
    assert gap_standard_error(None, [1.0], [2.0]) is None
