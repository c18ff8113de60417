import itertools

import numpy as np
import pytest
import torch

from lightning_sas.stats.sketch import RandomProjection


def named(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [
        ("layer.0.weight", torch.randn(30, 20, generator=g)),
        ("layer.0.bias", torch.randn(30, generator=g)),
        ("head.weight", torch.randn(7, 30, generator=g)),
    ]


def brute_force(rp: RandomProjection, items, offsets=None) -> torch.Tensor:
    out = torch.zeros(rp.k, dtype=torch.float64)
    for name, t in items:
        off = 0 if offsets is None else offsets.get(name, 0)
        h, s = rp.buckets_and_signs(name, off, t.numel())
        for j, w in enumerate(t.reshape(-1).double().tolist()):
            out[int(h[j])] += float(s[j]) * w
    return out


def test_shape_dtype_and_brute_force():
    rp = RandomProjection(k=16, seed=3)
    items = named()
    sk = rp.project(items)
    assert sk.shape == (16,) and sk.dtype == torch.float64
    torch.testing.assert_close(sk, brute_force(rp, items), rtol=0, atol=1e-12)
    h, s = rp.buckets_and_signs("x", 0, 100_000)
    assert h.min() >= 0 and h.max() < 16 and set(s.unique().tolist()) == {-1.0, 1.0}
    counts = torch.bincount(h * 2 + (s < 0).long(), minlength=32).double()
    assert (counts / counts.mean() - 1).abs().max() < 0.1  # every (bucket, sign) equally likely


def test_additive_over_shards():
    rp = RandomProjection(k=32, seed=1)
    w = torch.randn(10_007, generator=torch.Generator().manual_seed(1))
    whole = rp.project_flat("w", w)
    cuts = [0, 1, 500, 5003, 9999, 10_007]
    parts = sum(rp.project_flat("w", w[a:b], offset=a) for a, b in itertools.pairwise(cuts))
    torch.testing.assert_close(parts, whole, rtol=0, atol=1e-12)
    # the same via project() with offsets (e.g. two FSDP ranks holding halves)
    rank0 = rp.project([("w", w[:5000])], offsets={"w": 0})
    rank1 = rp.project([("w", w[5000:])], offsets={"w": 5000})
    torch.testing.assert_close(rank0 + rank1, whole, rtol=0, atol=1e-12)
    # chunking inside project_flat does not change the result
    small = RandomProjection(k=32, seed=1, chunk_size=1000)
    torch.testing.assert_close(small.project_flat("w", w), whole, rtol=0, atol=1e-12)
    # multi-tensor projection is the sum of per-tensor projections, and linear
    items = named(2)
    torch.testing.assert_close(
        rp.project(items), sum(rp.project_flat(n, t) for n, t in items), rtol=0, atol=1e-12
    )
    items64 = [(n, t.double()) for n, t in items]
    torch.testing.assert_close(
        rp.project([(n, 2.5 * t) for n, t in items64]),
        2.5 * rp.project(items64),
        rtol=1e-12,
        atol=1e-12,
    )


def test_deterministic_and_dtype_independent():
    items = named()
    a = RandomProjection(32, seed=7).project(items)
    b = RandomProjection(32, seed=7).project(items)
    assert torch.equal(a, b)
    # exactly representable in every dtype below: same values -> same sketch
    ints = [(n, torch.round(t * 4)) for n, t in items]
    ref = RandomProjection(32, seed=7).project([(n, t.double()) for n, t in ints])
    for dt in (torch.float32, torch.float16, torch.bfloat16, torch.int64):
        got = RandomProjection(32, seed=7).project([(n, t.to(dt)) for n, t in ints])
        assert got.dtype == torch.float64
        assert torch.equal(got, ref), dt
    # requires_grad tensors (parameters) are fine
    p = torch.nn.Parameter(torch.ones(5))
    assert RandomProjection(4).project([("p", p)]).requires_grad is False


def test_seed_and_name_dependence():
    w = torch.randn(5000, generator=torch.Generator().manual_seed(4))
    a = RandomProjection(32, seed=0).project_flat("w", w)
    b = RandomProjection(32, seed=1).project_flat("w", w)
    c = RandomProjection(32, seed=0).project_flat("v", w)
    assert not torch.allclose(a, b) and not torch.allclose(a, c)
    # nearly orthogonal hashes: the correlation of two seeds' sketches of the same vector is small
    h0, s0 = RandomProjection(32, seed=0).buckets_and_signs("w", 0, 100_000)
    h1, s1 = RandomProjection(32, seed=1).buckets_and_signs("w", 0, 100_000)
    assert (h0 == h1).double().mean().item() == pytest.approx(1 / 32, abs=0.005)
    assert abs((s0 * s1).mean().item()) < 0.02


def test_inner_products_unbiased_over_seeds():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2000, generator=g, dtype=torch.float64)
    y = 0.6 * x + 0.8 * torch.randn(2000, generator=g, dtype=torch.float64)
    exact = float(x @ y)
    est_xy, est_xx = [], []
    for seed in range(200):
        rp = RandomProjection(k=32, seed=seed)
        sx, sy = rp.project_flat("p", x), rp.project_flat("p", y)
        est_xy.append(float(sx @ sy))
        est_xx.append(float(sx @ sx))
    est_xy, est_xx = np.array(est_xy), np.array(est_xx)
    # count-sketch: Var<Sx,Sy> ~ (|x|^2 |y|^2 + <x,y>^2) / k per seed
    se = np.sqrt((float(x @ x) * float(y @ y) + exact**2) / 32 / 200)
    assert abs(est_xy.mean() - exact) < 4 * se
    assert abs(est_xx.mean() - float(x @ x)) < 4 * np.sqrt(2 * float(x @ x) ** 2 / 32 / 200)
    # a single sketch is already a decent estimate of the norm (JL-type concentration)
    assert np.all(np.abs(est_xx / float(x @ x) - 1) < 1.0)


def test_global_index_matters():
    rp = RandomProjection(32, seed=0)
    w = torch.randn(100, generator=torch.Generator().manual_seed(6))
    assert not torch.allclose(
        rp.project_flat("w", w, offset=0), rp.project_flat("w", w, offset=100)
    )
    assert torch.equal(rp.project([]), torch.zeros(32, dtype=torch.float64))
    assert torch.equal(rp.project_flat("w", torch.zeros(0)), torch.zeros(32, dtype=torch.float64))


def test_large_offsets_no_overflow():
    rp = RandomProjection(32, seed=0)
    w = torch.randn(1000, generator=torch.Generator().manual_seed(8))
    off = 2**40 + 12345
    torch.testing.assert_close(
        rp.project_flat("w", w[:400], off) + rp.project_flat("w", w[400:], off + 400),
        rp.project_flat("w", w, off),
        rtol=0,
        atol=1e-12,
    )
    h, _ = rp.buckets_and_signs("w", 2**62, 1000)
    assert h.min() >= 0 and h.max() < 32


def test_invalid_k():
    with pytest.raises(ValueError):
        RandomProjection(k=0)


def test_one_million_weights_without_a_d_by_k_matrix():
    """The sketch of d weights allocates O(d) memory, never a d x k projection matrix (checked
    through the allocations torch's profiler records, not a wall time)."""
    rp = RandomProjection(k=32, seed=0)
    d = 1_000_000
    w = torch.randn(d, generator=torch.Generator().manual_seed(9))
    rp.project_flat("w", w)  # warm-up (fills any cache the projection keeps)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        rp.project_flat("w", w)
    largest = max(e.cpu_memory_usage for e in prof.events())
    allocated = sum(max(e.cpu_memory_usage, 0) for e in prof.events())
    # a float64 copy of w is 8 d bytes; a d x k matrix would be at least 4 d k = 128 MB
    assert largest <= 2 * 8 * d, largest
    assert allocated <= 8 * 8 * d < 4 * d * 32, allocated


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    rp = RandomProjection(32, seed=3)
    items = named()
    cpu = rp.project(items)
    gpu = rp.project([(n, t.cuda()) for n, t in items])
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-12)


def _ref_slot(rp: RandomProjection, name: str, j: int) -> tuple[int, float]:
    """Pure-Python splitmix64 reference for the on-device int64 hash (independent of torch)."""
    import zlib

    m64 = (1 << 64) - 1

    def mix(z: int) -> int:
        z &= m64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m64
        return z ^ (z >> 31)

    seed_key = mix(mix(rp.seed) + 0x9E3779B97F4A7C15)
    key = mix(seed_key ^ ((zlib.crc32(name.encode()) * 0xD6E8FEB86659FD93) & m64))
    z = mix(key + (j + 1) * 0x9E3779B97F4A7C15)
    slot = ((z >> 33) * 2 * rp.k) >> 31
    return slot >> 1, 1.0 - 2.0 * (slot & 1)


@pytest.mark.parametrize("k,seed", [(32, 0), (5, 11), (1, 3), (1000, 2**40)])
def test_hash_matches_python_reference(k, seed):
    rp = RandomProjection(k=k, seed=seed)
    for name, off in [("w", 0), ("layer.0.weight", 123_456_789_012), ("é", 2**62 - 100)]:
        h, s = rp.buckets_and_signs(name, off, 40)
        ref = [_ref_slot(rp, name, off + i) for i in range(40)]
        assert list(zip(h.tolist(), s.tolist())) == ref


def test_project_many_equals_the_sum_of_the_pieces() -> None:
    """One accumulation over every piece (cached slots) = the sum of per-piece sketches, cached or
    not, within float64 rounding."""
    from lightning_sas.stats.sketch import RandomProjection

    g = torch.Generator().manual_seed(0)
    items = [("a.weight", torch.randn(30, 20, generator=g), 0), ("a.bias", torch.randn(20, generator=g), 0),
             ("b.weight", torch.randn(500, generator=g), 1000)]
    many = RandomProjection(16, seed=3)
    uncached = RandomProjection(16, seed=3)
    uncached.CACHE_ELEMENTS = 0
    expected = sum(uncached.project_flat(name, t, off) for name, t, off in items)
    for _ in range(2):  # the second call uses the cached slots
        torch.testing.assert_close(many.project_many(items), expected, rtol=1e-12, atol=1e-12)
    uncached_many = uncached.project_many(items)  # over the budget: per piece
    torch.testing.assert_close(uncached_many, expected, rtol=1e-12, atol=1e-12)
