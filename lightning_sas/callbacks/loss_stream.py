"""``LossStream``: the training loss of every optimizer step, streamed with bounded memory."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_sas import _compat as pl  # pl.Trainer, pl.LightningModule: of either namespace
from lightning_sas.callbacks._common import device_float_dtype, entry_completed, extract_loss, first_param_group
from lightning_sas.validation import check_int
from lightning_sas.callbacks.base import FlushContext, StreamCallback, exchange, process_group_size
from lightning_sas.diagnostics import loss_diagnostics
from lightning_sas.stats.blocks import BlockMoments

__all__ = ["LossStream"]


class LossStream(StreamCallback):
    """Records the loss ``training_step`` returned at every step and summarises its late phase.

    Hot path (every batch): a reference to the detached loss tensor is kept (under gradient
    accumulation, micro-batch losses are summed on device first); no kernel is launched and
    nothing is read back. At each flush
    the buffer is averaged over ranks (packed with the other parts' states into one all-reduce,
    see :func:`~lightning_sas.callbacks.base.exchange`), copied to the host once, and appended to

    * a block summary (:class:`~lightning_sas.stats.blocks.BlockMoments`, ``max_blocks`` blocks)
      for the late-phase start (MSER), time average and batch-means standard error, and
    * a raw window of the last ``window`` values for the ACF, IAT, periodogram and Geweke z,

    so memory is fixed by ``flush_every``, ``window`` and ``max_blocks``, never by run length.

    Indexing: one entry per optimizer step in automatic optimization (with
    ``accumulate_grad_batches=N`` Lightning hands over ``loss / N`` per micro-batch, so the entry is
    the mean of the micro-batch losses), one per batch in manual optimization.

    Args:
        flush_every: entries between flushes (host copy, statistics, logging, storage).
        window: raw values kept for the spectral statistics.
        max_blocks: blocks of the bounded summary (even).
        late_phase_start: fixed late-phase start (a stream index); None finds it with MSER (count-weighted, on the stream's blocks).
    """

    def __init__(
        self,
        flush_every: int = 400,
        window: int = 4096,
        max_blocks: int = 256,
        late_phase_start: int | None = None,
    ) -> None:
        super().__init__(flush_every=flush_every)
        self.window = check_int("window", window, 16)
        self.max_blocks = check_int("max_blocks", max_blocks, 8, even=True)
        self.late_phase_start = check_int("late_phase_start", late_phase_start, 0, 1 << 62, allow_none=True)
        self.check_memory(self.flush_every)
        self._reset_state()

    #: device memory a pending entry holds until the flush: its loss tensor (512 bytes, the
    #: smallest block of CUDA's caching allocator) and its float64 host copy
    PENDING_ENTRY_BYTES = 520

    def reserved_buffers(self, flush_every: int) -> list[tuple[str, float, str]]:
        return [
            ("pending losses", flush_every * self.PENDING_ENTRY_BYTES,
             f"flush_every ({flush_every}) x {self.PENDING_ENTRY_BYTES} bytes per kept loss"),
            ("raw window", 3 * 8 * 2 * self.window, f"window ({self.window}) x 3 columns x 8 bytes x 2 (concatenation)"),
            ("block summary", 3 * 8 * self.max_blocks, f"max_blocks ({self.max_blocks}) x 3 x 8 bytes"),
        ]

    def _reset_state(self) -> None:
        self.blocks = BlockMoments(max_blocks=self.max_blocks)
        self._window_steps = np.zeros(0, dtype=np.int64)
        self._window_values = np.zeros(0, dtype=np.float64)
        self._window_lr = np.zeros(0, dtype=np.float64)
        self._batches_seen = 0
        #: index of the entry the next batch contributes to (set at ``start``, advanced by ``record``)
        self._index: int = 0
        self._automatic = True
        self._lr_group: dict[str, Any] | None = None
        #: the loss tensors of the pending entries (references: no device work per step)
        self._pending_losses: list[Tensor] = []
        self._accumulating = False
        #: learning rate of each pending entry (a float, or a device scalar read at flush)
        self._pending_lr: list[float | Tensor] = []
        self._accumulator: Tensor | None = None
        self._pending_steps: list[int] = []
        self._pending_batches: list[int] = []
        self._pending_epochs: list[int] = []
        self._pending_global_steps: list[int] = []
        self._last: dict[str, Any] = {}
        #: entries whose batch returned no loss tensor (``training_step`` returned None)
        self._no_loss_entries = 0
        self._previous_start: int | None = None
        # entries restored from a checkpoint taken between flushes (host values, flushed first)
        self._carry_values = np.zeros(0, dtype=np.float64)
        self._carry_lr = np.zeros(0, dtype=np.float64)

    def config(self) -> dict[str, Any]:
        return {
            "flush_every": self.flush_every,
            "window": self.window,
            "max_blocks": self.max_blocks,
            "late_phase_start": self.late_phase_start,
        }

    # -- hot path -------------------------------------------------------------------------
    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self.start(trainer, pl_module)

    def start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Training starts (or resumes): the index of the first entry, and the parameter group
        whose learning rate the stream records (read by reference each step)."""
        self._automatic = bool(pl_module.automatic_optimization)
        self._index = int(trainer.global_step) if self._automatic else int(self._batches_seen)
        self._lr_group = first_param_group(trainer)

    def begin_batch(self, index: int) -> None:
        """The stream tracks its own index (:meth:`record`)."""

    @property
    def current_index(self) -> int:
        """Index of the entry the current batch contributes to (before its optimizer step)."""
        return self._index

    def on_train_batch_end(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.record(trainer, pl_module, outputs, batch_idx)
        if not self.owned and self._pending_steps and self.should_flush(self._pending_steps[-1]):
            self._standalone_flush(trainer, pl_module, trainer.global_step)

    def record(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch_idx: int) -> bool:
        """Hot path: add this batch's loss; returns True when a stream entry was completed.

        Per batch: a reference to the loss tensor and a few host integers (no kernel launch, no
        device read); the entry index is tracked here (the optimizer step in automatic
        optimization, the batch count in manual optimization)."""
        self._batches_seen += 1
        loss = extract_loss(outputs)
        automatic = self._automatic
        step = trainer.global_step if automatic else self._batches_seen
        stepped = entry_completed(trainer, automatic, self._index)
        if loss is None and not stepped:
            return False
        if stepped and not self._accumulating and loss is not None:
            self._pending_losses.append(loss)  # the common case: keep a reference, launch nothing
        else:
            if self._accumulator is None:
                device = loss.device if loss is not None else pl_module.device
                self._accumulator = torch.zeros((), dtype=device_float_dtype(device), device=device)
            if loss is not None:
                self._accumulator.add_(loss.to(self._accumulator.dtype))
            else:  # a skipped batch (training_step returned None) still closes the step
                self._accumulator.fill_(float("nan"))
                self._no_loss_entries += 1
            self._accumulating = True
            if not stepped:
                return False
            self._pending_losses.append(self._accumulator.clone())
            self._accumulator.zero_()
            self._accumulating = False
        lr = self._lr_group["lr"] if self._lr_group is not None else float("nan")
        # a tensor learning rate is changed in place by schedulers: keep this step's value
        self._pending_lr.append(lr.detach().clone() if isinstance(lr, Tensor) else lr)
        self._pending_steps.append(self._index)
        self._pending_batches.append(batch_idx)
        self._pending_epochs.append(trainer.current_epoch)
        self._pending_global_steps.append(step if automatic else trainer.global_step)
        self._index = step
        return True

    @property
    def pending(self) -> int:
        """Entries recorded since the last flush."""
        return len(self._pending_steps)

    @property
    def last_index(self) -> int | None:
        """Index of the most recent stream entry (flushed or not)."""
        if self._pending_steps:
            return self._pending_steps[-1]
        return int(self._window_steps[-1]) if self._window_steps.size else None

    # -- flush ----------------------------------------------------------------------------
    def flush(self, ctx: FlushContext) -> None:
        n = len(self._pending_steps)
        if n:
            host, lr = self._pending_values(ctx.reduced.get(self))
            steps = np.asarray(self._pending_steps, dtype=np.int64)
            self.blocks.append(torch.from_numpy(host), self._pending_steps)
            self._window_steps = np.concatenate([self._window_steps, steps])[-self.window :]
            self._window_values = np.concatenate([self._window_values, host])[-self.window :]
            self._window_lr = np.concatenate([self._window_lr, lr])[-self.window :]
            if ctx.writer is not None:
                ctx.writer.append(
                    "loss",
                    {
                        "step": steps,
                        "global_step": np.asarray(self._pending_global_steps, dtype=np.int64),
                        "batch": np.asarray(self._pending_batches, dtype=np.int64),
                        "epoch": np.asarray(self._pending_epochs, dtype=np.int64),
                        "loss": host,
                        "lr": lr,
                    },
                )
            self._pending_steps, self._pending_batches = [], []
            self._pending_epochs, self._pending_global_steps = [], []
            self._carry_values = np.zeros(0, dtype=np.float64)
            self._carry_lr = np.zeros(0, dtype=np.float64)
            self._pending_lr = []
            self._pending_losses = []
        if self.blocks.rows:
            self._last = loss_diagnostics(
                self.blocks, self._window_steps, self._window_values, self._window_lr, self.late_phase_start
            )
        ctx.summary.update(self._last)
        if self._no_loss_entries and self._last.get("loss_mean") is None:
            reason = (f"training_step returned no loss tensor ({self._no_loss_entries} entries; manual optimization "
                      "may return nothing): return the loss (a tensor or {'loss': tensor}) to stream it")
            ctx.unavailable.update(dict.fromkeys(("loss_mean", "loss_se", "loss_std", "iat", "ess", "dominant_period",
                                                  "power_fraction", "geweke_z", "stationary", "late_phase_start"), reason))
        ctx.late_phase_start = self._last.get("late_phase_start")
        ctx.late_phase_found = bool(self._last.get("late_phase_found"))
        ctx.window_start = self._last.get("window_start")
        # a start that held (within one flush) over two flushes is "stable": the weights' ergodic
        # mean is frozen there, not at an early MSER guess made on a few blocks
        start = ctx.late_phase_start
        ctx.late_phase_stable = bool(
            start is not None and self._previous_start is not None and abs(start - self._previous_start) <= self.flush_every
        ) or (self.late_phase_start is not None)
        self._previous_start = start
        ctx.figure_data["loss_window"] = (self._window_steps, self._window_values, self._window_lr)

    def collective_payload(self, purpose: str) -> list[Tensor]:
        """The new unflushed losses of this rank (summed over ranks by the flush or checkpoint)."""
        return [self._stacked_losses()] if len(self._pending_steps) > self._carry_values.size else []

    def _pending_values(self, reduced: list[Tensor] | None) -> tuple[np.ndarray, np.ndarray]:
        """Host copies of the unflushed entries, averaged over ranks: ``reduced`` holds the sum
        over ranks of :meth:`collective_payload` (None or empty on one process). Entries restored
        from a checkpoint are already averaged."""
        n_new = len(self._pending_steps) - self._carry_values.size
        values = np.zeros(0, dtype=np.float64)
        if n_new > 0:
            if reduced:
                device_values = reduced[0] / process_group_size()
            else:
                device_values = self._stacked_losses()
            values = device_values.cpu().numpy().astype(np.float64)  # sync-ok: once per flush
        return np.concatenate([self._carry_values, values]), np.concatenate([self._carry_lr, self._lr_array()])

    def _stacked_losses(self) -> Tensor:
        """One device tensor of the pending losses (float64 where the device has it)."""
        losses = self._pending_losses
        dtype = device_float_dtype(losses[0].device)
        try:  # one kernel for the common case (every loss of one dtype and device)
            return torch.stack(losses).to(dtype)
        except (RuntimeError, TypeError):
            return torch.stack([v.to(dtype) for v in losses])

    def _lr_array(self) -> np.ndarray:
        """Host learning rates of the new pending entries (device scalars are read here, at flush)."""
        return np.asarray([float(v) for v in self._pending_lr], dtype=np.float64)  # sync-ok: flush time

    # -- state ----------------------------------------------------------------------------
    def state_dict(self, reduced: list[Tensor] | None = None) -> dict[str, Any]:
        """Tensors and primitives only; unflushed entries travel too (read at checkpoint time).

        Under DDP the unflushed entries are averaged over ranks here, so every rank's checkpoint
        state is the same and a resume (on any number of ranks) continues the global stream
        exactly: a collective, so Lightning calls it on every rank. ``reduced`` is that sum when
        :class:`~lightning_sas.SASMonitor` has already made the collective for all its parts.
        """
        if reduced is None and not self.owned:
            reduced = exchange([self], "checkpoint").get(self)
        pending_values, pending_lr = self._pending_values(reduced)
        return {
            "pending_values": torch.from_numpy(pending_values),
            "pending_lr": torch.from_numpy(pending_lr),
            "pending_steps": list(self._pending_steps),
            "pending_batches": list(self._pending_batches),
            "pending_epochs": list(self._pending_epochs),
            "pending_global_steps": list(self._pending_global_steps),
            "config": self.config(),
            "blocks": self.blocks.state_dict(),
            "window_steps": torch.from_numpy(self._window_steps.copy()),
            "window_values": torch.from_numpy(self._window_values.copy()),
            "window_lr": torch.from_numpy(self._window_lr.copy()),
            "batches_seen": self._batches_seen,
            "previous_start": self._previous_start,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._reset_state()
        self.blocks.load_state_dict(state_dict["blocks"])
        self._window_steps = state_dict["window_steps"].numpy().astype(np.int64)
        self._window_values = state_dict["window_values"].numpy().astype(np.float64)
        self._window_lr = state_dict["window_lr"].numpy().astype(np.float64)
        self._batches_seen = int(state_dict["batches_seen"])
        self._previous_start = state_dict.get("previous_start")
        self._carry_values = state_dict["pending_values"].numpy().astype(np.float64)
        self._carry_lr = state_dict["pending_lr"].numpy().astype(np.float64)
        self._pending_steps = [int(v) for v in state_dict["pending_steps"]]
        self._pending_batches = [int(v) for v in state_dict["pending_batches"]]
        self._pending_epochs = [int(v) for v in state_dict["pending_epochs"]]
        self._pending_global_steps = [int(v) for v in state_dict["pending_global_steps"]]
