"""The replicas' private generators (:class:`lightning_sas.replicas.rng.PrivateRNG`): the main
run's numpy, Python and torch streams continue as if no replica step ran, and the replicas draw
one continuing stream of their own (numpy's swapped with its exact legacy get/set_state)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from lightning_sas.replicas.rng import PrivateRNG


def _global_states() -> tuple:
    return torch.get_rng_state(), np.random.get_state(), random.getstate()


def _assert_same(a: tuple, b: tuple) -> None:
    assert torch.equal(a[0], b[0])
    assert a[1][0] == b[1][0] and np.array_equal(a[1][1], b[1][1]) and a[1][2:] == b[1][2:]
    assert a[2] == b[2]


def _replica_draws(rng: PrivateRNG, steps: int, draw_from: int, draw) -> list[float]:
    out = []
    for step in range(steps):
        before = _global_states()
        with rng.active(torch.device("cpu")):
            if step >= draw_from:
                out.append(draw())
        _assert_same(before, _global_states())
        np.random.rand()  # the main run draws between replica steps
        random.random()
    return out


@pytest.mark.parametrize("draw_from", [0, 3])
def test_numpy_draws_continue_a_private_stream_and_leave_the_main_stream(draw_from: int) -> None:
    np.random.seed(123)
    random.seed(5)
    np.random.randn()  # the main run holds a cached Gaussian
    rng = PrivateRNG(7)
    draws = _replica_draws(rng, 8, draw_from, lambda: float(np.random.rand()))
    expected = np.random.RandomState(7).rand(len(draws))
    np.testing.assert_array_equal(draws, expected)


def test_legacy_gaussians_from_the_first_step_are_exact() -> None:
    np.random.seed(1)
    np.random.randn()  # cached Gaussian in the main stream
    rng = PrivateRNG(3)
    draws = _replica_draws(rng, 6, 0, lambda: float(np.random.randn()))
    np.testing.assert_array_equal(draws, np.random.RandomState(3).randn(6))


def test_steps_without_numpy_draws_leave_the_replicas_numpy_state() -> None:
    np.random.seed(11)
    rng = PrivateRNG(2)
    state = rng.numpy_state
    _replica_draws(rng, 5, 99, lambda: 0.0)
    assert np.array_equal(rng.numpy_state[1], state[1]) and rng.numpy_state[2:] == state[2:]


def test_state_round_trip_continues_the_stream() -> None:
    rng = PrivateRNG(9)
    first = _replica_draws(rng, 3, 1, lambda: float(np.random.rand()))
    restored = PrivateRNG(0)
    restored.load_state_dict(rng.state_dict())
    second = _replica_draws(restored, 3, 0, lambda: float(np.random.rand()))
    np.testing.assert_array_equal(first + second, np.random.RandomState(9).rand(5))
