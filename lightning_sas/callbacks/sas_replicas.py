"""``SASReplicas``: the in-run estimate of statistical algorithmic stability (SAS).

The callback is hook plumbing; the work is in :mod:`lightning_sas.replicas`: the data set-up
(:mod:`~lightning_sas.replicas.data_setup`), the engine choice
(:mod:`~lightning_sas.replicas.engine_choice`) and the checkpoint state
(:mod:`~lightning_sas.replicas.checkpoint_state`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lightning_sas import _compat as pl  # pl.Trainer, pl.LightningModule: of either namespace
from lightning_sas._compat import lightning_module
from lightning_sas.callbacks._common import entry_completed, is_due, warn_once
from lightning_sas.callbacks.base import FlushContext, StreamCallback
from lightning_sas.data.loaders import DEFAULT_POOL_SIZE, training_source
from lightning_sas.diagnostics import probe_window_start
from lightning_sas.isolation import isolated_rng
from lightning_sas.losses import PerSampleLoss
from lightning_sas.metrics.sas_estimate import SASEstimate
from lightning_sas.replicas.arguments import check_arguments
from lightning_sas.replicas.checkpoint_state import ReplicaPlacement, pack_state, restore_state, without_replica_weights
from lightning_sas.replicas.data_setup import (
    HoldoutPlan,
    ReplicaData,
    batch_device,
    probe_batches,
    refuse_late_fork_without_holdout,
    refuse_resume_without_state,
    swaps_json,
)
from lightning_sas.replicas.engine_choice import DryRun, choose_engine, refuse_sharded_parameters
from lightning_sas.replicas.placement import rank_seed, replica_rows
from lightning_sas.replicas.rng import PrivateRNG
from lightning_sas.replicas.sampler import ReplicaSampler
from lightning_sas.replicas.summary import SAS_KEYS, unavailable_reasons

__all__ = ["SASReplicas", "SAS_KEYS", "replica_rows"]


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
            at most 4 % of ``S`` and what the held-out split allows after 128 ``P_test`` points; see
            :meth:`resolve_swaps`). ``swaps=1`` is v0.1's one-replacement estimator.
        fork_at: ``"start"``, ``"late_phase"`` (first stable late-phase start) or a step (late
            forks need ``holdout``).
        sampler: ``"common"`` or ``"independent"``.
        holdout_fraction: share of the training data held out for replacements and ``P_test``
            (without ``holdout``). Default ``None``: 10 % of the data, or room for ``K`` x 32
            replacements and 128 ``P_test`` points when that is more, at most half
            (:func:`~lightning_sas.data.auto_holdout_size`).
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
        holdout_fraction: float | None = None,
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
        # the checked arguments become attributes of the same names (``sampler`` as ``sampler_mode``)
        vars(self).update(check_arguments(
            replicas, swaps, fork_at, sampler, holdout_fraction, num_train_probes, num_heldout_probes, probe_every,
            loss_fn, path, batch_size, holdout, holdout_excluded, checkpoint_replicas, max_blocks, probe_batch_size,
            pool_size, seed))
        self._reset_state()

    def _reset_state(self) -> None:
        self.engine: Any = None
        self.metric: SASEstimate | None = None
        self.enabled = True
        self.fork_step: int | None = None
        self.fallback_reason: str | None = None
        #: why the estimate stopped (a replica failed mid-run), for ``summary()["unavailable"]``
        self._off_reason: str | None = None
        self._meta_written = False
        #: the samples, split, swaps and probe points (:meth:`attach`)
        self.data: ReplicaData | None = None
        self.pooled = False
        #: the resolved m
        self.m: int | None = None
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
    def _plan(self) -> HoldoutPlan:
        external = self.data.external if self.data is not None else 0
        return HoldoutPlan(self.replicas, self.swaps, self.holdout_fraction, self.holdout, self.seed, external)

    def holdout_indices(self, n: int) -> np.ndarray:
        """Indices of the held-out split the replicas take from a training set of size ``n``
        (without ``holdout=``; the main run trains on them, which is why only ``fork_at="start"``
        is allowed then). With ``holdout=``, ``n`` to ``n + len(holdout) - 1``: the explicit
        held-out samples, after the training data in the replicas' index space."""
        return self._plan().split(n)[1]

    def resolve_swaps(self, n: int) -> tuple[int, int]:
        """``(m, held-out size)`` for a training set of ``n`` samples
        (:func:`~lightning_sas.data.resolve_swaps`: ``swaps="auto"`` takes the default m from the
        bias and calibration studies, at most 4 % of ``S`` and what the held-out pool allows
        after 128 ``P_test`` points; an explicit
        ``swaps`` that does not fit is an error naming ``swaps`` and ``holdout_fraction``). With
        ``holdout=`` the held-out pool is that data, and ``S`` is all ``n`` training samples."""
        return self._plan().resolve_swaps(n)

    def should_probe(self, index: int) -> bool:
        """Evaluate the replicas' probes at stream entry ``index``? Default: every ``probe_every``."""
        return is_due(index, self.probe_every)

    @property
    def _source(self) -> Any:
        """The run's training samples (the pool of iterable data), once attached."""
        return self.data.source if self.data is not None else None

    def _swaps_json(self) -> list[list[list[int]]]:
        return swaps_json(self.data.swaps) if self.data is not None else []

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
        refuse_late_fork_without_holdout(self.fork_at, self.holdout)
        refuse_sharded_parameters(trainer, pl_module)
        source = training_source(trainer, pool_size=self.pool_size)
        if source is None or len(source) == 0:
            raise ValueError("SASReplicas needs training data to build neighbouring datasets; the run has no training "
                             "dataset. Run the multi-run protocol instead (lightning-sas perturb).")
        resumed_step = int(getattr(trainer, "global_step", 0) or 0)
        refuse_resume_without_state(resumed_step, self._restored is not None, self.fork_at, self.holdout)
        self.pooled = source.pooled
        data = ReplicaData.build(self, trainer, source, self._plan(), self.batch_size, self.num_train_probes,
                                 self.num_heldout_probes, (self._restored or {}).get("swaps"))
        self.data, self.m, self.probe_set = data, data.m, data.probe_set
        self._world = max(1, int(getattr(trainer, "world_size", 1) or 1))
        self._rank = int(getattr(trainer, "global_rank", 0) or 0)
        self._rows = replica_rows(self.replicas + 1, self._world, self._rank)
        if self._rng_rank != self._rank:  # one private stream per rank; rank 0 keeps the one-process stream
            self._rng = PrivateRNG(rank_seed(self.seed + 1, self._rank) if self._rank else self.seed + 1)
            self._rng_rank = self._rank
        self._sampler = ReplicaSampler(len(data.s_indices), data.batch_size, self.replicas + 1, self.sampler_mode, self.seed)
        self._probe_batches, self._swap_batches = probe_batches(trainer, pl_module, data, self.replicas,
                                                                max(1, self.probe_batch_size), self.loss_fn)
        self.metric = SASEstimate(data.probe_set.layout(), max_blocks=self.max_blocks).to(pl_module.device)
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

    def _resume_without_replicas(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", state: dict[str, Any]) -> None:
        """A checkpoint saved with ``checkpoint_replicas=False`` after the fork: the replicas' weights
        are gone. Forked again from the main model now, they would have seen the held-out split
        (contaminated) unless the main run excludes it: then they restart as a late fork (new time
        averages); otherwise the estimate stays off, with the reason in the summary."""
        self._steps_taken = 0
        off_reason = without_replica_weights(self, late_fork_allowed=self.holdout is not None)
        if off_reason is None:
            self._fork(trainer, pl_module, int(trainer.global_step))
        else:
            self.enabled, self._off_reason = False, off_reason

    def _fork(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", step: int) -> None:
        """Fork this rank's replicas (all ``K + 1`` on one process) from the main model's weights
        and optimizer state now (with the global generators forked: a user's
        ``configure_optimizers`` may draw from them)."""
        assert self.data is not None and self._sampler is not None
        with isolated_rng():
            device = self._probe_device()
            positions = ReplicaSampler(len(self.data.s_indices), self._sampler.batch_size, self.replicas + 1, "common",
                                       self.seed).next()
            dry_run = DryRun(self.data.batches, positions, self._rows, self._probe_batches, self._swap_batches,
                             self._rng, device)
            self.engine, self.fallback_reason = choose_engine(trainer, pl_module, len(self._rows), self.path,
                                                              self.loss_fn, step, dry_run, device)
        self.fork_step = int(step)

    def _probe_device(self) -> torch.device:
        return batch_device(self._probe_batches[0])

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
                batches = self.data.batches(self._sampler.next(), self._rows, device)
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
        # under DDP the ranks agreed on whether a replica failed anywhere (``off_on``) and summed
        # the time averages (``collective_payload``) in the flush's two collectives
        start = max(probe_window_start(ctx.window_start, self.metric.cursor.starts), self.fork_step or 0)
        with self.metric.summed_states(ctx.reduced.get(self)):
            estimate = self.metric.estimate(from_step=start, fork_step=self.fork_step or 0)
        ctx.unavailable.update(unavailable_reasons(None if self.enabled else self._off_reason, self.checkpoint_replicas,
                                                   "sas_max" in estimate, start, self.probe_every))
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

    # -- state ----------------------------------------------------------------------------
    def state_dict(self, reduced: list[torch.Tensor] | None = None) -> dict[str, Any]:
        """Tensors and primitives only. Under DDP a collective (call on every rank, as Lightning
        does): rank 0's state holds every replica and the time averages summed over ranks
        (``reduced``: that sum, when :class:`~lightning_sas.SASMonitor` made it already in its
        packed all-reduce; then one ``gather_object`` is this method's only collective)."""
        header: dict[str, Any] = {
            "config": self.config(),
            "batches_seen": self._batches_seen,
            "steps_taken": self._steps_taken,
            "fork_step": self.fork_step,
            "enabled": self.enabled,
            "rng": self._rng.state_dict(),
            "sampler": None if self._sampler is None else self._sampler.state_dict(),
            "engine": None,
            "swaps": self._swaps_json() or None,
        }
        state, engine_bytes = pack_state(header, self._placement(), self.metric, self.engine, self._rng,
                                         self.checkpoint_replicas, reduced)
        if engine_bytes is not None:
            self._checkpoint_bytes = engine_bytes
        return state

    def _placement(self) -> ReplicaPlacement:
        return ReplicaPlacement(self._world, self._rank, self._rows, self.replicas + 1)

    def _apply_restored(self, state: dict[str, Any]) -> None:
        """Restore a checkpoint: every rank reads the full state (all replicas, summed time
        averages) and keeps its own replicas."""
        self._steps_taken, self.enabled = restore_state(self, state, self._placement(), self.metric, self.engine,
                                                        self._rng, self._sampler)
