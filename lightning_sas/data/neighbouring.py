"""Neighbouring datasets ``S^(i)``: ``S`` with one (or a few) samples replaced."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from torch.utils.data import Dataset

__all__ = ["NeighbouringDataset", "split_holdout", "choose_replacements"]


class NeighbouringDataset(Dataset):
    """``S`` with ``replace={i: z'}``: same length, ``ds[i]`` is ``z'`` for replaced ``i``.

    Two datasets that differ in one sample are *neighbours*; statistical algorithmic stability
    compares the time-averaged losses of training on neighbours (Chandramoorthy et al., 2022).
    """

    def __init__(self, dataset: Any, replace: Mapping[int, Any]) -> None:
        n = len(dataset)
        for i in replace:
            if not isinstance(i, (int, np.integer)) or not 0 <= int(i) < n:
                raise ValueError(f"replace: index {i!r} is not a valid index of a dataset of length {n}")
        self.dataset = dataset
        self.replace = {int(i): z for i, z in replace.items()}

    @classmethod
    def from_indices(cls, dataset: Any, replace_with: Mapping[int, int], source: Any = None) -> "NeighbouringDataset":
        """Replace ``dataset[i]`` by ``source[j]`` for every ``i: j`` (``source`` defaults to ``dataset``)."""
        source = dataset if source is None else source
        m = len(source)
        for j in replace_with.values():
            if not isinstance(j, (int, np.integer)) or not 0 <= int(j) < m:
                raise ValueError(f"replace_with: source index {j!r} is not valid for a source of length {m}")
        return cls(dataset, {int(i): source[int(j)] for i, j in replace_with.items()})

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        index = int(index)
        if index in self.replace:
            return self.replace[index]
        return self.dataset[index]


def split_holdout(n: int, holdout_fraction: float, seed: int, min_holdout: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``range(n)`` into sorted, disjoint (train ``S``, held-out) index arrays.

    The held-out side has ``round(n * holdout_fraction)`` samples, but at least ``min_holdout``
    (a small dataset still gets the held-out samples an estimate needs); ``S`` keeps at least 2.
    The split depends on ``(n, seed)`` and the held-out size only."""
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction!r}")
    n_hold = max(int(round(n * holdout_fraction)), int(min_holdout))
    if n_hold < 1 or n - n_hold < 2:
        raise ValueError(
            f"a training set of {n} samples is too small: the held-out split needs {n_hold} samples "
            f"(holdout_fraction={holdout_fraction}, at least {min_holdout}) and S at least 2; use more data, "
            "fewer replicas or swaps, or the multi-run protocol"
        )
    perm = np.random.default_rng([seed, 0x5A5]).permutation(n)
    return np.sort(perm[n_hold:]), np.sort(perm[:n_hold])


def choose_replacements(
    train_indices: np.ndarray, holdout_indices: np.ndarray, k: int, seed: int, exclude: np.ndarray | None = None
) -> list[tuple[int, int]]:
    """``k`` pairs ``(i_k, z'_k)``: distinct replaced training indices and distinct held-out
    replacements (none in ``exclude``), seeded."""
    train_indices = np.asarray(train_indices)
    candidates = np.asarray(holdout_indices)
    if exclude is not None:
        candidates = np.setdiff1d(candidates, np.asarray(exclude))
    if k < 1 or k > len(train_indices) or k > len(candidates):
        raise ValueError(f"cannot choose {k} replacements from {len(train_indices)} training and {len(candidates)} held-out samples")
    rng = np.random.default_rng([seed, 0xC0FFEE])
    replaced = rng.choice(train_indices, size=k, replace=False)
    replacements = rng.choice(candidates, size=k, replace=False)
    return [(int(i), int(j)) for i, j in zip(replaced, replacements)]
