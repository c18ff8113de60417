"""``ProbeLosses``: per-sample losses on fixed probe sets, time-averaged over the late phase."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_sas import _compat as pl  # pl.Trainer, pl.LightningModule: of either namespace
from lightning_sas.callbacks._common import device_float_dtype, entry_completed, is_due, next_due, prepare_batch, resolve_callable, sharded_parameters, warn_once
from lightning_sas.validation import check_int, check_seed
from lightning_sas.callbacks.base import FlushContext, StreamCallback, exchange
from lightning_sas.diagnostics import ERGODIC_GAP_KEYS, PROBE_KEYS, probe_window_start
from lightning_sas.data.loaders import SampleSource, first_loader, is_map_style, training_source, validation_source
from lightning_sas.isolation import observed
from lightning_sas.losses import PerSampleLoss, per_sample_loss
from lightning_sas.metrics import ErgodicGap, TimeAverage
from lightning_sas.stats.sas import time_average

__all__ = ["ProbeLosses"]

class ProbeLosses(StreamCallback):
    r"""Per-sample losses on fixed probe sets every ``probe_every`` stream entries.

    Probe sets (seeded, chosen once at ``on_train_start``): ``num_train_probes`` samples of the
    training set ``P_train`` and ``num_test_probes`` samples of the validation set ``P_test``,
    wherever Lightning keeps it (validation every N epochs or K steps, several loaders, a
    DataModule whose loaders are built in ``setup()``: see
    :func:`~lightning_sas.data.loaders.validation_source`); iterable datasets are read once into
    a pool. Their losses are computed as an observer (:func:`~lightning_sas.isolation.observed`:
    eval mode, ``no_grad``, every global generator forked, module modes restored; the loaders'
    own ``collate_fn`` is called only for samples ``default_collate`` cannot batch) with, in order
    of preference, the module's ``sas_per_sample_loss(batch)``, the ``loss_fn(module, batch)``
    argument (a callable or an import path), or :func:`infer_per_sample_loss`. They feed a
    :class:`~lightning_sas.metrics.ErgodicGap` metric, which gives the late-phase time average per
    probe point and the ergodic generalization gap

    .. math:: \mathrm{gap} = \langle l \rangle_{P_\mathrm{test}} - \langle l \rangle_{P_\mathrm{train}} .

    Without replicas ``P_test`` comes from the validation set (``ergodic_gap_source`` says so);
    without validation data only training probes are kept, ``ergodic_gap`` is left out and the
    reason goes to ``summary()["unavailable"]`` (with one warning).

    Distributed: rank ``r`` of ``W`` evaluates only the probe points ``j`` with ``j % W == r``
    (its own batches, so the probe cost per rank falls as ``1/W``); its rows hold zeros elsewhere.
    At each flush the pending rows of all ranks are summed in the monitor's one packed all-reduce
    (:func:`~lightning_sas.callbacks.base.exchange`) and every rank updates its metric with the
    full rows, so the time averages are the same on every rank and a checkpoint from any rank
    resumes on any number of ranks. Under sharded parameters (FSDP2 ``fully_shard``) the forward
    pass is itself collective, so every rank evaluates every point (the same batches in the same
    order) and keeps its own share; under FSDP1 (``FullyShardedDataParallel``, Lightning's
    ``FSDPStrategy``) the probes refuse to start (they would call the module outside its wrapper).
    A per-sample loss that fails on one rank switches the probes off on every rank at the next
    flush or checkpoint (before any other collective), with the failing ranks named in
    ``summary()["unavailable"]``.
    """

    def __init__(
        self,
        probe_every: int = 200,
        num_train_probes: int = 256,
        num_test_probes: int = 256,
        probe_batch_size: int = 256,
        loss_fn: PerSampleLoss | str | None = None,
        flush_every: int = 400,
        max_blocks: int = 128,
        seed: int = 0,
    ) -> None:
        super().__init__(flush_every=flush_every)
        self.probe_every = check_int("probe_every", probe_every, 1)
        self.probe_batch_size = check_int("probe_batch_size", probe_batch_size, 1)
        self.num_train_probes = check_int("num_train_probes", num_train_probes, 0)
        self.num_test_probes = check_int("num_test_probes", num_test_probes, 0)
        self.max_blocks = check_int("max_blocks", max_blocks, 4, even=True)
        self.seed = check_seed("seed", seed)
        self.check_memory(self.flush_every)
        self.loss_fn = resolve_callable(loss_fn, "loss_fn")
        #: set by ``SASMonitor`` when replicas measure the gap on a held-out split instead
        self.heldout_elsewhere = False
        #: samples of iterable training data read by the replicas, shared (set by ``SASMonitor``)
        self.pool: SampleSource | None = None
        self._reset_state()

    def reserved_buffers(self, flush_every: int) -> list[tuple[str, float, str]]:
        points = self.num_train_probes + self.num_test_probes
        rows = flush_every // self.probe_every + 2
        return [
            ("probe-loss rows", rows * points * 8,
             f"(flush_every // probe_every + 2) ({rows}) x (num_train_probes + num_test_probes) ({points}) x 8 bytes"),
            ("block summary", 3 * self.max_blocks * points * 8,
             f"max_blocks ({self.max_blocks}) x 3 x (num_train_probes + num_test_probes) ({points}) x 8 bytes"),
        ]

    def _reset_state(self) -> None:
        self.enabled = True
        self.metric: TimeAverage | None = None
        self.train_indices = np.zeros(0, dtype=np.int64)
        self.test_indices = np.zeros(0, dtype=np.int64)
        self._batches: list[Any] = []
        #: positions in the probe vector that this rank's batches cover, in order
        self._positions: Tensor | None = None
        self._owned_mask: Tensor | None = None
        self._rows: Tensor | None = None
        self._row_steps: list[int] = []
        self._batches_seen = 0
        self._index = 0
        self._last: dict[str, Any] = {}
        self._restored: dict[str, Any] | None = None
        self.ergodic_gap_source: str | None = None
        #: summary keys this part cannot give, with the reason (shown in the summary and status)
        self.unavailable: dict[str, str] = {}
        self.pool_note: str | None = None
        #: a multi-run plan's swapped samples (every run's removed, then every run's added), probed
        #: by every run so that ``lightning-sas compare`` can form the stability gap
        self.swap_indices = np.zeros(0, dtype=np.int64)
        self.plan_swaps: list[list[tuple[int, int]]] | None = None
        self.plan_run: int | None = None

    def config(self) -> dict[str, Any]:
        return {
            "probe_every": self.probe_every,
            "num_train_probes": self.num_train_probes,
            "num_test_probes": self.num_test_probes,
            "probe_max_blocks": self.max_blocks,
            "seed": self.seed,
        }

    def should_probe(self, index: int) -> bool:
        """Evaluate the probes at stream entry ``index``? Default: every ``probe_every``."""
        return is_due(index, self.probe_every)

    def next_due(self, index: int) -> int | None:
        """The first entry at or after ``index`` with a probe evaluation (None: probes off).
        Computed from ``probe_every`` unless :meth:`should_probe` is overridden."""
        if not self.enabled or self.metric is None:
            return None
        if type(self).should_probe is not ProbeLosses.should_probe:
            return index
        return next_due(index, self.probe_every)

    # -- setup ----------------------------------------------------------------------------
    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self.attach(trainer, pl_module)

    def attach(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Choose the probe sets, collate them once on the training device, and dry-run the loss
        (all as an observer: forked generators, eval mode, the loaders' iterators untouched)."""
        self.unavailable = {}
        if self.num_train_probes == 0:
            self._disable("num_train_probes=0", warn=False)
            return
        loader = first_loader(getattr(trainer, "train_dataloader", None))
        if loader is not None and loader.dataset is not None and not is_map_style(loader.dataset) and self.pool is None:
            # reading a user's IterableDataset again could consume the stream the run trains on
            # (a queue, a generator): only SASReplicas, asked for explicitly, reads it into a pool
            self._disable("the training data is an IterableDataset, which the monitor does not read a second time "
                          "(SASMonitor(replicas=K) reads it once into a pool that the probes then share)")
            return
        train = self.pool if self.pool is not None else training_source(trainer)
        if train is None or len(train) == 0:
            self._disable("the run has no training dataset to draw probe samples from")
            return
        heldout, where = ((None, "num_test_probes=0") if self.num_test_probes == 0
                          else validation_source(trainer, read_iterable=False))
        if heldout is not None and len(heldout) == 0:
            heldout, where = None, "the validation dataset is empty"
        plan_data = self._plan_dataset(train.dataset)
        if plan_data is not None:  # every run of a multi-run plan probes the same points of S
            train = SampleSource.of(train.loader, plan_data.dataset)
        rng = np.random.default_rng(self.seed)
        self.train_indices = np.sort(rng.choice(len(train), size=min(self.num_train_probes, len(train)), replace=False))
        if heldout is not None:
            self.test_indices = np.sort(rng.choice(len(heldout), size=min(self.num_test_probes, len(heldout)), replace=False))
            self.ergodic_gap_source = where
        else:
            self.test_indices = np.zeros(0, dtype=np.int64)
            no_heldout = f"no held-out data for the ergodic gap ({where})"
        pooled = [src for src in (train, heldout) if src is not None and src.pooled]
        if pooled:
            self.pool_note = "probe samples of iterable data come from a pool read once at the start"
        groups = [(train, self.train_indices)] + ([(heldout, self.test_indices)] if heldout is not None else [])
        if plan_data is not None and heldout is not None:
            swaps = [[(int(i), int(j)) for i, j in run["replace"].items()] for run in plan_data.plan["runs"][1:]]
            self.plan_swaps = swaps
            self.plan_run = plan_data.run
            self.swap_indices = np.asarray([i for run in swaps for i, _ in run] + [j for run in swaps for _, j in run],
                                           dtype=np.int64)
            groups.append((SampleSource.of(train.loader, plan_data.base), self.swap_indices))
        sharding = sharded_parameters(trainer, pl_module)
        if sharding is not None and sharding.startswith("FSDP1"):
            raise ValueError(
                f"ProbeLosses (SASMonitor's probes) cannot run under {sharding}: they call the LightningModule outside "
                "the FSDP wrapper, on its sharded parameters. Pass num_train_probes=0 (the loss and weight statistics "
                "work under FSDP1), or shard with FSDP2 (torch.distributed.fsdp.fully_shard, e.g. in configure_model "
                "with ModelParallelStrategy), under which the probes are tested."
            )
        world, rank = int(getattr(trainer, "world_size", 1) or 1), int(getattr(trainer, "global_rank", 0) or 0)
        # this rank's points (every point when the forward is collective, so that the ranks run the
        # same batches in the same order)
        split = world > 1 and sharding is None
        positions: list[int] = []
        offset = 0
        try:
            self._batches = []
            for source, indices in groups:
                mine = np.arange(len(indices))
                if split:
                    mine = mine[(mine + offset) % world == rank]
                for i in range(0, len(mine), self.probe_batch_size):
                    chunk = mine[i : i + self.probe_batch_size]
                    self._batches.append(prepare_batch(trainer, source.collate(source.samples(indices[chunk])), pl_module.device))
                    positions.extend(int(p) + offset for p in chunk)
                offset += len(indices)
        except Exception as err:  # samples that cannot be batched: probes off, training goes on
            self._disable(f"the probe samples could not be batched ({type(err).__name__}: {err})")
            return
        self._activate(trainer, pl_module, len(self.train_indices), len(self.test_indices), len(self.swap_indices),
                       positions)
        if heldout is None and self.enabled:
            if self.heldout_elsewhere:
                no_heldout += ("; the control replica's gap on the held-out split of the training data is "
                               "control_heldout_gap")
            for key in ERGODIC_GAP_KEYS + ("probe_test_loss",):
                self.unavailable[key] = no_heldout
            if not self.heldout_elsewhere and self.num_test_probes > 0:
                warn_once(self, "noheldout", f"ProbeLosses: {no_heldout}; ergodic_gap is left out. Give the Trainer "
                          "validation data (val_dataloaders, or a val_dataloader() with a validation_step), or use "
                          "SASMonitor(replicas=K), whose control replica measures the gap on holdout_fraction of the "
                          "training data.")

    @staticmethod
    def _plan_dataset(dataset: Any) -> Any:
        """The training set when it is a run of a multi-run plan
        (:meth:`~lightning_sas.data.NeighbouringDataset.from_plan`), else None."""
        return dataset if getattr(dataset, "plan", None) is not None and getattr(dataset, "base", None) is not None else None

    def _activate(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", num_train: int, num_test: int,
                  num_extra: int = 0, positions: list[int] | None = None) -> None:
        """Dry-run the per-sample loss on the probe batches and set up the metric and buffers."""
        expected = _batch_length(self._batches[0]) if self._batches else 0
        try:
            first = self.evaluate(trainer, pl_module, self._batches[:1])
        except Exception as err:  # a probe that cannot run is skipped, training goes on
            self._disable(f"the per-sample loss failed on a probe batch ({type(err).__name__}: {err})")
            return
        if self._batches and (first.ndim != 1 or first.shape[0] != expected):
            self._disable(f"the per-sample loss returned shape {tuple(first.shape)}, expected ({expected},)")
            return
        device = pl_module.device
        total = num_train + num_test + num_extra
        # the states are the same on every rank (full rows are added at flush): no torchmetrics sync
        kwargs = {"sync_on_compute": False}
        self.metric = (ErgodicGap(num_train, num_test, max_blocks=self.max_blocks, num_extra=num_extra, **kwargs)
                       if num_test else TimeAverage(total, max_blocks=self.max_blocks, **kwargs)).to(device)
        self.metric.num_train = num_train  # type: ignore[attr-defined]
        world, rank = int(getattr(trainer, "world_size", 1) or 1), int(getattr(trainer, "global_rank", 0) or 0)
        owned = torch.zeros(total, dtype=torch.bool)
        owned[rank::world] = True
        self._owned_mask = owned.to(device)
        self._positions = torch.as_tensor(list(range(total)) if positions is None else positions, dtype=torch.int64,
                                          device=device)
        rows = self.flush_every // self.probe_every + 2
        self._rows = torch.zeros((rows, total), dtype=device_float_dtype(device), device=device)
        if self._restored is not None:
            self._apply_restored(self._restored)
            self._restored = None

    def failed_here(self) -> bool:
        """Off on this rank (a failure, or off on every rank by configuration)."""
        return not self.enabled

    def off_on(self, ranks: list[int], reason: str | None = None) -> None:
        if self.enabled:  # on here, off on another rank
            self._disable(reason or f"the probes failed on rank {', '.join(map(str, ranks))} (see that rank's warning)")

    def collective_payload(self, purpose: str) -> list[Tensor]:
        """This rank's pending probe rows, zero outside its own points (summed over ranks)."""
        n = len(self._row_steps)
        if not self.enabled or self.metric is None or not n or self._rows is None or self._owned_mask is None:
            return []
        rows = self._rows[:n]
        return [torch.where(self._owned_mask, rows, torch.zeros((), dtype=rows.dtype, device=rows.device))]

    def _disable(self, reason: str, warn: bool = True) -> None:
        self.enabled = False
        for key in PROBE_KEYS:
            self.unavailable.setdefault(key, f"probe losses are off: {reason}")
        if warn:
            warn_once(self, "disabled", f"ProbeLosses: {reason}; probe losses and the ergodic gap are skipped, the rest keeps working.")

    def _per_sample(self, pl_module: "pl.LightningModule", batch: Any) -> Tensor:
        return per_sample_loss(pl_module, batch, self.loss_fn)

    def evaluate(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", batches: list[Any] | None = None) -> Tensor:
        """Per-sample losses of this rank's probe batches (the points at ``_positions``), as an
        observer (:func:`~lightning_sas.isolation.observed`)."""
        with observed(pl_module, trainer):
            parts = [self._per_sample(pl_module, b).detach().to(torch.float64) for b in (self._batches if batches is None else batches)]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64, device=pl_module.device)

    # -- hot path (only at probe steps) ---------------------------------------------------
    def on_train_batch_end(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.record(trainer, pl_module)
        if not self.owned and self._row_steps and self.should_flush(self._index):
            self._standalone_flush(trainer, pl_module, trainer.global_step)

    def record(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._batches_seen += 1
        if not self.enabled or self.metric is None:
            return
        stepped = entry_completed(trainer, pl_module.automatic_optimization, self._index)
        if stepped and self.should_probe(self._index):
            self.probe(trainer, pl_module, self._index)

    def probe(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", index: int) -> None:
        """Evaluate the probe losses at entry ``index`` (after its optimizer step)."""
        self._index = index
        if not self.enabled or self.metric is None:
            return
        try:
            values = self.evaluate(trainer, pl_module)
        except Exception as err:
            self._disable(f"the per-sample loss failed during training ({type(err).__name__}: {err})")
            return
        assert self._rows is not None and self._positions is not None
        slot = len(self._row_steps)
        if slot >= self._rows.shape[0]:
            self._rows = torch.cat([self._rows, torch.zeros_like(self._rows)])
        row = self._rows[slot]
        if values.shape[0] == row.shape[0]:
            row.copy_(values)
        else:  # this rank's points only: zeros elsewhere
            row.zero_()
            row.index_copy_(0, self._positions, values.to(row.dtype))
        self._row_steps.append(index)

    # -- flush ----------------------------------------------------------------------------
    def flush(self, ctx: FlushContext) -> None:
        ctx.unavailable.update(self.unavailable)
        if not self.enabled or self.metric is None:
            return
        metric = self.metric
        n = len(self._row_steps)
        if n and self._rows is not None:
            reduced = ctx.reduced.get(self)
            rows = reduced[0] if reduced else self._rows[:n]  # summed over ranks, or this process's
            for row, step in zip(rows, self._row_steps):  # the same full rows on every rank
                metric.update(row, step)
            host = rows.cpu().numpy().astype(np.float64)  # sync-ok: once per flush
            if ctx.writer is not None:
                ctx.writer.append("probes", {"step": np.asarray(self._row_steps, dtype=np.int64), "losses": host})
            self._row_steps = []
        metric.start_step = probe_window_start(ctx.window_start, metric.cursor.starts)
        nonfinite = int(metric.nonfinite.sum())  # sync-ok: flush time
        arrays = metric.block_arrays(metric.start_step)  # sync-ok: flush time
        per_point = time_average(arrays["means"][None], arrays["counts"])[0]  # NaN: no finite value in the window
        gap = metric.gap_with_se() if isinstance(metric, ErgodicGap) else None
        num_train = int(getattr(metric, "num_train", metric.num_points))
        train_avg = per_point[:num_train][np.isfinite(per_point[:num_train])]
        self._last = {
            "nonfinite_probe_losses": nonfinite,
            "probe_train_loss": float(train_avg.mean()) if train_avg.size else None,
        }
        if gap is not None:
            self._last.update(
                {
                    "ergodic_gap": gap["gap"],
                    "ergodic_gap_se": gap["gap_se"],
                    "ergodic_gap_lower": gap["gap_lower"],
                    "ergodic_gap_upper": gap["gap_upper"],
                    "probe_train_loss": gap["train_loss"],
                    "probe_test_loss": gap["test_loss"],
                    "ergodic_gap_source": self.ergodic_gap_source,
                }
            )
            test_avg = per_point[num_train:]
            ctx.histograms["probes/time_avg_loss_test"] = test_avg[np.isfinite(test_avg)]
        ctx.histograms["probes/time_avg_loss_train"] = train_avg
        if metric.cursor.first_block_from(metric.start_step) >= metric.cursor.n_blocks:  # nothing in the window
            reason = (f"no probe evaluation inside the statistics window yet (it starts at step {metric.start_step}; "
                      f"probe_every={self.probe_every}); the probe of the untrained model at step 0 never counts")
            for key in ERGODIC_GAP_KEYS + ("probe_train_loss", "probe_test_loss"):
                self._last[key] = None
                ctx.unavailable.setdefault(key, reason)
        ctx.summary.update(self._last)

    # -- state ----------------------------------------------------------------------------
    def state_dict(self, reduced: list[Tensor] | None = None) -> dict[str, Any]:
        """Tensors and primitives only. The time averages are the same on every rank; the pending
        rows are summed over ranks here (a collective under DDP, made on every rank as Lightning
        does; ``reduced`` is that sum when :class:`~lightning_sas.SASMonitor` made it already), so
        a resume on any number of ranks continues exactly (each rank keeps its own points)."""
        if reduced is None and not self.owned:
            reduced = exchange([self], "checkpoint").get(self)
        state: dict[str, Any] = {
            "config": self.config(),
            "batches_seen": self._batches_seen,
            "train_indices": torch.from_numpy(self.train_indices.astype(np.int64)),
            "test_indices": torch.from_numpy(self.test_indices.astype(np.int64)),
        }
        if self.metric is not None:
            state["metric"] = self.metric.checkpoint_state()
            n = len(self._row_steps)
            if n and self._rows is not None:
                rows = reduced[0] if reduced else self._rows[:n]
                state["pending_rows"] = rows.detach().cpu().clone()  # sync-ok: checkpoint time
                state["pending_steps"] = list(self._row_steps)
        return state

    def _apply_restored(self, state: dict[str, Any]) -> None:
        assert self.metric is not None and self._rows is not None
        if "metric" in state and not self.metric.load_checkpoint_state(state["metric"]):
            warn_once(self, "shape", "ProbeLosses: the checkpoint's probe set differs in size; probe statistics restart.")
            return
        if "pending_rows" in state:
            n = len(state["pending_steps"])
            self._rows[:n].copy_(state["pending_rows"].to(self._rows.device))
            self._row_steps = [int(s) for s in state["pending_steps"]]


def _batch_length(batch: Any) -> int:
    """Samples in a collated batch (the first dimension of its first tensor)."""
    leaf = batch
    while isinstance(leaf, (list, tuple)) and leaf:
        leaf = leaf[0]
    if isinstance(leaf, dict) and leaf:
        return _batch_length(next(iter(leaf.values())))
    return int(leaf.shape[0]) if isinstance(leaf, Tensor) and leaf.ndim else 0
