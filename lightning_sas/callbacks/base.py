"""Shared shape of the stream callbacks: a hot path, a flush, state, and an optional owner."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl

from lightning_sas._compat import Callback
from lightning_sas.callbacks._common import is_global_zero, run_directory, stream_index

__all__ = ["FlushContext", "StreamCallback"]


class FlushContext:
    """What one flush knows: the step, the late-phase start so far, the summary being filled, and
    the run writer (``None`` off rank 0 or when storing is off)."""

    def __init__(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", step: int, writer: Any) -> None:
        self.trainer = trainer
        self.pl_module = pl_module
        self.step = step
        self.writer = writer
        self.late_phase_start: int | None = None
        self.late_phase_found: bool = False
        #: first step of the window every statistic averages over (late phase, else second half)
        self.window_start: int | None = None
        #: the late-phase start held over two flushes (or was fixed by the user)
        self.late_phase_stable: bool = False
        self.summary: dict[str, Any] = {}
        #: summary keys a part cannot give this flush, with the reason (``summary["unavailable"]``)
        self.unavailable: dict[str, str] = {}
        #: arrays for histograms and figures, exported by the logger on rank 0
        self.histograms: dict[str, Any] = {}
        self.figure_data: dict[str, Any] = {}


class StreamCallback(Callback):
    """Base of ``LossStream``, ``ProbeLosses`` and ``WeightSnapshots``.

    A part either runs on its own (it flushes every ``flush_every`` stream entries, writes to
    ``<log_dir>/sas`` and logs its scalars) or is owned by :class:`~lightning_sas.SASMonitor`,
    which calls :meth:`flush` for all parts at once. The cadence decision is one overridable
    method, :meth:`should_flush`.
    """

    def __init__(self, flush_every: int = 400) -> None:
        if not isinstance(flush_every, int) or flush_every < 1:
            raise ValueError(f"flush_every must be a positive integer, got {flush_every!r}")
        self.flush_every = flush_every
        #: set by ``SASMonitor`` when it drives this part
        self.owned = False
        self._writer: Any = None
        self._writer_ready = False

    # -- cadence ---------------------------------------------------------------------------
    def should_flush(self, index: int) -> bool:
        """Flush after stream entry ``index`` (0-based)? Default: every ``flush_every`` entries."""
        return (index + 1) % self.flush_every == 0

    @property
    def diagnostics(self) -> dict[str, Any]:
        """This part's diagnostics as of its last flush (host values, no device access)."""
        return dict(getattr(self, "_last", {}))

    def begin_batch(self, index: int) -> None:
        """Called at each batch start with the index of the stream entry it contributes to."""
        self._index = index

    def on_train_batch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", batch: Any, batch_idx: int) -> None:
        self.begin_batch(stream_index(trainer, pl_module, self._batches_seen))

    # -- to implement ----------------------------------------------------------------------
    def flush(self, ctx: FlushContext) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- standalone plumbing ---------------------------------------------------------------
    def _standalone_writer(self, trainer: "pl.Trainer") -> Any:
        """The run writer of a part used on its own: rank 0, into the logger's ``log_dir/sas``
        (:func:`run_directory`; None without a logger directory: nothing is written)."""
        if not self._writer_ready:
            self._writer_ready = True
            directory = run_directory(trainer) if is_global_zero(trainer) else None
            if directory is not None:
                from lightning_sas.store import RunWriter

                self._writer = RunWriter(directory, config=self.config())
        return self._writer

    def _standalone_flush(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", step: int) -> None:
        from lightning_sas.loggers.export import export_flush

        ctx = FlushContext(trainer, pl_module, step, self._standalone_writer(trainer))
        self.flush(ctx)
        if is_global_zero(trainer):
            export_flush(trainer, ctx, figures=False)
            if ctx.writer is not None:
                ctx.writer.write_summary(ctx.summary)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Reset, then keep the state until the part is attached to the (device-placed) module
        at ``on_train_start``, where ``_apply_restored`` puts it back."""
        self._reset_state()
        self._batches_seen = int(state_dict["batches_seen"])
        self._restored = dict(state_dict)

    def _reset_state(self) -> None:  # pragma: no cover - every part defines it
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """The constructor arguments that define the statistics (stored in the run's meta)."""
        return {"flush_every": self.flush_every}
