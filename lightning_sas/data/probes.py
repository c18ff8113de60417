"""Probe sets for the SAS estimate: the replaced samples, their replacements and held-out points."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["ProbeSet", "make_probe_set"]


@dataclass(frozen=True)
class ProbeSet:
    """Probe points in the order of the probe vector ``[train..., replacements..., heldout...]``.

    ``train_indices`` (into the training dataset) always contain every replaced ``i_k``;
    ``replacement_indices`` are the ``z'_k`` (in replica order); ``heldout_indices`` are
    ``P_test``, disjoint from the replacements.
    """

    train_indices: np.ndarray
    replacement_indices: np.ndarray
    heldout_indices: np.ndarray
    replaced_indices: np.ndarray

    @property
    def replaced_columns(self) -> np.ndarray:
        """Column of each ``i_k`` in the probe vector."""
        position = {int(i): c for c, i in enumerate(self.train_indices)}
        return np.asarray([position[int(i)] for i in self.replaced_indices], dtype=np.int64)

    @property
    def replacement_columns(self) -> np.ndarray:
        return len(self.train_indices) + np.arange(len(self.replacement_indices), dtype=np.int64)

    @property
    def heldout_columns(self) -> np.ndarray:
        return len(self.train_indices) + len(self.replacement_indices) + np.arange(len(self.heldout_indices), dtype=np.int64)

    @property
    def train_columns(self) -> np.ndarray:
        return np.arange(len(self.train_indices), dtype=np.int64)

    @property
    def order(self) -> np.ndarray:
        """Dataset indices of the whole probe vector, in column order."""
        return np.concatenate([self.train_indices, self.replacement_indices, self.heldout_indices]).astype(np.int64)


def make_probe_set(
    train_indices: np.ndarray,
    holdout_indices: np.ndarray,
    replacements: Sequence[tuple[int, int]],
    n_train_probes: int,
    n_heldout_probes: int,
    seed: int,
) -> ProbeSet:
    """Seeded probe set: every replaced ``i_k`` plus ``n_train_probes`` other training samples,
    the replacements ``z'_k``, and ``n_heldout_probes`` held-out samples not used as replacements."""
    rng = np.random.default_rng([seed, 0x9B0BE])
    replaced = np.asarray([i for i, _ in replacements], dtype=np.int64)
    replacement = np.asarray([j for _, j in replacements], dtype=np.int64)
    others = np.setdiff1d(np.asarray(train_indices), replaced)
    extra = rng.choice(others, size=min(n_train_probes, len(others)), replace=False) if n_train_probes else np.zeros(0, np.int64)
    train = np.sort(np.concatenate([replaced, extra]).astype(np.int64))
    pool = np.setdiff1d(np.asarray(holdout_indices), replacement)
    if len(pool) == 0:
        raise ValueError("no held-out samples are left for P_test after the replacements; raise holdout_fraction")
    heldout = np.sort(rng.choice(pool, size=min(n_heldout_probes, len(pool)), replace=False).astype(np.int64))
    return ProbeSet(train, replacement, heldout, replaced)
