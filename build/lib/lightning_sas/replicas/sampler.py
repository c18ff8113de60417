"""Batch indices for the replicas: common random numbers or independent orders, seeded."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["ReplicaSampler"]


class ReplicaSampler:
    """Draws one batch of positions into ``S`` per step for each of ``n_replicas`` replicas.

    ``mode="common"`` (common random numbers): every replica gets the same positions, so replicas
    differ only through the sample each one replaced; ``mode="independent"``: each replica its own
    shuffled order (the paper's multi-run protocol inside one job). Each epoch is a fresh seeded
    permutation of ``range(n_items)``, a function of ``(seed, replica, epoch)`` alone, so the
    state is two integers and resuming reproduces the same batches.
    """

    def __init__(self, n_items: int, batch_size: int, n_replicas: int, mode: str = "common", seed: int = 0,
                 drop_last: bool = True) -> None:
        if mode not in ("common", "independent"):
            raise ValueError(f"sampler must be 'common' or 'independent', got {mode!r}")
        if batch_size < 1 or n_items < batch_size:
            raise ValueError(f"batch_size must be in [1, {n_items}] (the size of S), got {batch_size}")
        self.n_items = n_items
        self.batch_size = batch_size
        self.n_replicas = n_replicas
        self.mode = mode
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self.position = 0
        self._perms: list[np.ndarray] = []
        self._perm_epoch = -1

    def _permutations(self) -> list[np.ndarray]:
        if self._perm_epoch != self.epoch:
            streams = 1 if self.mode == "common" else self.n_replicas
            self._perms = [
                np.random.default_rng([self.seed, r, self.epoch]).permutation(self.n_items) for r in range(streams)
            ]
            self._perm_epoch = self.epoch
        return self._perms

    def next(self) -> list[np.ndarray]:
        """Positions of the next batch, one array per replica (shared object in common mode)."""
        if self.position + self.batch_size > self.n_items:
            self.epoch += 1
            self.position = 0
        perms = self._permutations()
        lo, hi = self.position, self.position + self.batch_size
        self.position = hi
        if self.mode == "common":
            return [perms[0][lo:hi]] * self.n_replicas
        return [p[lo:hi] for p in perms]

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
