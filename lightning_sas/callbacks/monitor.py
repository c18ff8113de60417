"""``SASMonitor``: the one callback most users add."""

from __future__ import annotations

import os
import time
from typing import Any

from lightning_sas import _compat as pl  # pl.Trainer, pl.LightningModule: of either namespace
from lightning_sas._compat import Callback, is_tensorboard_logger
from lightning_sas._private import created_experiment, merge_into_next_log_hyperparams, remove_log_hyperparams_merge
from lightning_sas.callbacks._common import is_due, is_global_zero, next_due, say_once, store_location, warn_once
from lightning_sas.callbacks.base import FlushContext, exchange
from lightning_sas.callbacks.loss_stream import LossStream
from lightning_sas.callbacks.probe_losses import ProbeLosses
from lightning_sas.callbacks.sas_replicas import SAS_KEYS, SASReplicas
from lightning_sas.losses import PerSampleLoss
from lightning_sas.validation import check_bool, check_int, check_seed
from lightning_sas.callbacks.weight_snapshots import WeightSnapshots
from lightning_sas.diagnostics import LOSS_KEYS, PROBE_KEYS, WEIGHT_KEYS, unavailable_reasons

__all__ = ["SASMonitor"]

#: an entry index never reached (no work scheduled)
_NEVER = 1 << 62

#: the checkpoint key of every monitor's state before :attr:`SASMonitor.state_key` told them apart
LEGACY_STATE_KEY = "SASMonitor"


def _adopt_setting(arg: str, part: Any, name: str, value: Any) -> None:
    """Give a part the user configured the monitor's ``name`` (``flush_every``, ``seed``): adopted
    when the part's own is at its default, an error naming both values when set to another."""
    import inspect

    current = getattr(part, name)
    if current == value:
        return
    default = inspect.signature(type(part).__init__).parameters[name].default
    if current != default:
        raise ValueError(
            f"SASMonitor: {arg}={type(part).__name__}({name}={current!r}) and SASMonitor({name}={value!r}) differ, "
            f"and the monitor's {name} applies to every part: pass SASMonitor({name}={current!r}) too, or leave "
            f"{type(part).__name__}'s {name} at its default ({default!r})"
        )
    setattr(part, name, value)
    projection = getattr(part, "_projection", None)  # WeightSnapshots' sketch is seeded at construction
    if name == "seed" and projection is not None:
        part._projection = type(projection)(k=projection.k, seed=value, chunk_size=projection.chunk_size)


def _forget_our_hparams(logger: Any, ours: dict[str, Any]) -> None:
    """Take our keys out of the hparams dicts a logger keeps for its ``hparams.yaml`` (the
    TensorBoard and CSV loggers' own, and their experiment writer's)."""
    for holder in (logger, created_experiment(logger)):
        kept = getattr(holder, "hparams", None) if holder is not None else None
        if isinstance(kept, dict):
            for key in ours:
                kept.pop(key, None)


class SASMonitor(Callback):
    """Late-phase training diagnostics for any LightningModule, unchanged.

    Composes :class:`LossStream` (the loss of every step), :class:`WeightSnapshots` (norms,
    distances, sketch) and :class:`ProbeLosses` (per-sample probe losses, ergodic gap), flushes
    them together every ``flush_every`` stream entries (nothing per step; under DDP two
    collectives per flush, measured by ``tests/test_ddp_collectives.py``: one all-reduce of an
    "is each part still on" flag matrix, then one packed all-reduce of every part's unflushed
    losses, probe rows and replica time averages, plus one more when the weights are sharded by
    FSDP; see :func:`~lightning_sas.callbacks.base.exchange`), logs the diagnostics to every Lightning logger (TensorBoard also gets
    histograms, figures every ``figure_every`` flushes and a custom-scalars layout), writes the
    streams to ``<log_dir>/sas`` (read them with ``lightning-sas report`` or
    :func:`lightning_sas.store.read_run`) and returns the latest figures from :meth:`summary`.

    Example::

        trainer = pl.Trainer(callbacks=[SASMonitor()], logger=TensorBoardLogger("runs"))
        trainer.fit(model, datamodule)
        print(trainer.callbacks[0].summary()["iat"])

    The settings come in groups. Each group is either the flat keywords below (short calls,
    LightningCLI) or one configured part: ``loss_stream=LossStream(...)``,
    ``weights=WeightSnapshots(...)``, ``probes=ProbeLosses(...)``, ``replicas=SASReplicas(...)``;
    a part given together with a flat keyword of its group is an error naming both.

    Args:
        flush_every: stream entries (optimizer steps; batches in manual optimization) per flush,
            for every part.

        *The loss stream* (or ``loss_stream``):
        window: raw loss values kept for the ACF, IAT, periodogram and Geweke z.
        max_blocks: blocks of the bounded loss summary (MSER, time average, batch means).
        late_phase_start: fixed late-phase start; None finds it with MSER at each flush.

        *The weights* (or ``weights``):
        snapshot_every, sketch_every, sketch_dim, max_layers, layer_filter, track_init, track_ergodic_mean:
            see :class:`WeightSnapshots`.

        *The probes and the ergodic gap* (or ``probes``):
        probe_every, num_train_probes, num_test_probes, probe_batch_size:
            see :class:`ProbeLosses` (``num_train_probes=0`` switches probes off).
        loss_fn: per-sample loss ``(module, batch) -> Tensor[B]`` or its import path, for the
            probes and the replicas (default: the module's ``sas_per_sample_loss`` or inferred).

        *The SAS estimate* (or ``replicas=SASReplicas(...)``):
        replicas: ``K`` perturbed replicas for the in-run SAS estimate (0: off), or a configured
            :class:`SASReplicas`.
        swaps, fork_at, replica_sampler, holdout_fraction, replica_path: passed to
            :class:`SASReplicas` (``replica_sampler`` is its ``sampler``, ``replica_path`` its
            ``path``); ``swaps`` is ``m``, the samples each replica swaps (``"auto"``: the
            default of the bias and calibration studies, at most 4 % of ``S``).

        *What is written where*:
        figure_every: flushes between live figure sets (0: never); every fit ends with one final
            set, whatever the budget.
        figure_budget: largest share of wall time the live figures may take (default 0.005);
            a due figure set waits until it fits (:class:`~lightning_sas.loggers.FigureSchedule`;
            0: the cadence alone). ``lightning-sas report`` draws every figure offline.
        histograms: log histograms of time-averaged probe losses and per-layer update sizes.
        histogram_every: flushes between TensorBoard histograms (and at the last flush; 0: none);
            a histogram costs about a millisecond each.
        store: where the streams go: ``True`` (default) ``<log_dir>/sas`` of the first logger
            with a log directory, ``<default_root_dir>/lightning_sas/<run id>`` with loggers
            that have none (MLflow, W&B; one line says where), nothing without a logger
            (``logger=False``: one line says so; ``fast_dev_run``); a path (that directory,
            logger or not), or ``False`` (nothing written; the summary lives in memory).
        progress_bar: show the running SAS estimate (``sas``), IAT (``sas_iat``) and ergodic
            gap (``sas_gap``) in Lightning's progress bar, updated at every flush.

        seed: the one seed of all randomness (probe choice, sketch, split, swaps, sampler).
        loss_stream, weights, probes: configured parts, instead of their groups' keywords.
    """

    #: each group's flat keywords, and the part that can be given instead
    GROUPS: dict[str, tuple[str, ...]] = {
        "loss_stream": ("window", "max_blocks", "late_phase_start"),
        "weights": ("snapshot_every", "sketch_every", "sketch_dim", "max_layers", "layer_filter", "track_init",
                    "track_ergodic_mean"),
        "probes": ("probe_every", "num_train_probes", "num_test_probes", "probe_batch_size"),
        "replicas": ("swaps", "fork_at", "replica_sampler", "holdout_fraction", "replica_path"),
    }

    def __init__(
        self,
        flush_every: int = 400,
        window: int = 4096,
        max_blocks: int = 256,
        late_phase_start: int | None = None,
        snapshot_every: int = 100,
        sketch_every: int = 100,
        sketch_dim: int = 32,
        max_layers: int = 16,
        layer_filter: str | None = None,
        track_init: bool = True,
        track_ergodic_mean: bool = True,
        probe_every: int = 200,
        num_train_probes: int = 256,
        num_test_probes: int = 256,
        probe_batch_size: int = 256,
        loss_fn: PerSampleLoss | str | None = None,
        figure_every: int = 5,
        figure_budget: float = 0.005,
        histograms: bool = True,
        store: "bool | str" = True,
        replicas: "int | SASReplicas" = 0,
        fork_at: str | int = "start",
        replica_sampler: str = "common",
        holdout_fraction: float | None = None,
        replica_path: str = "auto",
        progress_bar: bool = False,
        seed: int = 0,
        swaps: int | str = "auto",
        loss_stream: LossStream | None = None,
        weights: WeightSnapshots | None = None,
        probes: ProbeLosses | None = None,
        histogram_every: int = 5,
    ) -> None:
        from lightning_sas.loggers.figure_schedule import FigureSchedule

        given = dict(locals())
        self._check_groups(given)
        # every argument is checked before anything is allocated (the parts check their own)
        flush_every = check_int("flush_every", flush_every, 1)
        seed = check_seed("seed", seed)
        histograms = check_bool("histograms", histograms)
        progress_bar = check_bool("progress_bar", progress_bar)
        histogram_every = check_int("histogram_every", histogram_every, 0, meaning=" (0: no histograms)")
        if not isinstance(store, (bool, str, os.PathLike)):
            raise ValueError(f"store must be True, False or a directory path, got {store!r}")
        if not isinstance(replicas, SASReplicas) and (isinstance(replicas, bool) or not isinstance(replicas, int)
                                                      or replicas < 0):
            raise ValueError(f"replicas must be 0 (off), an integer K >= 1 or a SASReplicas, got {replicas!r}")
        for name, part, kind in (("loss_stream", loss_stream, LossStream), ("weights", weights, WeightSnapshots),
                                 ("probes", probes, ProbeLosses)):
            if part is not None and not isinstance(part, kind):
                raise ValueError(f"{name} must be None or a {kind.__name__}, got {part!r}")
            if part is not None:  # flushed every flush_every of the monitor's, whatever it was built with
                part.check_memory(flush_every)
        self.figure_schedule = FigureSchedule(figure_every, figure_budget)
        self.loss_stream = loss_stream or LossStream(
            flush_every=flush_every, window=window, max_blocks=max_blocks, late_phase_start=late_phase_start
        )
        self.weights = weights or WeightSnapshots(
            snapshot_every=snapshot_every,
            sketch_every=sketch_every,
            sketch_dim=sketch_dim,
            flush_every=flush_every,
            track_init=track_init,
            track_ergodic_mean=track_ergodic_mean,
            max_layers=max_layers,
            layer_filter=layer_filter,
            seed=seed,
        )
        self.probes = probes or ProbeLosses(
            probe_every=probe_every,
            num_train_probes=num_train_probes,
            num_test_probes=num_test_probes,
            probe_batch_size=probe_batch_size,
            loss_fn=loss_fn,
            flush_every=flush_every,
            seed=seed,
        )
        if isinstance(replicas, SASReplicas):
            self.replicas: SASReplicas | None = replicas
        elif isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
            raise ValueError(f"replicas must be 0 (off), an integer K >= 1 or a SASReplicas, got {replicas!r}")
        elif replicas > 0:
            self.replicas = SASReplicas(
                replicas=replicas,
                swaps=swaps,
                fork_at=fork_at,
                sampler=replica_sampler,
                holdout_fraction=holdout_fraction,
                loss_fn=loss_fn,
                path=replica_path,
                flush_every=flush_every,
                seed=seed,
            )
        else:
            self.replicas = None
        configured = {"loss_stream": loss_stream, "weights": weights, "probes": probes,
                      "replicas": replicas if isinstance(replicas, SASReplicas) else None}
        for arg, part in configured.items():
            for name, value in (("flush_every", flush_every), ("seed", seed)):
                if part is not None and hasattr(part, name):
                    _adopt_setting(arg, part, name, value)
        for part in self.parts:
            part.owned = True  # the monitor flushes every part together
        self.flush_every = flush_every
        self.progress_bar = progress_bar
        self.histograms = histograms
        self.histogram_every = histogram_every
        self.store = store
        self.seed = seed
        self._writer: Any = None
        self._flushes = 0
        self._summary: dict[str, Any] = dict.fromkeys(self._keys())
        #: the next entries with work due (set by ``_schedule`` at ``on_train_start``)
        self._weights_due: int | None = None
        self._probes_due: int | None = None
        self._due = self._flush_due = 0
        self._restored_step: int | None = None
        #: the run the store belongs to (set when the store is opened; kept in the checkpoint, so
        #: that a resume continues the same store and a new fit never appends to it)
        self._run_id: str | None = None
        self._layout_written = False
        #: the last flush's context while its figures were not drawn (drawn at ``on_train_end``)
        self._figures_owed: FlushContext | None = None
        #: the training device (where the flush and checkpoint collectives run)
        self._device: Any = None

    @classmethod
    def _check_groups(cls, given: dict[str, Any]) -> None:
        """A configured part together with a flat keyword of its group is ambiguous: one error
        naming both (LightningCLI passes every default, so only non-default values count)."""
        import inspect

        defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()}
        for part, keywords in cls.GROUPS.items():
            value = given.get(part)
            if part == "replicas":
                if not isinstance(value, SASReplicas):
                    continue
            elif value is None:
                continue
            clashing = [k for k in keywords if given.get(k) != defaults.get(k)]
            if clashing:
                raise ValueError(f"SASMonitor: {part}= is a configured {type(value).__name__}, so {', '.join(clashing)} "
                                 f"must be set on it (or drop {part}=)")

    @property
    def parts(self) -> tuple[Any, ...]:
        parts: tuple[Any, ...] = (self.loss_stream, self.weights, self.probes)
        return parts + ((self.replicas,) if self.replicas is not None else ())

    @property
    def state_key(self) -> str:
        """Key of this monitor's state in a checkpoint: the class and the settings that tell two
        monitors of one Trainer apart (store, seed, replicas), in the form of Lightning's
        ``Callback._generate_state_key``."""
        store = self.store if isinstance(self.store, bool) else os.fspath(self.store)
        replicas = 0 if self.replicas is None else self.replicas.replicas
        return f"{type(self).__qualname__}{ {'store': store, 'seed': self.seed, 'replicas': replicas} !r}"

    def config(self) -> dict[str, Any]:
        """Every setting that shapes the statistics (stored in the run's meta and as hparams)."""
        cfg: dict[str, Any] = {}
        for part in self.parts:
            cfg.update(part.config())
        cfg.update({"figure_every": self.figure_every, "figure_budget": self.figure_budget, "seed": self.seed})
        return cfg

    @property
    def figure_every(self) -> int:
        """Flushes between live figure sets (0: none); held by :attr:`figure_schedule`."""
        return self.figure_schedule.every

    @property
    def figure_budget(self) -> float:
        """Largest share of wall time the live figures may take; held by :attr:`figure_schedule`."""
        return self.figure_schedule.budget

    # -- lifecycle ------------------------------------------------------------------------
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        if stage != "fit":
            return
        self._hook_hparams(trainer)

    def _hook_hparams(self, trainer: "pl.Trainer") -> None:
        """Merge our settings into the single hparams call Lightning makes after ``setup``, for
        TensorBoard (which keeps only the first hparams session of a run), MLflow and W&B; when
        Lightning makes no such call, :meth:`on_train_start` logs ours on their own.

        The merge is a wrapper set on the logger instance for that one call: it removes itself
        when called (and :meth:`_unhook_hparams` removes it at ``on_train_start`` if Lightning
        never called it), so after ``fit`` the logger and the trainer pickle as before. Our keys go
        to the hparams session only: they are taken out of the hparams the logger keeps for its
        ``hparams.yaml`` (which ``load_from_checkpoint(hparams_file=...)`` passes to the model)."""
        ours = self._hparams()
        for logger in getattr(trainer, "loggers", []) or []:
            # TensorBoard, MLflow and W&B only. Not CSV: its only hparams record is the
            # hparams.yaml that reloads the model (our settings are in the run store's meta.json
            # beside it). Other loggers keep exactly the user's hparams.
            if not any(cls.__name__ in ("MLFlowLogger", "WandbLogger") for cls in type(logger).__mro__) \
                    and not is_tensorboard_logger(logger):
                continue
            # (a logger wrapped already, by us or by someone else, is left alone)
            merge_into_next_log_hyperparams(logger, ours, owner=self, after=lambda lg: _forget_our_hparams(lg, ours))

    def _hparams(self) -> dict[str, Any]:
        """Our settings as hyperparameters: ``sas/<setting>`` (numbers, strings, booleans)."""
        return {f"sas/{k}": v for k, v in self.config().items() if isinstance(v, (int, float, str, bool))}

    def _unhook_hparams(self, trainer: "pl.Trainer") -> list[Any]:
        """Remove a merge wrapper of ours that Lightning did not call; returns those loggers."""
        uncalled = []
        for logger in getattr(trainer, "loggers", []) or []:
            if remove_log_hyperparams_merge(logger, owner=self):
                uncalled.append(logger)
        return uncalled

    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        uncalled = self._unhook_hparams(trainer)
        self._device = pl_module.device
        if uncalled and is_global_zero(trainer):
            # Lightning logged no hyperparameters (``save_hyperparameters(logger=False)``): ours alone, once
            for logger in uncalled:
                if is_tensorboard_logger(logger) and getattr(logger, "hparams", None):
                    continue  # the project logged its own before fit: TensorBoard keeps that first session only
                logger.log_hyperparams(self._hparams())
                _forget_our_hparams(logger, self._hparams())
        self.figure_schedule.start()
        self.loss_stream.start(trainer, pl_module)
        self.weights.attach(pl_module)
        self.probes.heldout_elsewhere = self.replicas is not None
        if self.replicas is not None:  # first: iterable data is read once, into the replicas' pool
            self.replicas.attach(trainer, pl_module)
            source = self.replicas._source
            self.probes.pool = source if source is not None and source.pooled else None
        if self.probes.num_train_probes > 0:
            self.probes.attach(trainer, pl_module)
        else:
            self.probes.enabled = False
            self.probes.unavailable = {k: "probe losses are off (num_train_probes=0)" for k in PROBE_KEYS}
        self._schedule(self.loss_stream.current_index)
        if is_global_zero(trainer):
            directory, note = store_location(trainer, self.store)
            if note is not None:
                say_once(self, "store", note)
            if directory is not None and self._writer is None:
                from lightning_sas.store import RunWriter

                # writes run in a worker thread: a flush hands its arrays over and goes on. One
                # writer, one run: a directory another writer holds, or that holds another run's
                # streams, is refused here (StoreInUseError names the way out)
                self._writer = RunWriter(directory, config=self.config(), background=True, run_id=self._run_id,
                                         resume=self._restored_step is not None)
                self._run_id = self._writer.run_id
                self._writer.update_meta(
                    probe_num_train=int(len(self.probes.train_indices)),
                    probe_num_test=int(len(self.probes.test_indices)),
                    probe_train_indices=[int(i) for i in self.probes.train_indices],
                    probe_test_indices=[int(i) for i in self.probes.test_indices],
                    ergodic_gap_source=self.probes.ergodic_gap_source,
                    probe_num_swap=int(len(self.probes.swap_indices)),
                    plan_run=self.probes.plan_run,
                    plan_swaps=self.probes.plan_swaps,
                    automatic_optimization=bool(pl_module.automatic_optimization),
                    layer_names=self.weights.layer_names,
                )
                if self._restored_step is not None:
                    self._writer.truncate_after(self._restored_step)
            if not self._layout_written:
                from lightning_sas.loggers.export import write_layout

                write_layout(trainer)
                self._layout_written = True

    # -- hot path -----------------------------------------------------------------------
    def _schedule(self, index: int) -> None:
        """The entries at or after ``index`` with work due: the next weight snapshot, probe
        evaluation and flush (each part's cadence method decides; see ``next_due``)."""
        self._weights_due = self.weights.next_due(index)
        self._probes_due = self.probes.next_due(index)
        self._due = min((d for d in (self._weights_due, self._probes_due) if d is not None), default=_NEVER)
        self._flush_due = self.next_flush(index)

    def next_flush(self, index: int) -> int:
        """The first entry at or after ``index`` after which the monitor flushes (from
        ``flush_every`` unless :meth:`should_flush` is overridden)."""
        if type(self).should_flush is not SASMonitor.should_flush:
            return index
        return next_due(index, self.flush_every, offset=1)

    def on_before_optimizer_step(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", optimizer: Any) -> None:
        if self.loss_stream.current_index == self._weights_due:
            self.weights.capture(self._weights_due)

    def on_train_batch_end(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Every batch: the loss reference; an entry with nothing due costs an integer compare."""
        stream = self.loss_stream
        if not stream.record(trainer, pl_module, outputs, batch_idx):
            return  # a micro-batch of an accumulated step
        index = stream._pending_steps[-1]
        if self.replicas is not None:
            self.replicas.step(trainer, pl_module, index, batch_idx)
        if index >= self._due:
            if index == self._weights_due:
                self.weights.snapshot(index)
            if index == self._probes_due:
                self.probes.probe(trainer, pl_module, index)
            self._schedule(index + 1)
        if index >= self._flush_due:
            if self.should_flush(index):
                self.flush(trainer, pl_module)
                if self.progress_bar:
                    self._show_in_progress_bar(pl_module)
            self._flush_due = self.next_flush(index + 1)

    #: summary keys shown in the progress bar with ``progress_bar=True`` (name shown, key)
    PROGRESS_BAR_KEYS = (("sas", "sas_max"), ("sas_iat", "iat"), ("sas_gap", "ergodic_gap"))

    def _show_in_progress_bar(self, pl_module: "pl.LightningModule") -> None:
        """Put the running SAS estimate, IAT and ergodic gap in Lightning's progress bar (host
        floats from the last flush; not sent to the loggers)."""
        for name, key in self.PROGRESS_BAR_KEYS:
            value = self._summary.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                pl_module.log(name, float(value), prog_bar=True, logger=False, on_step=True, on_epoch=False)

    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self.loss_stream.pending or self._flushes == 0:
            self.flush(trainer, pl_module, final=True)
        owed, self._figures_owed = self._figures_owed, None
        if owed is not None and is_global_zero(trainer):
            # the last flush was a regular one whose figures waited (cadence or budget): the
            # final figure set of the fit, whatever the budget
            from lightning_sas.loggers.export import export_figures

            started = time.perf_counter()
            export_figures(trainer, owed)
            self.figure_schedule.drawn(time.perf_counter() - started)
        if self._writer is not None:
            self._writer.write_summary(self._json_summary(), durable=True)  # survives a power loss
            self._writer.close()
            self._writer = None

    def on_exception(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", exception: BaseException) -> None:
        """Training failed: the pending store writes still reach the disk (the run stays readable)."""
        self._figures_owed = None  # holds the trainer and the module
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def teardown(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        self._unhook_hparams(trainer)

    def should_flush(self, index: int) -> bool:
        """Flush after stream entry ``index``? Default: every ``flush_every`` entries."""
        return is_due(index, self.flush_every, offset=1)

    # -- flush ----------------------------------------------------------------------------
    def flush(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", final: bool = False) -> dict[str, Any]:
        """Reduce, summarise, log and store everything recorded since the last flush.

        Runs on every rank (it may use collectives); only rank 0 logs and writes. TensorBoard
        histograms go out every ``histogram_every`` flushes and at the last one (``final``).
        """
        ctx = FlushContext(trainer, pl_module, int(trainer.global_step), self._writer)
        ctx.reduced = exchange(self.parts, "flush", pl_module.device)
        self.loss_stream.flush(ctx)
        self.weights.flush(ctx)
        self.probes.flush(ctx)
        if self.replicas is not None:
            self.replicas.flush(ctx)
        self._flushes += 1
        summary = {**dict.fromkeys(self._keys()), **ctx.summary}
        summary["unavailable"] = unavailable_reasons(summary, ctx.unavailable)
        self._summary = summary
        if is_global_zero(trainer):
            from lightning_sas.loggers.export import export_flush

            every = self.histogram_every
            histograms = bool(self.histograms and every and (final or is_due(self._flushes - 1, every)))
            schedule = self.figure_schedule
            # the cadence and the budget govern the live figures; the last flush of a fit draws them always
            figures = (final and schedule.every > 0) or schedule.due()
            started = time.perf_counter() if figures else 0.0  # no clock read when nothing is drawn
            status = {**ctx.summary, **schedule.status()}
            export_flush(trainer, ctx, figures=figures, histograms=histograms, status_summary=status)
            if figures:
                schedule.drawn(time.perf_counter() - started)
            self._figures_owed = None if figures or not schedule.every else ctx
            if self._writer is not None:
                self._writer.write_summary(self._json_summary())
                if self._writer.error is not None:
                    warn_once(self, "store", f"SASMonitor: writing the run store failed ({type(self._writer.error).__name__}: "
                              f"{self._writer.error}); the store stops here, the summary and the loggers go on.")
        return self.summary()

    def _keys(self) -> tuple[str, ...]:
        keys = LOSS_KEYS + WEIGHT_KEYS + PROBE_KEYS
        return keys + (SAS_KEYS if self.replicas is not None else ())

    def on_train_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self.replicas is not None:
            self.replicas.on_train_epoch_end(trainer, pl_module)

    def _json_summary(self) -> dict[str, Any]:
        return {k: v for k, v in self._summary.items() if isinstance(v, (int, float, str, bool, dict)) or v is None}

    def summary(self) -> dict[str, Any]:
        """The diagnostics as of the last flush, as plain host values (None where not computable).

        Keys: ``late_phase_start``, ``late_phase_found``, ``window_start`` and ``window`` (the
        window every statistic averages over: ``"late phase"``, else ``"second half"``),
        ``loss_mean``, ``loss_se``, ``loss_std``,
        ``iat``, ``ess``, ``dominant_period``, ``power_fraction``, ``geweke_z``, ``stationary``,
        ``lr``, ``lr_constant_in_late_phase``, ``nonfinite_losses``, ``steps``, ``weight_norm``,
        ``update_size``, ``distance_from_init``, ``distance_to_ergodic_mean``,
        ``ergodic_mean_start``, ``grad_norm``, ``ergodic_gap``, ``ergodic_gap_se``,
        ``ergodic_gap_source``, ``probe_train_loss``, ``probe_test_loss``,
        ``nonfinite_probe_losses`` and ``layers`` (per-layer norms). With replicas also the SAS
        keys (``sas_max``, ``sas_mean``, ``sas_replaced``, ``stability_gap``, each with ``_se``,
        ``_null`` and ``_resolved``; ``sas_resolved``, ``sas_converged``, ``paper_coefficient``,
        ...; see :class:`SASReplicas`) and ``control_heldout_gap`` (with ``_se``): the control
        replica's gap on the held-out split, the gap ``stability_gap`` estimates. ``ergodic_gap``
        is always the main model's (validation probes). What each key means:
        :func:`lightning_sas.keys.explanation` (the texts of the Tags page).
        """
        return dict(self._summary)

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Every part's state (tensors and primitives). Under DDP a collective: the parts agree
        on which are on, then the unflushed losses and probe rows are summed over ranks in one
        packed all-reduce (:func:`~lightning_sas.callbacks.base.exchange`), so every rank's state
        is the global one and a resume at any step, on any number of ranks, continues exactly.
        Lightning calls it on every rank; call it on every rank when calling it yourself."""
        reduced = exchange(self.parts, "checkpoint", self._device)
        return {
            "format": 1,
            "flushes": self._flushes,
            "loss_stream": self.loss_stream.state_dict(reduced.get(self.loss_stream)),
            "weights": self.weights.state_dict(),
            "probes": self.probes.state_dict(reduced.get(self.probes)),
            "replicas": None if self.replicas is None else self.replicas.state_dict(reduced.get(self.replicas)),
            "run_id": self._run_id,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._flushes = int(state_dict.get("flushes", 0))
        run_id = state_dict.get("run_id")
        self._run_id = run_id if isinstance(run_id, str) else None
        self.loss_stream.load_state_dict(state_dict["loss_stream"])
        self.weights.load_state_dict(state_dict["weights"])
        self.probes.load_state_dict(state_dict["probes"])
        if self.replicas is not None and state_dict.get("replicas") is not None:
            self.replicas.load_state_dict(state_dict["replicas"])
        steps = state_dict["loss_stream"]["window_steps"]
        self._restored_step = int(steps[-1]) if len(steps) else -1

    def on_load_checkpoint(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("callbacks") or {}
        if self.state_key not in states and sum(isinstance(cb, SASMonitor) for cb in trainer.callbacks) == 1:
            # the only monitor resumes the only monitor state of the checkpoint: one saved under the
            # old constant key, or under other settings (a resume with another seed keeps its swaps)
            saved = [k for k in states if k == LEGACY_STATE_KEY or str(k).startswith(f"{type(self).__qualname__}{{")]
            if len(saved) == 1:
                if saved[0] != LEGACY_STATE_KEY:
                    say_once(self, "otherkey", f"SASMonitor: resuming the monitor state saved as {saved[0]} (this "
                                               f"monitor is {self.state_key})")
                states[self.state_key] = states.pop(saved[0])
        if self.state_key not in states:
            warn_once(
                self,
                "nostate",
                "SASMonitor: the checkpoint has no SASMonitor state (saved without it or by an older version); "
                "the diagnostics restart from this step.",
            )
