"""The replicas' data: the held-out split, the swaps, the probe batches and each step's batches.

The replicas index one sample space: the training data (``S`` and, without ``holdout=``, its
seeded held-out split), then the explicit ``holdout=`` samples after it. Replica ``k`` trains on
``S^(k)``: ``S`` with its ``m`` removed samples ``I_k`` swapped for its ``m`` held-out samples
``Z'_k``; the control trains on ``S``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Subset, TensorDataset, default_collate

from lightning_sas.callbacks._common import prepare_batch, warn_once
from lightning_sas.data import auto_swaps, choose_swaps, make_probe_set, resolve_swaps, split_holdout
from lightning_sas.data.loaders import SampleSource
from lightning_sas.data.probes import ProbeSet
from lightning_sas.isolation import observed
from lightning_sas.losses import per_sample_loss

__all__ = ["HoldoutPlan", "ReplicaData", "batch_device", "holdout_dataset", "is_index_list", "probe_batches", "refuse_late_fork_without_holdout",
           "refuse_resume_without_state", "replica_batch_size", "swaps_json"]


def is_index_list(value: Any) -> bool:
    """A 1-D sequence of integers (list, tuple, numpy array or tensor)?"""
    if isinstance(value, torch.Tensor):
        return value.ndim == 1 and not value.is_floating_point() and not value.is_complex()
    if isinstance(value, np.ndarray):
        return value.ndim == 1 and np.issubdtype(value.dtype, np.integer)
    return isinstance(value, (list, tuple)) and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)


def holdout_dataset(holdout: Any, source: SampleSource | None) -> Any:
    """The explicit ``holdout`` as a dataset: itself, or ``Subset(base, indices)`` for indices
    into the dataset of the training ``Subset`` (checked to leave them out). Without ``source``
    (before the run's data is known) indices come back as an array."""
    if not is_index_list(holdout):  # a Dataset (a list or array of integers is indices)
        if source is not None and holdout is source.dataset:
            raise ValueError("holdout= is the training dataset itself; pass samples the main run does not train on")
        if source is not None and holdout is getattr(source.dataset, "dataset", None):
            raise ValueError("holdout= is the dataset the training Subset draws from; pass the left-out indices "
                             "(holdout=indices) or a Dataset of samples the main run does not train on")
        return holdout
    indices = np.asarray(holdout.cpu() if isinstance(holdout, torch.Tensor) else holdout, dtype=np.int64).ravel()  # sync-ok: once, at train start
    if source is None:
        return indices
    train = source.dataset if not source.pooled else None
    if not isinstance(train, Subset):
        raise ValueError(
            "holdout= as indices needs the training data to be a torch.utils.data.Subset of the dataset they index "
            f"(the training dataset is {type(train).__name__ if train is not None else 'an iterable pool'}); train on "
            "Subset(dataset, kept_indices) and pass holdout=left_out_indices, or pass holdout= as a Dataset."
        )
    base = train.dataset
    if len(indices) == 0 or indices.min() < 0 or indices.max() >= len(base):
        raise ValueError(f"holdout= indices must lie in [0, {len(base)}) (the training Subset's dataset)")
    if len(np.unique(indices)) != len(indices):
        raise ValueError("holdout= indices must not repeat")
    trained = np.intersect1d(np.asarray(train.indices, dtype=np.int64), indices)
    if len(trained):
        raise ValueError(f"{len(trained)} holdout= indices (e.g. {int(trained[0])}) are in the training Subset: the "
                         "main run trains on them. Leave them out of the Subset.")
    return Subset(base, indices.tolist())  # sync-ok: host indices, at train start


def refuse_late_fork_without_holdout(fork_at: str | int, holdout: Any) -> None:
    """A fork after step 0 needs held-out samples the main run never trained on (``holdout=``)."""
    if fork_at != "start" and holdout is None:
        raise ValueError(
            f"fork_at={fork_at!r}: the main model trains on every training sample, so replicas forked from it "
            "later have already seen the samples they would hold out (contaminated). Train the main run on a Subset "
            "that leaves held-out samples out and pass them as holdout= (a Dataset, or the left-out indices into "
            "the Subset's dataset), or use fork_at='start'."
        )


def refuse_resume_without_state(resumed_step: int, has_replica_state: bool, fork_at: str | int, holdout: Any) -> None:
    """A run resumed past step 0 without the replicas' state cannot fork at "start" without
    ``holdout=``: the main model has trained on the held-out split by then."""
    if not has_replica_state and resumed_step > 0 and fork_at == "start" and holdout is None:
        raise ValueError(
            f"SASReplicas: the run starts at step {resumed_step} without replica state (resumed from a checkpoint "
            "saved without SASReplicas, or a second fit). Replicas forked now would start from weights already "
            "trained on the held-out split, without optimizer history of their own, and the estimate would be "
            "labelled as forked at step 0 "
            "(contaminated). Start the run from step 0 (no ckpt_path) with SASReplicas; or, if the main run never "
            "trained on some samples, pass them as holdout= (a Dataset, or indices into the dataset of a training "
            "Subset): the replicas then fork at the resume step (a late fork)."
        )


@dataclass(frozen=True)
class HoldoutPlan:
    """How ``n`` training samples become ``S`` and a held-out pool, and how many swaps it allows.

    ``external``: the size of the explicit ``holdout`` once read (0 before, or without one)."""

    replicas: int
    swaps: int | str
    holdout_fraction: float | None
    holdout: Any
    seed: int
    external: int = 0

    def resolve_swaps(self, n: int) -> tuple[int, int]:
        """``(m, held-out size)``: without an explicit held-out pool
        :func:`~lightning_sas.data.resolve_swaps` of the seeded split; with one, ``S`` is all ``n``
        samples and the pool must hold ``K * m + 1`` (``K`` replacements per swap, one ``P_test``
        point)."""
        if not self.external:
            return resolve_swaps(n, self.holdout_fraction, self.replicas, self.swaps)
        n_hold = self.external
        if n_hold < self.replicas + 1:
            raise ValueError(f"holdout= has {n_hold} samples; the replicas need at least {self.replicas + 1} (one "
                             "replacement per replica and one P_test point)")
        if self.swaps == "auto":
            return auto_swaps(n, n_hold, self.replicas), n_hold
        m = int(self.swaps)
        if self.replicas * m + 1 > n_hold:
            raise ValueError(f"swaps={m} with replicas={self.replicas} needs {self.replicas * m + 1} held-out samples (K * m "
                             f"replacements and one P_test point), but holdout= has {n_hold}: lower swaps (or use "
                             "swaps='auto'), or hold out more samples.")
        return m, n_hold

    def split(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``S`` and the held-out samples: with ``holdout=``, all ``n`` training samples and the
        ``len(holdout)`` after them; else the seeded split of ``range(n)``."""
        if self.holdout is not None:
            size = self.external or len(holdout_dataset(self.holdout, None))
            return np.arange(n, dtype=np.int64), np.arange(n, n + size, dtype=np.int64)
        return split_holdout(n, self.holdout_fraction, self.seed, min_holdout=self.resolve_swaps(n)[1])


def replica_batch_size(owner: object, trainer: Any, requested: int | None, loader_batch: int | None, available: int) -> int:
    """The replicas' batch: ``requested``, else the run's effective batch, the per-rank loader
    batch times ``world_size`` times ``accumulate_grad_batches`` (a replica takes one step per
    main optimizer step, on one global batch), at most ``available`` (``|S|``). One warning (per
    ``owner``) when it differs from the effective batch, naming both."""
    world = max(1, int(getattr(trainer, "world_size", 1) or 1))
    accumulate = max(1, int(getattr(trainer, "accumulate_grad_batches", 1) or 1))
    effective = loader_batch * world * accumulate if loader_batch else None
    chosen = min(requested or effective or 32, available)
    if chosen != effective:
        if effective is None:
            why = (f"the training loader has no batch_size (a batch sampler), so the replicas use "
                   f"{'batch_size=' + str(requested) if requested else 'a batch of 32'}")
        else:
            why = (f"the run's effective batch is {effective} (loader batch {loader_batch} x {world} rank(s) x "
                   f"accumulate_grad_batches={accumulate}); the replicas use {chosen}")
            why += (f" (batch_size={requested})" if requested and requested <= available
                    else f" (|S| = {available} samples)")
        warn_once(owner, "batch", f"SASReplicas: {why}. The replicas then train with another gradient noise than the "
                  "main run; pass batch_size=None (the default) to match the effective batch.")
    return chosen


def batch_device(batch: Any) -> torch.device:
    """The device of a batch's first tensor (CPU when it holds none)."""
    leaf = batch
    while isinstance(leaf, (list, tuple)):
        leaf = leaf[0]
    if isinstance(leaf, dict):
        leaf = next(iter(leaf.values()))
    return leaf.device if isinstance(leaf, torch.Tensor) else torch.device("cpu")


def swaps_json(swaps: Sequence[Sequence[tuple[int, int]]]) -> list[list[list[int]]]:
    """Each replica's swaps as ``[[i, z'], ...]`` (primitives: checkpoints and meta.json)."""
    return [[[int(i), int(z)] for i, z in pairs] for pairs in swaps]


class ReplicaData:
    """The samples, split, swaps and probe points of one run's replicas, and their batches.

    Built once at train start by :meth:`build`; :meth:`batches` is the only per-step call."""

    def __init__(self, trainer: Any, source: SampleSource, samples: SampleSource, external: int, m: int,
                 s_indices: np.ndarray, swaps: list[list[tuple[int, int]]], probe_set: ProbeSet, batch_size: int) -> None:
        self.trainer = trainer
        #: the run's training samples (a pool for iterable data)
        self.source = source
        #: the replicas' index space: the training samples, then the explicit ``holdout``
        self.samples = samples
        #: size of the explicit ``holdout`` (0: the held-out split of the training data)
        self.external = external
        self.m = m
        self.s_indices = s_indices
        #: each replica's swaps ``[(i, z'), ...]`` (indices into ``samples``)
        self.swaps = swaps
        self.probe_set = probe_set
        self.batch_size = batch_size
        #: per replica: sorted removed indices and their replacements, for the batch lookup
        self.swap_lookup: list[tuple[np.ndarray, np.ndarray]] = []
        for pairs in swaps:
            removed = np.asarray([i for i, _ in pairs], dtype=np.int64)
            order = np.argsort(removed)
            self.swap_lookup.append((removed[order], np.asarray([z for _, z in pairs], dtype=np.int64)[order]))

    @classmethod
    def build(cls, owner: object, trainer: Any, source: SampleSource, plan: HoldoutPlan, batch_size: int | None,
              num_train_probes: int, num_heldout_probes: int, saved_swaps: list[Any] | None) -> "ReplicaData":
        """Read the held-out pool, resolve ``m``, split, choose the swaps (``saved_swaps``: a
        checkpoint's, never redrawn) and the probe points. ``owner`` keys the warnings."""
        n = len(source)
        samples = source
        if plan.holdout is not None:
            held = holdout_dataset(plan.holdout, source)
            plan = HoldoutPlan(plan.replicas, plan.swaps, plan.holdout_fraction, plan.holdout, plan.seed, len(held))
            samples = SampleSource.of(source.loader, ConcatDataset([source.dataset, held]))
        m = plan.resolve_swaps(n)[0]
        s_idx, heldout = plan.split(n)
        chosen_batch = replica_batch_size(owner, trainer, batch_size, getattr(source.loader, "batch_size", None), len(s_idx))
        if saved_swaps is not None:
            swaps = [[(int(i), int(z)) for i, z in pairs] for pairs in saved_swaps]
            if len(swaps) != plan.replicas or any(len(p) != m for p in swaps):
                raise ValueError(f"the checkpoint's swaps ({len(swaps)} replicas) do not fit replicas={plan.replicas}, "
                                 f"swaps={m}: resume with the settings of the checkpointed run")
        else:
            swaps = choose_swaps(s_idx, heldout, plan.replicas, m, plan.seed)
        probes = make_probe_set(s_idx, heldout, swaps, num_train_probes, num_heldout_probes, plan.seed)
        return cls(trainer, source, samples, plan.external, m, s_idx, swaps, probes, chosen_batch)

    def fetch(self, indices: np.ndarray, device: torch.device) -> Any:
        """Collate ``samples[i]`` for ``indices``; a ``TensorDataset`` batched by
        ``default_collate`` is indexed in one call per tensor (same result, no per-sample Python)."""
        source = self.samples
        if isinstance(source.dataset, TensorDataset) and source.collate_fn is default_collate:
            index = torch.from_numpy(np.ascontiguousarray(indices, dtype=np.int64))
            return prepare_batch(self.trainer, [t[index] for t in source.dataset.tensors], device)
        return prepare_batch(self.trainer, source.collate(source.read(indices)), device)

    def batches(self, positions: list[np.ndarray], rows: Sequence[int], device: torch.device) -> list[Any]:
        """Batches of the global replicas ``rows`` (``positions``: one array of positions in ``S``
        per global replica), replica ``r`` from ``S^(r)`` (the control ``r = 0`` from ``S``);
        replicas that draw the same positions and miss their removed samples share one batch."""
        cache: dict[int, Any] = {}
        out: list[Any] = []
        for r in rows:
            pos = positions[r]
            indices = self.s_indices[pos]
            if r > 0:
                removed, added = self.swap_lookup[r - 1]
                where = np.minimum(np.searchsorted(removed, indices), len(removed) - 1)
                hit = removed[where] == indices
                if hit.any():  # replica r trains on S^(r): its removed samples are swapped for its added ones
                    out.append(self.fetch(np.where(hit, added[where], indices), device))
                    continue
            key = id(pos)
            if key not in cache:
                cache[key] = self.fetch(indices, device)
            out.append(cache[key])
        return out


def probe_batches(trainer: Any, pl_module: Any, data: ReplicaData, replicas: int, chunk: int,
                  loss_fn: Callable | None) -> tuple[list[Any], list[list[Any]]]:
    """The shared probe points (``P_train`` and ``P_test``) in batches of ``chunk``, and each
    replica's ``2m`` swapped samples (``[chunk][replica]``), on the module's device; the
    per-sample loss is tried once on the first swap batch. A failure is one ``ValueError``
    naming the way out."""
    samples, probes, device = data.samples, data.probe_set, pl_module.device
    shared = probes.shared_indices
    try:
        shared_batches = [prepare_batch(trainer, samples.collate(samples.samples(shared[i : i + chunk])), device)
                          for i in range(0, len(shared), chunk)]
        swap_points = [probes.replica_swap_indices(k) for k in range(1, replicas + 1)]
        swap_batches = [
            [prepare_batch(trainer, samples.collate(samples.samples(points[i : i + chunk])), device) for points in swap_points]
            for i in range(0, 2 * data.m, chunk)
        ]
        with observed(pl_module, trainer):
            first = per_sample_loss(pl_module, swap_batches[0][0], loss_fn)
        if first.ndim != 1 or first.shape[0] != min(chunk, 2 * data.m):
            raise ValueError(f"it returned shape {tuple(first.shape)}, expected ({min(chunk, 2 * data.m)},)")
    except Exception as err:
        if callable(getattr(pl_module, "sas_per_sample_loss", None)):  # it comes before any loss_fn
            way = ("Make the module's `sas_per_sample_loss(self, batch) -> Tensor[B]` return one loss per sample of a "
                   "training batch (it is used before any loss_fn).")
        else:
            way = ("Define `sas_per_sample_loss(self, batch) -> Tensor[B]` on the module or pass loss_fn=(module, "
                   "batch) -> Tensor[B] (a callable or an import path).")
        raise ValueError(f"SASReplicas needs the per-sample loss of probe samples ({type(err).__name__}: {err}). {way}") from err
    return shared_batches, swap_batches
