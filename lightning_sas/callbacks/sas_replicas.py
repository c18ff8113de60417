"""``SASReplicas``: the in-run estimate of statistical algorithmic stability (SAS)."""

from __future__ import annotations

import copy
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import ConcatDataset, Subset, TensorDataset, default_collate

from lightning_sas import _compat as pl  # pl.Trainer, pl.LightningModule: of either namespace
from lightning_sas._compat import lightning_module
from lightning_sas.callbacks._common import entry_completed, prepare_batch, resolve_callable, sharded_parameters, warn_once
from lightning_sas.validation import MAX_COUNT, check_bool, check_choice, check_float, check_int, check_memory, check_seed
from lightning_sas.callbacks.base import FlushContext, StreamCallback
from lightning_sas.data import auto_swaps, choose_swaps, make_probe_set, resolve_swaps, split_holdout
from lightning_sas.data.loaders import DEFAULT_POOL_SIZE, SampleSource, is_map_style, training_source
from lightning_sas.diagnostics import probe_window_start
from lightning_sas.isolation import isolated_rng, observed
from lightning_sas.losses import per_sample_loss
from lightning_sas.losses import PerSampleLoss
from lightning_sas.metrics.sas_estimate import SASEstimate
from lightning_sas.replicas.generic import GenericReplicas
from lightning_sas.replicas.placement import (
    NoLocalReplicas,
    distributed_ready,
    merge_engine_states,
    rank_seed,
    replica_rows,
    select_engine_state,
    to_cpu,
)
from lightning_sas.replicas.rng import PrivateRNG
from lightning_sas.replicas.sampler import ReplicaSampler
from lightning_sas.replicas.stacked import StackedReplicas, stacked_unsupported_reason
from lightning_sas.replicas.trainer_view import WAYS_OUT, ReplicaTrainerError

__all__ = ["SASReplicas", "SAS_KEYS", "replica_rows"]

#: the most perturbed replicas a run may have (each a copy of the model and its optimizer)
MAX_REPLICAS = 1024

#: summary keys added by the replicas
SAS_KEYS = (
    "sas_max", "sas_max_se", "sas_mean", "sas_mean_se", "sas_replaced", "sas_replaced_se",
    "stability_gap", "stability_gap_se", "stability_gap_removed", "stability_gap_removed_se",
    "stability_gap_added", "stability_gap_added_se", "sas_max_null", "sas_mean_null", "sas_replaced_null",
    "sas_max_resolved", "sas_mean_resolved", "sas_replaced_resolved", "stability_gap_resolved",
    "stability_gap_removed_resolved", "stability_gap_added_resolved", "swaps",
    "sas_resolved", "sas_converged", "paper_coefficient", "paper_coefficient_se",
    "mean_pairwise_abs_difference", "mean_pairwise_abs_difference_se", "replicas", "replica_path",
    "replica_sampler", "fork_step", "steps_since_fork", "replica_checkpoint_bytes",
    "sas_critical_t", "sas_mean_critical_t", "stability_gap_max_share", "control_heldout_gap", "control_heldout_gap_se",
    "control_train_loss", "control_heldout_loss",
)


class SASReplicas(StreamCallback):
    r"""Estimate SAS while the model trains, with ``K`` perturbed replicas and one control.

    At ``fork_at`` (default ``"start"``: the main model's initial weights at ``on_train_start``)
    the callback forks a **control** replica, trained on ``S`` (the training data minus a seeded
    held-out split of ``holdout_fraction``), and ``K`` **perturbed** replicas, replica ``k``
    trained on ``S^(k)``: ``S`` with ``m`` samples ``I_k`` swapped for ``m`` held-out samples
    ``Z'_k`` (``swaps``; disjoint across replicas). Every main optimizer step, every replica takes
    one step on a batch from one seeded sampler (``sampler="common"``: common random numbers) or
    from its own (``"independent"``: the paper's protocol). Every ``probe_every`` steps each
    replica evaluates per-sample losses on the shared probe sets ``P_train`` and ``P_test``
    (``P_test`` from the held-out split, disjoint from the swaps) and on its own ``2m`` swapped
    samples, the control on every replica's; a :class:`~lightning_sas.metrics.SASEstimate`
    metric keeps their late-phase time averages. With
    :math:`d_k(z) = \langle l_k(z)\rangle - \langle l_0(z)\rangle` (Chandramoorthy et al.,
    NeurIPS 2022, arXiv 2208.07951):

    * ``sas_max`` = mean_k max over ``I_k ∪ Z'_k ∪ P_test`` of ``|d_k(z)|`` (the definition's sup,
      averaged over the random swaps: the average case, not the worst case);
    * ``sas_mean`` = mean over k and ``P_test`` of ``|d_k(z)|`` (held-out sensitivity);
    * ``sas_replaced`` = mean over k and ``I_k`` of ``|d_k(i)|``;
    * ``stability_gap``: the replace-one estimate of the generalization gap from both sides of
      every swap, the mean over replicas of each replica's mean of ``d_k(i)`` (``i`` in ``I_k``,
      the removed side ``stability_gap_removed``) and ``-d_k(z')`` (``z'`` in ``Z'_k``, the
      added side ``stability_gap_added``); next to the gap it estimates, ``control_heldout_gap``,
      measured directly on the control replica (``P_test`` minus ``P_train`` and the removed
      samples) against the same held-out split (:func:`~lightning_sas.stats.sas.sas_statistics`,
      :func:`~lightning_sas.stats.sas.heldout_gap`); ``ergodic_gap`` stays the main model's;
    * each with a standard error (the spread over replicas, Student's t with K - 1 dof), a
      null level and a ``*_resolved`` flag; ``sas_converged`` compares the last two doublings of
      the averaging window; ``paper_coefficient`` is the authors' statistic over the neighbouring
      pairs (control, k).

    Paths: ``"fast"`` stacks the replicas' parameters (``torch.func``) and needs ``loss_fn`` (or
    the module's ``sas_per_sample_loss``) and an elementwise optimizer; ``"generic"`` deep-copies
    the LightningModule and calls its own ``training_step``; ``"auto"`` tries fast, then generic,
    and logs why.

    Under DDP the replicas are spread over the ``W`` ranks round-robin (see :func:`replica_rows`:
    rank ``r`` runs global replicas ``j`` with ``j % W == r``, so the control is on rank 0; ranks
    beyond ``K + 1`` run none). Every rank draws the same replica batches from the dataset with
    the seeded sampler (not Lightning's ``DistributedSampler``) and keeps only its own replicas'
    rows in the metric; the rows are summed at flush in the monitor's packed all-reduce, after its
    flag all-reduce (did a replica fail on some rank?): no collective of its own per flush, and
    one gather (plus the time averages' sync) per checkpoint.
    Without randomness in the model the statistics equal one process's (to rounding). The
    replicas' private random stream (dropout) is one per rank (rank 0's is the one-process
    stream), so a replica's dropout draws depend on the placement: same distribution, not the
    same draws. Checkpoints (``state_dict`` must then be called on every rank, as Lightning does)
    hold the full state of all ``K + 1`` replicas in the one-process format, gathered onto rank
    0, and the time averages summed over ranks; on load each rank keeps its own replicas, so a
    run may resume on another number of ranks (exact but for the dropout streams; warned).

    Args:
        replicas: ``K >= 1`` perturbed replicas.
        swaps: ``m``, the samples each replica swaps (``"auto"``: the default of the bias study,
            at most about 1 % of ``S`` and what the held-out split allows; see
            :meth:`resolve_swaps`). ``swaps=1`` is v0.1's one-replacement estimator.
        fork_at: ``"start"``, ``"late_phase"`` (first stable late-phase start) or a step (late
            forks need ``holdout``).
        sampler: ``"common"`` or ``"independent"``.
        holdout_fraction: share of the training data held out for replacements and ``P_test``
            (without ``holdout``).
        num_train_probes, num_heldout_probes: sizes of ``P_train`` (plus every ``i_k``) and ``P_test``.
        probe_every: steps between probe evaluations of all replicas.
        loss_fn: per-sample loss ``(module, batch) -> Tensor[B]`` or its import path.
        path: ``"auto"``, ``"fast"`` or ``"generic"``.
        batch_size: replica batch size (default: the run's effective batch, the loader's batch
            x ``world_size`` x ``accumulate_grad_batches``; another value is warned about once).
        holdout: held-out samples the main run never trains on, for late forks (``fork_at``
            ``"late_phase"`` or a step, or a resume from a checkpoint without replica state): a
            map-style ``Dataset``, or indices into the dataset of a training
            ``torch.utils.data.Subset`` that leaves them out (checked: disjoint from the Subset's
            indices). The replicas then train on all of the training data (``S``) and take their
            replacements and ``P_test`` from ``holdout`` (``holdout_fraction`` is not used).
            Default: a seeded split of ``holdout_fraction`` of the training data, which the main
            run trains on, so only ``fork_at="start"`` is allowed.
        holdout_excluded: removed (it excluded nothing: the split was drawn from the data the main
            run trains on); passing it is an error that names ``holdout=``.
        checkpoint_replicas: save the replicas in checkpoints (exact resume; the growth is
            reported as ``replica_checkpoint_bytes``).
        flush_every, max_blocks: see :class:`~lightning_sas.callbacks.base.StreamCallback` and
            :class:`~lightning_sas.metrics.TimeAverage`.
        probe_batch_size: probe samples per forward pass of a replica.
        pool_size: samples read once from iterable (not map-style) training data, which then
            play the role of ``S`` and its held-out split for the replicas (the attribute
            ``pooled`` says so); map-style data is indexed in place.
        seed: seed of the split, the replacements, the probes, the sampler and the replicas' RNG.

    Small datasets: the held-out split holds at least ``K + 1`` samples (one replacement per
    replica and one ``P_test`` point) and the replica batch size is at most ``|S|``.
    A replica is a deep copy that sees a read-only view of the trainer
    (:class:`~lightning_sas.replicas.trainer_view.ReplicaTrainerView`): a ``configure_optimizers``
    that reads ``self.trainer.estimated_stepping_batches`` works, ``self.log`` does nothing, and
    manual optimization runs the module's own ``training_step`` with the replica's optimizers.
    """

    def __init__(
        self,
        replicas: int = 4,
        swaps: int | str = "auto",
        fork_at: str | int = "start",
        sampler: str = "common",
        holdout_fraction: float = 0.1,
        num_train_probes: int = 200,
        num_heldout_probes: int = 200,
        probe_every: int = 10,
        loss_fn: PerSampleLoss | str | None = None,
        path: str = "auto",
        batch_size: int | None = None,
        holdout: Any = None,
        holdout_excluded: Any = None,
        checkpoint_replicas: bool = True,
        flush_every: int = 400,
        max_blocks: int = 128,
        probe_batch_size: int = 512,
        pool_size: int = DEFAULT_POOL_SIZE,
        seed: int = 0,
    ) -> None:
        super().__init__(flush_every=flush_every)
        if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= MAX_REPLICAS:
            raise ValueError(f"replicas must be an integer K >= 1 (perturbed replicas, at most {MAX_REPLICAS}: each is a "
                             f"copy of the model and its optimizer), got {replicas!r}")
        if not (isinstance(swaps, str) and swaps == "auto") and (isinstance(swaps, bool) or not isinstance(swaps, int)
                                                                  or not 1 <= swaps <= MAX_COUNT):
            raise ValueError(f"swaps must be 'auto' or a positive integer m (samples swapped per replica), got {swaps!r}")
        if not ((isinstance(fork_at, str) and fork_at in ("start", "late_phase"))
                or (isinstance(fork_at, int) and not isinstance(fork_at, bool) and 0 <= fork_at <= 1 << 62)):
            raise ValueError(f"fork_at must be 'start', 'late_phase' or a non-negative step, got {fork_at!r}")
        sampler = check_choice("sampler", sampler, ("common", "independent"))
        path = check_choice("path", path, ("auto", "fast", "generic"))
        holdout_fraction = check_float("holdout_fraction", holdout_fraction, 0.0, 1.0, low_open=True, high_open=True)
        probe_every = check_int("probe_every", probe_every, 1)
        num_heldout_probes = check_int("num_heldout_probes", num_heldout_probes, 1)
        num_train_probes = check_int("num_train_probes", num_train_probes, 0)
        batch_size = check_int("batch_size", batch_size, 1, allow_none=True)
        pool_size = check_int("pool_size", pool_size, 2)
        probe_batch_size = check_int("probe_batch_size", probe_batch_size, 1)
        max_blocks = check_int("max_blocks", max_blocks, 4, even=True)
        if holdout_excluded is not None:
            raise ValueError(
                "holdout_excluded was removed: it excluded nothing (the held-out split was drawn from the data the main "
                "run trains on). For late forks train the main run on a Subset that leaves held-out samples out and pass "
                "them as holdout= (a Dataset, or the left-out indices into the Subset's dataset)."
            )
        if holdout is not None and not (is_map_style(holdout) or _is_index_list(holdout)):
            raise ValueError(f"holdout must be None, a map-style Dataset or a 1-D sequence of integer indices, got "
                             f"{type(holdout).__name__}")
        checkpoint_replicas = check_bool("checkpoint_replicas", checkpoint_replicas)
        seed = check_seed("seed", seed)
        points = (replicas + 1) * (num_train_probes + num_heldout_probes)
        check_memory("SASReplicas", [("block summary", 3 * max_blocks * points * 8,
                                      f"max_blocks ({max_blocks}) x 3 x (replicas + 1) ({replicas + 1}) x "
                                      f"(num_train_probes + num_heldout_probes) ({num_train_probes + num_heldout_probes}) "
                                      "x 8 bytes")],
                     "lower max_blocks, replicas or the probe counts")
        self.replicas = replicas
        self.swaps = swaps
        self.fork_at = fork_at
        self.sampler_mode = sampler
        self.holdout_fraction = holdout_fraction
        self.num_train_probes = num_train_probes
        self.num_heldout_probes = num_heldout_probes
        self.probe_every = probe_every
        self.loss_fn = resolve_callable(loss_fn, "loss_fn")
        self.path = path
        self.batch_size = batch_size
        self.holdout = holdout
        self.checkpoint_replicas = checkpoint_replicas
        self.max_blocks = max_blocks
        self.probe_batch_size = probe_batch_size
        self.pool_size = pool_size
        self.seed = seed
        self._reset_state()

    def _reset_state(self) -> None:
        self.engine: GenericReplicas | StackedReplicas | None = None
        self.metric: SASEstimate | None = None
        self.enabled = True
        self.fork_step: int | None = None
        self.fallback_reason: str | None = None
        #: why the estimate stopped (a replica failed mid-run), for ``summary()["unavailable"]``
        self._off_reason: str | None = None
        self._meta_written = False
        self._source: SampleSource | None = None
        #: the samples the replicas index: the training data, then the explicit ``holdout``
        self._data: SampleSource | None = None
        #: size of the explicit ``holdout`` (0: the held-out split of the training data)
        self._external = 0
        self.pooled = False
        self._trainer: Any = None
        self._s_indices = np.zeros(0, dtype=np.int64)
        #: the resolved m and each replica's swaps [(i, z'), ...] (dataset indices)
        self.m: int | None = None
        self._swaps: list[list[tuple[int, int]]] = []
        #: per replica: sorted removed indices and their replacements, for the batch lookup
        self._swap_lookup: list[tuple[np.ndarray, np.ndarray]] = []
        self._probe_batches: list[Any] = []
        self._swap_batches: list[list[Any]] = []
        self._sampler: ReplicaSampler | None = None
        self._rng = PrivateRNG(self.seed + 1)
        self._batches_seen = 0
        self._index = 0
        self._steps_taken = 0
        self._last: dict[str, Any] = {}
        self._restored: dict[str, Any] | None = None
        self._checkpoint_bytes = 0
        self._epoch = 0
        #: DDP placement: world size, rank and the global indices of this rank's replicas
        self._world = 1
        self._rank = 0
        self._rows: list[int] = list(range(self.replicas + 1))
        self._rng_rank = 0
        self._local_failed = False

    def config(self) -> dict[str, Any]:
        return {
            "replicas": self.replicas,
            "swaps": str(self.swaps) if self.m is None else self.m,
            "fork_at": str(self.fork_at),
            "replica_sampler": self.sampler_mode,
            "holdout_fraction": self.holdout_fraction,
            "replica_holdout": "split" if self.holdout is None else "explicit",
            "replica_num_train_probes": self.num_train_probes,
            "replica_num_heldout_probes": self.num_heldout_probes,
            "replica_probe_every": self.probe_every,
            "replica_path": self.path,
            "seed": self.seed,
        }

    # -- the split, for users who exclude it from the main run ----------------------------
    def holdout_indices(self, n: int) -> np.ndarray:
        """Indices of the held-out split the replicas take from a training set of size ``n``
        (without ``holdout=``; the main run trains on them, which is why only ``fork_at="start"``
        is allowed then). With ``holdout=``, ``n`` to ``n + len(holdout) - 1``: the explicit
        held-out samples, after the training data in the replicas' index space."""
        return self._split(n)[1]

    def resolve_swaps(self, n: int) -> tuple[int, int]:
        """``(m, held-out size)`` for a training set of ``n`` samples
        (:func:`~lightning_sas.data.resolve_swaps`: ``swaps="auto"`` takes the default m from the
        bias study, at most about 1 % of ``S`` and what the held-out pool allows; an explicit
        ``swaps`` that does not fit is an error naming ``swaps`` and ``holdout_fraction``). With
        ``holdout=`` the held-out pool is that data, and ``S`` is all ``n`` training samples."""
        if not self._external:
            return resolve_swaps(n, self.holdout_fraction, self.replicas, self.swaps)
        n_hold = self._external
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

    def _split(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``S`` and the held-out samples: with ``holdout=``, all ``n`` training samples and the
        ``len(holdout)`` after them; else the seeded split of ``range(n)``."""
        if self.holdout is not None:
            size = self._external or len(self._holdout_dataset(None))
            return np.arange(n, dtype=np.int64), np.arange(n, n + size, dtype=np.int64)
        return split_holdout(n, self.holdout_fraction, self.seed, min_holdout=self.resolve_swaps(n)[1])

    def should_probe(self, index: int) -> bool:
        """Evaluate the replicas' probes at stream entry ``index``? Default: every ``probe_every``."""
        return index % self.probe_every == 0

    # -- setup: data checks and fork ------------------------------------------------------
    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self.attach(trainer, pl_module)

    def attach(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Check the data and the module, choose the split, replacements and probes; fork now
        when ``fork_at="start"``. Raises one clear error for unsupported setups.

        Everything here observes the run: the training loader is never iterated (an iterable
        dataset is read into a pool from a fresh iterator), its ``collate_fn`` is called only when
        ``default_collate`` cannot batch the samples, and every read and dry run happens with the
        global generators forked."""
        if self.fork_at != "start" and self.holdout is None:
            raise ValueError(
                f"fork_at={self.fork_at!r}: the main model trains on every training sample, so replicas forked from it "
                "later have already seen the samples they would hold out (contaminated). Train the main run on a Subset "
                "that leaves held-out samples out and pass them as holdout= (a Dataset, or the left-out indices into "
                "the Subset's dataset), or use fork_at='start'."
            )
        sharding = sharded_parameters(trainer, pl_module)
        if sharding is not None:
            raise ValueError(
                f"SASReplicas cannot run on sharded parameters ({sharding}): a replica is a full copy of the module "
                "trained by one rank, and each rank here holds only a shard. Train with DDP (or one device) for the "
                "in-run SAS estimate, or run the multi-run protocol (lightning-sas perturb), which trains each "
                "neighbouring run with your own strategy; replicas=0 keeps the rest of SASMonitor under FSDP."
            )
        source = training_source(trainer, pool_size=self.pool_size)
        if source is None or len(source) == 0:
            raise ValueError("SASReplicas needs training data to build neighbouring datasets; the run has no training "
                             "dataset. Run the multi-run protocol instead (lightning-sas perturb).")
        resumed_step = int(getattr(trainer, "global_step", 0) or 0)
        if self._restored is None and resumed_step > 0 and self.fork_at == "start" and self.holdout is None:
            raise ValueError(
                f"SASReplicas: the run starts at step {resumed_step} without replica state (resumed from a checkpoint "
                "saved without SASReplicas, or a second fit). Replicas forked now would start from weights already "
                "trained on the held-out split, without optimizer history of their own, and the estimate would be "
                "labelled as forked at step 0 "
                "(contaminated). Start the run from step 0 (no ckpt_path) with SASReplicas; or, if the main run never "
                "trained on some samples, pass them as holdout= (a Dataset, or indices into the dataset of a training "
                "Subset): the replicas then fork at the resume step (a late fork)."
            )
        self.pooled = source.pooled
        n = len(source)
        data = source
        if self.holdout is not None:
            held = self._holdout_dataset(source)
            self._external = len(held)
            data = SampleSource.of(source.loader, ConcatDataset([source.dataset, held]))
        self._data = data
        self.m = self.resolve_swaps(n)[0]
        s_idx, holdout = self._split(n)
        batch_size = self._replica_batch_size(trainer, getattr(source.loader, "batch_size", None), len(s_idx))
        saved = (self._restored or {}).get("swaps")
        if saved is not None:  # resume: the swaps of the checkpoint, never redrawn
            self._swaps = [[(int(i), int(z)) for i, z in pairs] for pairs in saved]
            if len(self._swaps) != self.replicas or any(len(p) != self.m for p in self._swaps):
                raise ValueError(f"the checkpoint's swaps ({len(self._swaps)} replicas) do not fit replicas={self.replicas}, "
                                 f"swaps={self.m}: resume with the settings of the checkpointed run")
        else:
            self._swaps = choose_swaps(s_idx, holdout, self.replicas, self.m, self.seed)
        self._swap_lookup = []
        for pairs in self._swaps:
            removed = np.asarray([i for i, _ in pairs], dtype=np.int64)
            order = np.argsort(removed)
            self._swap_lookup.append((removed[order], np.asarray([z for _, z in pairs], dtype=np.int64)[order]))
        probes = make_probe_set(s_idx, holdout, self._swaps, self.num_train_probes, self.num_heldout_probes, self.seed)
        self.probe_set = probes
        self._source = source
        self._trainer = trainer
        self._s_indices = s_idx
        self._world = max(1, int(getattr(trainer, "world_size", 1) or 1))
        self._rank = int(getattr(trainer, "global_rank", 0) or 0)
        self._rows = replica_rows(self.replicas + 1, self._world, self._rank)
        if self._rng_rank != self._rank:  # one private stream per rank; rank 0 keeps the one-process stream
            self._rng = PrivateRNG(rank_seed(self.seed + 1, self._rank) if self._rank else self.seed + 1)
            self._rng_rank = self._rank
        self._sampler = ReplicaSampler(len(s_idx), batch_size, self.replicas + 1, self.sampler_mode, self.seed)
        device = pl_module.device
        shared = probes.shared_indices
        chunk = max(1, self.probe_batch_size)
        try:
            self._probe_batches = [
                prepare_batch(trainer, data.collate(data.samples(shared[i : i + chunk])), device)
                for i in range(0, len(shared), chunk)
            ]
            swap_points = [probes.replica_swap_indices(k) for k in range(1, self.replicas + 1)]
            self._swap_batches = [
                [prepare_batch(trainer, data.collate(data.samples(points[i : i + chunk])), device) for points in swap_points]
                for i in range(0, 2 * self.m, chunk)
            ]
            with observed(pl_module, trainer):
                first = per_sample_loss(pl_module, self._swap_batches[0][0], self.loss_fn)
            if first.ndim != 1 or first.shape[0] != min(chunk, 2 * self.m):
                raise ValueError(f"it returned shape {tuple(first.shape)}, expected ({min(chunk, 2 * self.m)},)")
        except Exception as err:
            if callable(getattr(pl_module, "sas_per_sample_loss", None)):  # it comes before any loss_fn
                way = ("Make the module's `sas_per_sample_loss(self, batch) -> Tensor[B]` return one loss per sample of a "
                       "training batch (it is used before any loss_fn).")
            else:
                way = ("Define `sas_per_sample_loss(self, batch) -> Tensor[B]` on the module or pass loss_fn=(module, "
                       "batch) -> Tensor[B] (a callable or an import path).")
            raise ValueError(f"SASReplicas needs the per-sample loss of probe samples ({type(err).__name__}: {err}). {way}") from err
        self.metric = SASEstimate(probes.layout(), max_blocks=self.max_blocks).to(device)
        restored, self._restored = self._restored, None
        if restored is not None and restored.get("engine") is not None:
            self._fork(trainer, pl_module, restored.get("fork_step", 0))
            self._apply_restored(restored)
        elif restored is not None and restored.get("fork_step") is not None:
            self._resume_without_replicas(trainer, pl_module, restored)
        elif restored is not None:
            self._apply_restored(restored)
        elif self.fork_at == "start" and resumed_step > 0:  # resumed without replica state, holdout= given
            lightning_module("utilities.rank_zero", trainer).rank_zero_info(
                f"lightning-sas: the checkpoint has no replica state; the replicas fork at the resume step "
                f"{resumed_step} (a late fork on holdout=).")
            self._fork(trainer, pl_module, resumed_step)
        elif self.fork_at == "start":
            self._fork(trainer, pl_module, 0)

    def _holdout_dataset(self, source: SampleSource | None) -> Any:
        """The explicit ``holdout`` as a dataset: itself, or ``Subset(base, indices)`` for indices
        into the dataset of the training ``Subset`` (checked to leave them out)."""
        held = self.holdout
        if not _is_index_list(held):  # a Dataset (a list or array of integers is indices)
            if source is not None and held is source.dataset:
                raise ValueError("holdout= is the training dataset itself; pass samples the main run does not train on")
            if source is not None and held is getattr(source.dataset, "dataset", None):
                raise ValueError("holdout= is the dataset the training Subset draws from; pass the left-out indices "
                                 "(holdout=indices) or a Dataset of samples the main run does not train on")
            return held
        indices = np.asarray(held.cpu() if isinstance(held, torch.Tensor) else held, dtype=np.int64).ravel()  # sync-ok: once, at train start
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

    def _replica_batch_size(self, trainer: "pl.Trainer", loader_batch: int | None, available: int) -> int:
        """The replicas' batch: by default the run's effective batch, the per-rank loader batch
        times ``world_size`` times ``accumulate_grad_batches`` (a replica takes one step per main
        optimizer step, on one global batch), at most ``|S|``. One warning when it differs from the
        effective batch (an explicit ``batch_size``, a small ``S``, or a loader without
        ``batch_size``), naming both."""
        world = max(1, int(getattr(trainer, "world_size", 1) or 1))
        accumulate = max(1, int(getattr(trainer, "accumulate_grad_batches", 1) or 1))
        effective = loader_batch * world * accumulate if loader_batch else None
        chosen = min(self.batch_size or effective or 32, available)
        if chosen != effective:
            if effective is None:
                why = (f"the training loader has no batch_size (a batch sampler), so the replicas use "
                       f"{'batch_size=' + str(self.batch_size) if self.batch_size else 'a batch of 32'}")
            else:
                why = (f"the run's effective batch is {effective} (loader batch {loader_batch} x {world} rank(s) x "
                       f"accumulate_grad_batches={accumulate}); the replicas use {chosen}")
                why += (f" (batch_size={self.batch_size})" if self.batch_size and self.batch_size <= available
                        else f" (|S| = {available} samples)")
            warn_once(self, "batch", f"SASReplicas: {why}. The replicas then train with another gradient noise than the "
                      "main run; pass batch_size=None (the default) to match the effective batch.")
        return chosen

    def _resume_without_replicas(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", state: dict[str, Any]) -> None:
        """A checkpoint saved with ``checkpoint_replicas=False`` after the fork: the replicas' weights
        are gone. Forked again from the main model now, they would have seen the held-out split
        (contaminated) unless the main run excludes it: then they restart as a late fork (new time
        averages); otherwise the estimate stays off, with the reason in the summary."""
        self._steps_taken = 0
        if self.holdout is not None:
            warn_once(self, "noreplicas", "SASReplicas: the checkpoint has no replica weights (checkpoint_replicas=False); "
                      "the replicas restart from the current weights as a late fork, with new time averages.")
            self._fork(trainer, pl_module, int(trainer.global_step))
            return
        self.enabled = False
        self._off_reason = ("the checkpoint has no replica weights (checkpoint_replicas=False) and replicas forked again "
                            "from the main model would have seen the held-out split; resume from a checkpoint with "
                            "checkpoint_replicas=True, or train the main run without held-out samples and pass them "
                            "as holdout= to restart them as a late fork")
        warn_once(self, "noreplicas", f"SASReplicas: {self._off_reason}. The SAS estimate is off for this run.")

    def _clip(self, trainer: "pl.Trainer") -> tuple[float, str] | None:
        value = getattr(trainer, "gradient_clip_val", None)
        if not value:
            return None
        algorithm = getattr(trainer, "gradient_clip_algorithm", None) or "norm"
        return float(value), str(getattr(algorithm, "value", algorithm))

    def _fork(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", step: int) -> None:
        """Fork this rank's replicas (all ``K + 1`` on one process) from the main model's weights
        and optimizer state now (with the global generators forked: a user's
        ``configure_optimizers`` may draw from them)."""
        with isolated_rng():
            self._build_engine(trainer, pl_module, step)

    def _build_engine(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", step: int) -> None:
        n = len(self._rows)
        clip = self._clip(trainer)
        opt_state = [copy.deepcopy(o.state_dict()) for o in trainer.optimizers] if step > 0 else None
        # manual optimization: the module's own training_step steps its optimizers (a per-sample
        # loss there is for the probes only; two optimizers cannot train on one mean loss)
        manual = not pl_module.automatic_optimization
        use_step = manual or (self.loss_fn is None and not callable(getattr(pl_module, "sas_per_sample_loss", None)))
        reason = ("manual optimization (the module's own training_step steps its optimizers)" if manual
                  else stacked_unsupported_reason(pl_module, self.loss_fn))
        engine: Any = None
        if n == 0:  # more ranks than replicas: this rank only keeps the collectives in step
            if self.path == "fast" and reason is not None:
                raise ValueError(self._fast_refusal(trainer, pl_module, reason, use_step, clip, opt_state))
            path = "fast" if self.path in ("auto", "fast") and reason is None else "generic"
            self.engine = NoLocalReplicas(path, self._probe_device())
            self.fork_step = int(step)
            return
        if self.path in ("auto", "fast") and reason is None:
            try:
                engine = StackedReplicas(pl_module, n, self.loss_fn, clip, opt_state, trainer=trainer)
                self._dry_run(engine)
                engine = StackedReplicas(pl_module, n, self.loss_fn, clip, opt_state, trainer=trainer)
            except Exception as err:
                reason = f"{type(err).__name__}: {err}"
                engine = None
        if engine is None:
            if self.path == "fast":
                raise ValueError(self._fast_refusal(trainer, pl_module, reason, use_step, clip, opt_state))
            refusal = self._generic_refusal(trainer, pl_module, use_step, clip, opt_state)
            if refusal is not None:
                raise refusal
            engine = GenericReplicas(pl_module, n, self.loss_fn, use_step, clip, opt_state, trainer=trainer)
            self.fallback_reason = reason
            if self.path == "auto" and reason:
                rank_zero = lightning_module("utilities.rank_zero", trainer)
                rank_zero.rank_zero_info(f"lightning-sas: replicas use the generic path because {reason}.")
        self.engine = engine
        self.fork_step = int(step)

    def _generic_refusal(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", use_step: bool,
                         clip: Any, opt_state: Any) -> ValueError | None:
        """Build one generic replica and dry-run a step: None when it works, else the error to
        raise, naming the hook that failed and the one way out for it."""
        stage = "configure_optimizers"
        try:
            probe = GenericReplicas(pl_module, 1, self.loss_fn, use_step, clip, opt_state, trainer=trainer)
            stage = "step"
            self._dry_run(probe)
        except ReplicaTrainerError as err:
            return ValueError(str(err))
        except Exception as err:
            failure = f"({type(err).__name__}: {err})"
            if stage == "configure_optimizers":
                message = (f"SASReplicas: the replicas' configure_optimizers failed at fork time {failure}. "
                           f"{WAYS_OUT['configure_optimizers']}")
            elif use_step and pl_module.automatic_optimization:
                message = (f"SASReplicas: a replica's training_step failed at fork time {failure}. A replica is a deep "
                           f"copy of the module with a read-only view of the trainer. {WAYS_OUT['training_step']}")
            elif use_step:
                message = (f"SASReplicas: a replica's manual-optimization training_step failed at fork time {failure}. "
                           f"{WAYS_OUT['manual training_step']}")
            else:
                message = (f"SASReplicas: a replica step on the per-sample loss failed at fork time {failure}. "
                           f"{WAYS_OUT['per-sample loss']}")
            error = ValueError(message)
            error.__cause__ = err
            return error
        return None

    def _fast_refusal(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", reason: str | None, use_step: bool,
                      clip: Any, opt_state: Any) -> str:
        """Why ``path='fast'`` cannot run this module, with a way out that was tried: the generic
        path when a generic replica runs it (dry run), else what the generic path needs."""
        generic = self._generic_refusal(trainer, pl_module, use_step, clip, opt_state)
        if generic is None:
            way = "Use path='generic' (a dry run of a generic replica on this module worked)."
        else:
            way = f"The generic path cannot run it as it is either: {generic}"
        return f"SASReplicas(path='fast') cannot run this module: {reason}. {way}"

    def _dry_run(self, engine: Any) -> None:
        assert self._sampler is not None
        positions = ReplicaSampler(len(self._s_indices), self._sampler.batch_size, self.replicas + 1, "common", self.seed).next()
        rows = self._rows[: engine.n] or list(range(engine.n))  # a rank without replicas tries the control's
        batches = self._batches(positions, rows, device=self._probe_device())
        saved = self._rng.state_dict()
        try:
            with self._rng.active(self._probe_device()):
                engine.step(batches, 0, 0)
                engine.per_sample_losses(self._probe_batches[:1], self._swap_batches[:1], rows)
        finally:
            self._rng.load_state_dict(saved)

    def _probe_device(self) -> torch.device:
        leaf = self._probe_batches[0]
        while isinstance(leaf, (list, tuple)):
            leaf = leaf[0]
        if isinstance(leaf, dict):
            leaf = next(iter(leaf.values()))
        return leaf.device if isinstance(leaf, torch.Tensor) else torch.device("cpu")

    def _fetch(self, indices: np.ndarray, device: torch.device) -> Any:
        """Collate ``dataset[i]`` for ``indices`` (under the replicas' private stream); a
        ``TensorDataset`` batched by ``default_collate`` is indexed in one call per tensor (same
        result, no per-sample Python)."""
        source = self._data
        if isinstance(source.dataset, TensorDataset) and source.collate_fn is default_collate:
            index = torch.from_numpy(np.ascontiguousarray(indices, dtype=np.int64))
            return prepare_batch(self._trainer, [t[index] for t in source.dataset.tensors], device)
        return prepare_batch(self._trainer, source.collate(source.read(indices)), device)

    def _batches(self, positions: list[np.ndarray], rows: Sequence[int], device: torch.device) -> list[Any]:
        """Batches of the global replicas ``rows`` (``positions`` has one entry per global replica),
        replica ``r`` from ``S^(r)`` (the control ``r = 0`` from ``S``); replicas that draw the
        same positions and miss their replaced sample share one batch object."""
        cache: dict[int, Any] = {}
        out: list[Any] = []
        for r in rows:
            pos = positions[r]
            indices = self._s_indices[pos]
            if r > 0:
                removed, added = self._swap_lookup[r - 1]
                where = np.minimum(np.searchsorted(removed, indices), len(removed) - 1)
                hit = removed[where] == indices
                if hit.any():  # replica r trains on S^(r): its removed samples are swapped for its added ones
                    out.append(self._fetch(np.where(hit, added[where], indices), device))
                    continue
            key = id(pos)
            if key not in cache:
                cache[key] = self._fetch(indices, device)
            out.append(cache[key])
        return out

    # -- hot path -------------------------------------------------------------------------
    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any, batch_idx: int) -> None:
        self.record(trainer, pl_module, batch_idx)
        stepped = entry_completed(trainer, pl_module.automatic_optimization, self._index)
        if not self.owned and stepped and self.should_flush(self._index):
            self._standalone_flush(trainer, pl_module, trainer.global_step)

    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if not self.owned:  # on its own: the last partial window is flushed too
            self._standalone_flush(trainer, pl_module, trainer.global_step)

    def on_train_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self.engine is not None and self.enabled:
            self.engine.epoch_end(trainer.current_epoch)

    def maybe_fork_late(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", ctx: FlushContext) -> None:
        """Late forks: at the first flush where the late phase is stable (``"late_phase"``)."""
        if self.engine is None and self.enabled and self.fork_at == "late_phase" and ctx.late_phase_stable:
            self._fork(trainer, pl_module, self._index)

    def record(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", batch_idx: int) -> None:
        """After each batch (when used on its own): :meth:`step` when the main run took a step."""
        self._batches_seen += 1
        stepped = entry_completed(trainer, pl_module.automatic_optimization, self._index)
        if stepped:
            self.step(trainer, pl_module, self._index, batch_idx)

    def step(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", index: int, batch_idx: int) -> None:
        """One step of every replica (and their probes when due) after entry ``index`` of the
        main run (its optimizer step in automatic optimization, its batch in manual)."""
        self._index = index
        if not self.enabled or self.metric is None:
            return
        if self.engine is None and isinstance(self.fork_at, int) and self._index + 1 >= self.fork_at:
            self._fork(trainer, pl_module, self._index + 1)
            return
        if self.engine is None:
            return
        assert self._sampler is not None
        if self._local_failed:  # until the next flush tells every rank: zero rows keep the cursor in step
            if self.should_probe(self._index):
                empty = torch.zeros(0, dtype=torch.float64, device=self._probe_device())
                self.metric.update(empty, self._index, rows=[])
            return
        device = self._probe_device()
        recorded = False
        try:
            with self._rng.active(device):
                batches = self._batches(self._sampler.next(), self._rows, device)
                self.engine.step(batches, batch_idx, self._steps_taken)
                self._steps_taken += 1
                if self.should_probe(self._index):
                    values = self.engine.per_sample_losses(self._probe_batches, self._swap_batches, self._rows)
                    self.metric.update(values, self._index, rows=self._rows)
                    recorded = True
        except Exception as err:  # a replica failing mid-run is switched off; training goes on
            if self._world > 1 and self.should_probe(self._index) and not recorded:
                # the other ranks record this probe step: an empty row keeps the block cursors in step
                self.metric.update(torch.zeros(0, dtype=torch.float64, device=device), self._index, rows=[])
            self._off_reason = f"a replica step failed mid-run at step {self._index} ({type(err).__name__}: {err})"
            warn_once(self, "failed", f"SASReplicas: a replica step failed mid-run ({type(err).__name__}: {err}); "
                      "the SAS estimate is switched off, training goes on.")
            if self._world == 1:
                self.enabled = False
            else:  # the other ranks learn it at the next flush (no per-step collective)
                self._local_failed = True

    # -- flush ----------------------------------------------------------------------------
    def flush(self, ctx: FlushContext) -> None:
        self.maybe_fork_late(ctx.trainer, ctx.pl_module, ctx)
        if self.metric is None or self.engine is None:
            reason = self._off_reason or f"the replicas are not forked yet (fork_at={self.fork_at!r})"
            ctx.unavailable.update(dict.fromkeys(SAS_KEYS, reason))
            ctx.summary.update(self._last)
            return
        if not self.enabled and self._off_reason:
            ctx.unavailable.update(dict.fromkeys(SAS_KEYS, f"frozen: {self._off_reason}"))
        ctx.unavailable["replica_checkpoint_bytes"] = (
            "no checkpoint saved yet" if self.checkpoint_replicas else "checkpoint_replicas=False")
        ctx.unavailable["paper_coefficient_se"] = "the jackknife over runs needs K >= 2 perturbed replicas"
        # under DDP the ranks agreed on whether a replica failed anywhere (``off_on``) and summed
        # the time averages (``collective_payload``) in the flush's two collectives
        start = max(probe_window_start(ctx.window_start, self.metric.cursor.starts), self.fork_step or 0)
        with self.metric.summed_states(ctx.reduced.get(self)):
            estimate = self.metric.estimate(from_step=start, fork_step=self.fork_step or 0)
        if "sas_max" not in estimate:  # no replica probe inside the window yet
            ctx.unavailable.update({key: f"no replica probe evaluation inside the statistics window yet (it starts at "
                                         f"step {start}; probe_every={self.probe_every}); the probe of the untrained model at step 0 never counts"
                                    for key in SAS_KEYS if key not in ("replicas", "swaps", "replica_path",
                                                                       "replica_sampler", "fork_step", "steps_since_fork",
                                                                       "replica_checkpoint_bytes")})
        estimate.update(
            {
                "replicas": self.replicas,
                "swaps": self.m,
                "replica_path": self.engine.path,
                "replica_sampler": self.sampler_mode,
                "fork_step": self.fork_step,
                "steps_since_fork": self._steps_taken,
                "replica_checkpoint_bytes": self._checkpoint_bytes or None,
            }
        )
        histograms = estimate.pop("abs_d", None)
        if histograms is not None:
            ctx.histograms["sas/abs_d"] = np.asarray(histograms).ravel()
        ctx.figure_data["sas_windows"] = estimate.pop("windows", None)
        ctx.figure_data["sas_forgetting"] = estimate.pop("forgetting", None)
        self._last = estimate
        ctx.summary.update(self._last)
        if ctx.writer is not None and self.metric is not None and not self._meta_written:
            self._meta_written = True  # the swaps and probe points are fixed for the run: written once
            ctx.writer.update_meta(sas_swaps=self._swaps_json(), sas_m=self.m,
                                   sas_shared_indices=[int(i) for i in self.probe_set.shared_indices],
                                   sas_num_train=int(len(self.probe_set.extra_train_indices)))

    # -- distributed: the flush's agreement and packed sum (see ``callbacks.base.exchange``) --
    def failed_here(self) -> bool:
        return self._local_failed

    def off_on(self, ranks: list[int], reason: str | None = None) -> None:
        """A replica failed on ``ranks``: the estimate stops on every rank (frozen as it is)."""
        if self._local_failed and reason is None:  # ours: already warned
            self.enabled, self._local_failed = False, False
        elif self.enabled:
            self.enabled, self._local_failed = False, False
            reason = reason or f"a replica step failed on rank {', '.join(map(str, ranks))}"
            self._off_reason = self._off_reason or reason
            warn_once(self, "failed_elsewhere", f"SASReplicas: {reason}; the SAS estimate is switched off on every "
                      "rank, training goes on.")

    def collective_payload(self, purpose: str) -> list[torch.Tensor]:
        """The time averages' filled blocks, summed over ranks at a flush or checkpoint (rows of
        other ranks' replicas are zero here)."""
        return self.metric.filled_states() if self.metric is not None else []

    def _swaps_json(self) -> list[list[list[int]]]:
        """Each replica's swaps as ``[[i, z'], ...]`` (primitives: checkpoints and meta.json)."""
        return [[[int(i), int(z)] for i, z in pairs] for pairs in self._swaps]

    # -- state ----------------------------------------------------------------------------
    def state_dict(self, reduced: list[torch.Tensor] | None = None) -> dict[str, Any]:
        """Tensors and primitives only. Under DDP a collective (call on every rank, as Lightning
        does): rank 0's state holds every replica and the time averages summed over ranks
        (``reduced``: that sum, when :class:`~lightning_sas.SASMonitor` made it already in its
        packed all-reduce; then one ``gather_object`` is this method's only collective)."""
        distributed = self._world > 1 and distributed_ready()
        state: dict[str, Any] = {
            "config": self.config(),
            "batches_seen": self._batches_seen,
            "steps_taken": self._steps_taken,
            "fork_step": self.fork_step,
            "enabled": self.enabled,
            "rng": self._rng.state_dict(),
            "sampler": None if self._sampler is None else self._sampler.state_dict(),
            "engine": None,
            "swaps": self._swaps_json() if self._swaps else None,
        }
        if self.metric is not None:
            if distributed and reduced:
                with self.metric.summed_states(reduced):
                    state["metric"] = self.metric.checkpoint_state()
            elif distributed:
                with self.metric.synced():
                    state["metric"] = self.metric.checkpoint_state()
            else:
                state["metric"] = self.metric.checkpoint_state()
        local = self.engine.state_dict() if self.engine is not None and self.checkpoint_replicas else None
        if self._world > 1:
            state["world_size"] = self._world
            if not distributed:  # outside the process group only this rank's replicas are here
                local = None
        if distributed:
            gathered: list[Any] | None = [None] * self._world if self._rank == 0 else None
            dist.gather_object((list(self._rows), to_cpu(local), self._rng.state_dict()), gathered, dst=0)
            local = None
            if gathered is not None:
                state["rng_ranks"] = [g[2] for g in gathered]
                if self.engine is not None and self.checkpoint_replicas:
                    local = merge_engine_states([(g[0], g[1]) for g in gathered], self.replicas + 1)
        if local is not None:
            state["engine"] = local
            self._checkpoint_bytes = _tensor_bytes(local)
        return state

    def _apply_restored(self, state: dict[str, Any]) -> None:
        """Restore a checkpoint: every rank reads the full state (all replicas, summed time
        averages) and keeps its own replicas."""
        self._steps_taken = int(state.get("steps_taken", 0))
        self.enabled = bool(state.get("enabled", True))
        saved_world = int(state.get("world_size", 1))
        rng_ranks = state.get("rng_ranks")
        if saved_world == self._world and rng_ranks is not None and self._rank < len(rng_ranks):
            self._rng.load_state_dict(rng_ranks[self._rank])
        elif self._rank == 0:
            self._rng.load_state_dict(state["rng"])
        if saved_world != self._world and state.get("engine") is not None:
            warn_once(self, "world", f"SASReplicas: the checkpoint was saved on {saved_world} rank(s) and resumes on "
                      f"{self._world}; the replicas, their optimizers and the time averages resume exactly, the "
                      "replicas' private random streams (dropout) restart per rank.")
        if state.get("sampler") is not None and self._sampler is not None:
            self._sampler.load_state_dict(state["sampler"])
        if self.metric is not None and "metric" in state:
            if not self.metric.load_checkpoint_state(state["metric"]):
                warn_once(self, "shape", "SASReplicas: the checkpoint's probe set differs in size; the estimate restarts.")
            elif self._world > 1:
                self.metric.keep_rows(self._rows)
        if state.get("engine") is not None and self.engine is not None:
            if self._world == 1:
                self.engine.load_state_dict(state["engine"])
            else:
                self.engine.load_state_dict(select_engine_state(state["engine"], self._rows))


def _is_index_list(value: Any) -> bool:
    """A 1-D sequence of integers (list, tuple, numpy array or tensor)?"""
    if isinstance(value, torch.Tensor):
        return value.ndim == 1 and not value.is_floating_point() and not value.is_complex()
    if isinstance(value, np.ndarray):
        return value.ndim == 1 and np.issubdtype(value.dtype, np.integer)
    return isinstance(value, (list, tuple)) and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0
