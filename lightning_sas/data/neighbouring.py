"""Neighbouring datasets ``S^(i)``: ``S`` with one (or a few) samples replaced."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from torch.utils.data import Dataset

__all__ = ["NeighbouringDataset", "split_holdout", "choose_replacements", "choose_swaps", "auto_swaps",
           "auto_holdout_size"]

#: the default number of swaps per replica, from the bias study (m = 1, 8, 32, 128) and the
#: calibration study (m = 11 against 32 on scikit-learn's digits) in the docs
DEFAULT_SWAPS = 32
#: the share of ``S`` that ``swaps="auto"`` swaps per replica at most (both studies ran m / |S|
#: up to 3.6 % without a measurable bias)
AUTO_SWAP_SHARE = 0.04
#: the ``P_test`` points ``swaps="auto"`` keeps (at most half the held-out split)
MIN_HELDOUT_PROBES = 128
#: the share of the data held out by default, when that is larger than what the swaps need
DEFAULT_HOLDOUT_FRACTION = 0.1


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
        #: set by :meth:`from_plan`: the whole dataset, the plan and this run's index in it
        self.base: Any = None
        self.plan: dict[str, Any] | None = None
        self.run: int | None = None

    @classmethod
    def from_plan(cls, dataset: Any, plan: Mapping[str, Any], run: int) -> "NeighbouringDataset":
        """Run ``run``'s training set of a ``lightning-sas perturb`` plan: ``S`` (the plan's
        ``train_indices`` of ``dataset``; its held-out indices are never trained on) with the run's
        swaps ``{i: j}`` (dataset indices: ``dataset[i]`` replaced by ``dataset[j]``). Run 0 is
        the control (``S`` itself). Positions in the result are positions in ``train_indices``."""
        from torch.utils.data import Subset

        train = [int(i) for i in plan["train_indices"]]
        position = {i: p for p, i in enumerate(train)}
        replace = {int(i): int(j) for i, j in plan["runs"][run]["replace"].items()}
        out = cls(Subset(dataset, train), {position[i]: dataset[j] for i, j in replace.items()})
        # what ProbeLosses needs to probe every run at the same points: the whole dataset (the
        # swapped samples of every run) and the plan with this run's place in it
        out.base, out.plan, out.run = dataset, dict(plan), int(run)
        return out

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


def split_holdout(n: int, holdout_fraction: float | None, seed: int, min_holdout: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``range(n)`` into sorted, disjoint (train ``S``, held-out) index arrays.

    The held-out side has ``round(n * holdout_fraction)`` samples, but at least ``min_holdout``
    (a small dataset still gets the held-out samples an estimate needs; with
    ``holdout_fraction=None`` exactly ``min_holdout``); ``S`` keeps at least 2.
    The split depends on ``(n, seed)`` and the held-out size only."""
    if holdout_fraction is not None and not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction!r}")
    n_hold = max(0 if holdout_fraction is None else int(round(n * holdout_fraction)), int(min_holdout))
    if n_hold < 1 or n - n_hold < 2:
        raise ValueError(
            f"a training set of {n} samples is too small: the held-out split needs {n_hold} samples "
            f"(holdout_fraction={holdout_fraction}, at least {min_holdout}) and S at least 2; use more data, "
            "fewer replicas or swaps, or the multi-run protocol"
        )
    perm = np.random.default_rng([seed, 0x5A5]).permutation(n)
    return np.sort(perm[n_hold:]), np.sort(perm[:n_hold])


def auto_swaps(n_train: int, n_holdout: int, k: int, default: int = DEFAULT_SWAPS) -> int:
    """``swaps="auto"``: ``m = min(default, round(4 % of |S|), (n_holdout - p) // k)``, at least 1,
    with ``p = min(128, n_holdout // 2)`` held-out points kept for ``P_test`` after the ``k * m``
    replacements (one at least)."""
    keep = max(1, min(MIN_HELDOUT_PROBES, n_holdout // 2))
    return max(1, min(default, int(round(AUTO_SWAP_SHARE * n_train)), (n_holdout - keep) // max(k, 1)))


def auto_holdout_size(n: int, k: int, m: int | None = None) -> int:
    """The held-out split of ``n`` samples when ``holdout_fraction`` is not given: 10 % of the
    data, or room for ``k`` replicas of ``m`` swaps (``DEFAULT_SWAPS`` for ``swaps="auto"``) and
    128 ``P_test`` points when that is more, at most half the data; at least ``k + 1``.

    ``max(round(0.1 n), min(k m + 128, n // 2), k + 1)``: 400 of 4000 samples at K = 4, 256 of
    1200 (where 10 % would leave m = 11 swaps and 76 ``P_test`` points)."""
    need = k * (DEFAULT_SWAPS if m is None else m) + MIN_HELDOUT_PROBES
    return max(int(round(DEFAULT_HOLDOUT_FRACTION * n)), min(need, n // 2), k + 1)


def resolve_swaps(n: int, holdout_fraction: float | None, k: int, swaps: int | str,
                  names: tuple[str, str, str] = ("swaps", "replicas", "holdout_fraction")) -> tuple[int, int]:
    """``(m, held-out size)`` for ``n`` samples, ``k`` perturbed replicas (or runs) and ``swaps``
    (an integer m or ``"auto"``: :func:`auto_swaps`).

    The held-out split has ``round(n * holdout_fraction)`` samples, at least ``k + 1`` (a small
    data set still gets one replacement per replica and a ``P_test`` point); with
    ``holdout_fraction=None`` (the default) :func:`auto_holdout_size`. m swaps need
    ``k * m + 1`` of them. An m that does not fit is a ``ValueError`` naming the arguments as the
    caller spells them (``names``: swaps, replicas, holdout fraction)."""
    auto = str(swaps) == "auto"
    if not auto and (isinstance(swaps, bool) or not str(swaps).isdigit() or int(swaps) < 1):
        raise ValueError(f"{names[0]} must be 'auto' or a positive integer, got {swaps!r}")
    if holdout_fraction is None:
        n_hold = auto_holdout_size(n, k, None if auto else int(swaps))
    else:
        n_hold = max(int(round(n * holdout_fraction)), k + 1)
    if auto:
        return auto_swaps(n - n_hold, n_hold, k), n_hold
    m = int(swaps)
    held_from = (f"the default held-out split (at most half) of {n} samples" if holdout_fraction is None
                 else f"{names[2]}={holdout_fraction} of {n} samples")
    if k * m + 1 > n_hold:
        raise ValueError(
            f"{names[0]}={m} with {names[1]}={k} needs {k * m + 1} held-out samples (K * m replacements and one "
            f"P_test point), but {held_from} gives {n_hold}: lower {names[0]} (or use 'auto'), or raise {names[2]}."
        )
    return m, n_hold


def choose_swaps(
    train_indices: np.ndarray, holdout_indices: np.ndarray, k: int, m: int, seed: int, exclude: np.ndarray | None = None
) -> list[list[tuple[int, int]]]:
    """``k`` disjoint sets of ``m`` swaps ``(i, z')``: replica ``r`` replaces training indices
    ``i`` by held-out ``z'`` (all ``k * m`` of each side distinct), seeded. The draw is
    :func:`choose_replacements` of ``k * m`` pairs split in order, so ``m = 1`` gives the same
    pairs as one replacement per replica."""
    if m < 1:
        raise ValueError(f"swaps must be a positive integer, got {m!r}")
    pairs = choose_replacements(train_indices, holdout_indices, k * m, seed, exclude)
    return [pairs[r * m : (r + 1) * m] for r in range(k)]


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
