"""Probe sets of the SAS estimate (the swapped samples, held-out and training points) and the
layout of the replicas' per-sample losses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["ProbeSet", "SwapLayout", "make_probe_set"]


@dataclass(frozen=True)
class ProbeSet:
    """Probe points of the estimate with ``m`` swaps per replica.

    * ``extra_train_indices``: ``P_train``, samples of ``S`` that no replica swaps out;
    * ``heldout_indices``: ``P_test``, held-out samples that no replica swaps in;
    * ``swaps[k]``: replica ``k + 1``'s ``m`` pairs ``(i, z')``: training sample ``i`` removed,
      held-out sample ``z'`` added (disjoint across replicas).

    Every replica evaluates the shared points (``shared_indices``: ``P_train`` then ``P_test``)
    and its own ``2m`` swapped points (``replica_swap_indices``: removed then added); the control
    evaluates the swapped points of every replica.
    """

    extra_train_indices: np.ndarray
    heldout_indices: np.ndarray
    swaps: tuple[tuple[tuple[int, int], ...], ...]

    @property
    def replicas(self) -> int:
        return len(self.swaps)

    @property
    def m(self) -> int:
        return len(self.swaps[0]) if self.swaps else 0

    @property
    def shared_indices(self) -> np.ndarray:
        return np.concatenate([self.extra_train_indices, self.heldout_indices]).astype(np.int64)

    def replica_swap_indices(self, k: int) -> np.ndarray:
        """Dataset indices of replica ``k``'s (1-based) swapped points: removed ``i`` then added ``z'``."""
        pairs = self.swaps[k - 1]
        return np.asarray([i for i, _ in pairs] + [z for _, z in pairs], dtype=np.int64)

    @property
    def replaced_indices(self) -> np.ndarray:
        """Every removed ``i``, in replica order."""
        return np.asarray([i for pairs in self.swaps for i, _ in pairs], dtype=np.int64)

    @property
    def replacement_indices(self) -> np.ndarray:
        """Every added ``z'``, in replica order."""
        return np.asarray([z for pairs in self.swaps for _, z in pairs], dtype=np.int64)

    @property
    def train_indices(self) -> np.ndarray:
        """The control's training probe points for the ergodic gap: ``P_train`` and every removed
        sample (all are samples of ``S``), sorted."""
        return np.sort(np.concatenate([self.extra_train_indices, self.replaced_indices])).astype(np.int64)

    def layout(self) -> "SwapLayout":
        return SwapLayout(self.replicas, len(self.extra_train_indices), len(self.heldout_indices), self.m)


@dataclass(frozen=True)
class SwapLayout:
    r"""Where each replica's per-sample losses sit in the flat probe vector of
    :class:`~lightning_sas.metrics.SASEstimate`.

    Row ``r`` (0 = control) has a segment: the ``shared = n_train + n_heldout`` shared points,
    then its swapped points: ``2m`` for a perturbed replica (its removed then its added samples),
    ``2mK`` for the control (each replica's ``2m`` in replica order). Segments follow each other
    in row order, so the vector has :math:`(K+1)\,\mathrm{shared} + 4mK` points.

    The *aligned* view of replica ``k`` has ``shared + 2m`` columns: ``train_columns``,
    ``heldout_columns``, ``removed_columns``, ``added_columns``; the control's values at the same
    points are aligned with it, so :math:`d_k(z)` is a column-wise difference.
    """

    replicas: int
    n_train: int
    n_heldout: int
    m: int

    @property
    def shared(self) -> int:
        return self.n_train + self.n_heldout

    def segment_length(self, row: int) -> int:
        return self.shared + 2 * self.m * (self.replicas if row == 0 else 1)

    def segment_start(self, row: int) -> int:
        if row == 0:
            return 0
        return self.segment_length(0) + (row - 1) * self.segment_length(1)

    @property
    def total(self) -> int:
        return self.segment_length(0) + self.replicas * self.segment_length(1)

    def positions(self, rows: Sequence[int]) -> np.ndarray:
        """Flat positions of the segments of ``rows``, concatenated in that order."""
        parts = [self.segment_start(r) + np.arange(self.segment_length(r)) for r in rows]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)

    @property
    def train_columns(self) -> np.ndarray:
        return np.arange(self.n_train, dtype=np.int64)

    @property
    def heldout_columns(self) -> np.ndarray:
        return self.n_train + np.arange(self.n_heldout, dtype=np.int64)

    @property
    def removed_columns(self) -> np.ndarray:
        return self.shared + np.arange(self.m, dtype=np.int64)

    @property
    def added_columns(self) -> np.ndarray:
        return self.shared + self.m + np.arange(self.m, dtype=np.int64)

    def aligned(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(perturbed, control, control_full)`` from ``flat[..., total]``: ``perturbed[..., k, c]``
        is replica ``k + 1`` in its aligned columns, ``control[..., k, c]`` the control at the same
        points, ``control_full[..., c]`` the control's whole segment."""
        flat = np.asarray(flat)
        lead = flat.shape[:-1]
        c0 = self.segment_length(0)
        control_full = flat[..., :c0]
        perturbed = flat[..., c0:].reshape(*lead, self.replicas, self.segment_length(1))
        shared = np.broadcast_to(control_full[..., None, : self.shared], (*lead, self.replicas, self.shared))
        swaps = control_full[..., self.shared :].reshape(*lead, self.replicas, 2 * self.m)
        return perturbed, np.concatenate([shared, swaps], axis=-1), control_full

    def control_train_columns(self) -> np.ndarray:
        """Columns of the control's segment holding ``P_train`` and every removed sample."""
        removed = np.concatenate([self.shared + 2 * self.m * k + np.arange(self.m) for k in range(self.replicas)])
        return np.concatenate([self.train_columns, removed]).astype(np.int64)


def make_probe_set(
    train_indices: np.ndarray,
    holdout_indices: np.ndarray,
    swaps: Sequence[Sequence[tuple[int, int]]] | Sequence[tuple[int, int]],
    n_train_probes: int,
    n_heldout_probes: int,
    seed: int,
) -> ProbeSet:
    """Seeded probe set: ``n_train_probes`` samples of ``S`` that are not swapped out, and
    ``n_heldout_probes`` held-out samples that are not swapped in. ``swaps`` is one list of
    ``(i, z')`` pairs per replica (or one pair per replica)."""
    per_replica = tuple(
        tuple((int(i), int(z)) for i, z in (pairs if isinstance(pairs[0], (tuple, list)) else [pairs]))
        for pairs in swaps
    )
    rng = np.random.default_rng([seed, 0x9B0BE])
    replaced = np.asarray([i for pairs in per_replica for i, _ in pairs], dtype=np.int64)
    replacement = np.asarray([z for pairs in per_replica for _, z in pairs], dtype=np.int64)
    others = np.setdiff1d(np.asarray(train_indices), replaced)
    extra = rng.choice(others, size=min(n_train_probes, len(others)), replace=False) if n_train_probes else np.zeros(0, np.int64)
    pool = np.setdiff1d(np.asarray(holdout_indices), replacement)
    if len(pool) == 0:
        raise ValueError("no held-out samples are left for P_test after the swaps; raise holdout_fraction or lower swaps")
    heldout = np.sort(rng.choice(pool, size=min(n_heldout_probes, len(pool)), replace=False).astype(np.int64))
    return ProbeSet(np.sort(np.asarray(extra, dtype=np.int64)), heldout, per_replica)
