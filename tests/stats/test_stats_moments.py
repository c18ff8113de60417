import io

import numpy as np
import pytest
import torch

from lightning_sas.stats.moments import RunningMoments, merge_moments


def test_scalar_stream_matches_numpy():
    rng = np.random.default_rng(0)
    data = rng.normal(3.0, 2.0, size=5000)
    rm = RunningMoments()
    for chunk in np.array_split(data, 37):
        rm.update(torch.from_numpy(chunk))
    assert rm.count.item() == 5000
    assert rm.mean.item() == pytest.approx(data.mean(), rel=1e-12)
    assert rm.var.item() == pytest.approx(data.var(ddof=1), rel=1e-12)
    assert rm.std.item() == pytest.approx(data.std(ddof=1), rel=1e-12)
    assert rm.mean.dtype == torch.float64 and rm.mean.shape == ()


def test_tensor_stream_single_samples_and_float32():
    rng = np.random.default_rng(1)
    data = rng.normal(size=(300, 4, 3)).astype(np.float32)
    rm = RunningMoments(shape=(4, 3))
    for row in data[:100]:
        rm.update(torch.from_numpy(row))  # exactly `shape`: one sample
    rm.update(torch.from_numpy(data[100:]))
    d64 = data.astype(np.float64)
    np.testing.assert_allclose(rm.mean.numpy(), d64.mean(0), rtol=1e-12)
    np.testing.assert_allclose(rm.var.numpy(), d64.var(0, ddof=1), rtol=1e-10)
    with pytest.raises(ValueError):
        rm.update(torch.zeros(5, 3, 4))


def test_large_offset_stable():
    data = 1e9 + np.random.default_rng(2).normal(size=10_000)
    rm = RunningMoments()
    for chunk in np.array_split(data, 10):
        rm.update(torch.from_numpy(chunk))
    assert rm.var.item() == pytest.approx(data.var(ddof=1), rel=1e-6)


def test_merge_splits():
    rng = np.random.default_rng(3)
    data = rng.normal(size=(1000, 5)) * np.arange(1, 6) + np.arange(5)
    parts = np.split(data, [1, 10, 400, 401])  # includes a 1-sample part
    rms = []
    for p in parts:
        r = RunningMoments((5,))
        r.update(torch.from_numpy(p))
        rms.append(r)
    total = RunningMoments((5,))
    for r in reversed(rms):  # order does not matter
        total.merge(r)
    np.testing.assert_allclose(total.count.numpy(), 1000)
    np.testing.assert_allclose(total.mean.numpy(), data.mean(0), rtol=1e-12)
    np.testing.assert_allclose(total.var.numpy(), data.var(0, ddof=1), rtol=1e-12)
    # merging an empty one is a no-op
    before = total.state_dict()
    total.merge(RunningMoments((5,)))
    for k, v in total.state_dict().items():
        assert torch.equal(v, before[k])


def test_merge_moments_function():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=50), rng.normal(2.0, 3.0, size=70)
    t = lambda v: torch.tensor(v, dtype=torch.float64)
    n, mean, m2 = merge_moments(
        t(50.0),
        t(a.mean()),
        t(((a - a.mean()) ** 2).sum()),
        t(70.0),
        t(b.mean()),
        t(((b - b.mean()) ** 2).sum()),
    )
    ab = np.r_[a, b]
    assert n.item() == 120
    assert mean.item() == pytest.approx(ab.mean(), rel=1e-12)
    assert m2.item() == pytest.approx(((ab - ab.mean()) ** 2).sum(), rel=1e-12)
    n, mean, m2 = merge_moments(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)  # empty + empty: no NaN
    assert (n.item(), mean.item(), m2.item()) == (0.0, 0.0, 0.0)


def test_nonfinite_excluded_and_counted():
    x = torch.tensor([[1.0, float("nan")], [2.0, 5.0], [float("inf"), 7.0], [3.0, -float("inf")]])
    rm = RunningMoments((2,))
    rm.update(x)
    assert rm.count.tolist() == [3.0, 2.0]
    assert rm.nonfinite.tolist() == [1, 2]
    assert rm.nonfinite.dtype == torch.int64
    np.testing.assert_allclose(rm.mean.numpy(), [2.0, 6.0])
    np.testing.assert_allclose(rm.var.numpy(), [1.0, 2.0])
    assert torch.isfinite(rm.mean).all() and torch.isfinite(rm.var).all()


def test_var_zero_below_two_and_all_nan():
    rm = RunningMoments((3,))
    assert rm.var.tolist() == [0.0, 0.0, 0.0]
    rm.update(torch.tensor([[1.0, float("nan"), 2.0]]))
    assert rm.var.tolist() == [0.0, 0.0, 0.0]
    assert rm.mean.tolist() == [1.0, 0.0, 2.0]
    rm.update(torch.tensor([[3.0, float("nan"), 2.0]]))
    assert rm.var.tolist() == [2.0, 0.0, 0.0]
    assert rm.nonfinite.tolist() == [0, 2, 0]


def test_state_dict_roundtrip_weights_only():
    rm = RunningMoments((2, 2))
    rm.update(torch.randn(10, 2, 2, generator=torch.Generator().manual_seed(0)))
    sd = rm.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in sd.values())
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    rm2 = RunningMoments((2, 2))
    rm2.load_state_dict(loaded)
    for k, v in rm2.state_dict().items():
        assert torch.equal(v, sd[k])
    # state is a copy: updating the original does not change the saved dict
    rm.update(torch.ones(3, 2, 2))
    assert not torch.equal(rm.count, sd["count"])
    rm.reset()
    assert rm.count.sum().item() == 0


def test_update_has_no_item_call(monkeypatch):
    rm = RunningMoments((3,))

    def boom(self):
        raise AssertionError(".item() called in update")

    monkeypatch.setattr(torch.Tensor, "item", boom)
    rm.update(torch.randn(4, 3))
    rm.merge(rm)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_device():
    rm = RunningMoments((3,), device="cuda")
    rm.update(torch.randn(8, 3, device="cuda"))
    assert rm.mean.device.type == "cuda" and rm.nonfinite.device.type == "cuda"
