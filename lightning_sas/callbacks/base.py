"""Shared shape of the stream callbacks: a hot path, a flush, state, and an optional owner;
and the two collectives every flush and checkpoint of a distributed run makes (:func:`exchange`)."""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch
from torch import Tensor

from lightning_sas import _compat as pl  # pl.Trainer, pl.LightningModule: of either namespace
from lightning_sas._compat import Callback
from lightning_sas.validation import check_int, check_memory
from lightning_sas.callbacks._common import is_due, is_global_zero, run_directory, stream_index, warn_once

__all__ = ["FlushContext", "StreamCallback", "exchange", "process_group_size"]


def process_group_size() -> int:
    """Ranks in the default process group (1 without one: no collective is ever made)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _collective_device(device: torch.device | None) -> torch.device:
    """Where a buffer must be for the backend: the parts' device, or the current GPU under NCCL."""
    import torch.distributed as dist

    device = torch.device("cpu") if device is None else torch.device(device)
    if device.type == "cpu" and "nccl" in str(dist.get_backend()).lower() and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return device


def exchange(parts: Sequence["StreamCallback"], purpose: str, device: torch.device | None = None) -> dict[Any, list[Tensor]]:
    r"""The collectives of one flush (``purpose="flush"``) or checkpoint (``"checkpoint"``) of
    ``parts``, made on every rank in the same order; nothing without a process group.

    1. **Agreement** (one ``all_reduce`` of a ``(2 parts, world)`` matrix): rank ``r`` sets entry
       ``(i, r)`` when part ``i`` failed here (:meth:`StreamCallback.failed_here`) and entry
       ``(parts + i, r)`` to the size of its payload. A part that failed on any rank is switched
       off on every rank (:meth:`StreamCallback.off_on`, one warning naming the ranks) before any
       other collective; a part whose payload sizes differ across ranks (a bug: it would hang or
       crash the packed sum) is switched off too, with the sizes in the reason. So the ranks
       never disagree on what comes next, and a failure on one rank cannot hang the others.
    2. **Packed sum** (one ``all_reduce``, only when some part has something to reduce): every
       part's :meth:`StreamCallback.collective_payload` tensors, flattened into one float64
       buffer, summed over ranks and handed back in the same shapes.

    Returns ``{part: [summed tensors]}`` (empty on one process: parts then use their own values).
    """
    import torch.distributed as dist

    world = process_group_size()
    if world == 1 or not parts:
        return {}
    rank, n = dist.get_rank(), len(parts)
    payloads = {part: [t.detach() for t in part.collective_payload(purpose)] for part in parts}
    agreement = torch.zeros((2 * n, world), dtype=torch.float64)
    for i, part in enumerate(parts):
        agreement[i, rank] = float(bool(part.failed_here()))
        agreement[n + i, rank] = float(sum(t.numel() for t in payloads[part]))
    agreement = agreement.to(_collective_device(device))
    dist.all_reduce(agreement)
    agreement = agreement.cpu()  # sync-ok: once per flush or checkpoint
    excluded: set[int] = set()
    for i, part in enumerate(parts):
        ranks = [r for r in range(world) if bool(agreement[i, r] > 0)]
        sizes = [int(v) for v in agreement[n + i]]
        if ranks:
            part.off_on(ranks)
            payloads[part] = [t.detach() for t in part.collective_payload(purpose)]
        elif len(set(sizes)) > 1:
            excluded.add(i)
            part.off_on(list(range(world)), f"its state differs across ranks (payload sizes {sizes}); it is off on "
                        "every rank (please report this)")
    for i in excluded:
        payloads[parts[i]] = []
    flat = [t for ts in payloads.values() for t in ts]
    if not flat:
        return {part: [] for part in parts}
    target = _collective_device(flat[0].device)
    packed = torch.cat([t.reshape(-1).to(device=target, dtype=torch.float64) for t in flat])
    dist.all_reduce(packed)
    out: dict[Any, list[Tensor]] = {}
    offset = 0
    for part, tensors in payloads.items():
        out[part] = []
        for t in tensors:
            out[part].append(packed[offset : offset + t.numel()].reshape(t.shape).to(t.device))
            offset += t.numel()
    return out


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
        #: each part's payload summed over ranks (:func:`exchange`; empty on one process)
        self.reduced: dict[Any, list[Tensor]] = {}
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
        self.flush_every = check_int("flush_every", flush_every, 1)
        #: set by ``SASMonitor`` when it drives this part
        self.owned = False
        self._writer: Any = None
        self._writer_ready = False
        #: the run this part's standalone store belongs to (set when the store is opened)
        self._run_id: str | None = None

    # -- cadence ---------------------------------------------------------------------------
    def should_flush(self, index: int) -> bool:
        """Flush after stream entry ``index`` (0-based)? Default: every ``flush_every`` entries."""
        return is_due(index, self.flush_every, offset=1)

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

    # -- distributed: what a flush and a checkpoint reduce (see :func:`exchange`) ----------
    def failed_here(self) -> bool:
        """True when this part switched itself off on this rank since it attached (a failure
        the other ranks learn at the next flush or checkpoint). Default: never."""
        return False

    def off_on(self, ranks: list[int], reason: str | None = None) -> None:
        """The part is off on ``ranks`` (this rank may be one of them): switch it off here too,
        idempotently (a part off on every rank by configuration is called as well); ``reason``
        replaces the default one ("it failed on those ranks")."""

    def collective_payload(self, purpose: str) -> list[Tensor]:
        """Tensors to sum over ranks at a flush or checkpoint (same shapes on every rank once
        the ranks agree on which parts are on). Default: none."""
        return []

    # -- standalone plumbing ---------------------------------------------------------------
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        """A part used on its own writes ``<log_dir>/sas``: refuse, at setup, a second writer of
        that directory in the same trainer (a ``SASMonitor`` or another standalone part)."""
        if self.owned or stage != "fit" or not is_global_zero(trainer):
            return
        mine = run_directory(trainer)
        if mine is None:
            return
        for other in getattr(trainer, "callbacks", None) or []:
            if other is self:
                continue
            theirs = None
            if isinstance(other, StreamCallback) and not other.owned:
                theirs = run_directory(trainer)
            elif type(other).__name__ == "SASMonitor" and getattr(other, "store", None):
                theirs = run_directory(trainer, other.store)
            if theirs is not None and os.path.abspath(theirs) == os.path.abspath(mine):
                raise ValueError(
                    f"{type(self).__name__} on its own and {type(other).__name__} would both write the run store {mine}, "
                    f"overwriting each other's files: pass the part to one SASMonitor (loss_stream=, weights=, "
                    f"probes=, replicas=), or give the SASMonitor its own directory (store=<path>)")

    def _standalone_writer(self, trainer: "pl.Trainer") -> Any:
        """The run writer of a part used on its own: rank 0, into the logger's ``log_dir/sas``
        (:func:`run_directory`; None without a logger directory: nothing is written). A
        directory held by another writer or another run is refused with one warning, and
        nothing is stored."""
        if not self._writer_ready:
            self._writer_ready = True
            directory = run_directory(trainer) if is_global_zero(trainer) else None
            if directory is not None:
                from lightning_sas.store import RunWriter
                from lightning_sas.store.writer import StoreInUseError

                resuming = getattr(self, "_restored", None) is not None
                try:
                    self._writer = RunWriter(directory, config=self.config(), run_id=None if resuming else self._run_id,
                                             resume=resuming)
                except StoreInUseError as err:
                    warn_once(self, "store", f"{type(self).__name__}: nothing is stored: {err}")
                    self._writer = None
                else:
                    self._run_id = self._writer.run_id
        return self._writer

    def teardown(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        """Close the standalone writer (its lock on the run directory goes with it)."""
        if self._writer is not None and not self.owned:
            self._writer.close()
            self._writer = None
            self._writer_ready = False

    def _standalone_flush(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", step: int) -> None:
        from lightning_sas.loggers.export import export_flush

        ctx = FlushContext(trainer, pl_module, step, self._standalone_writer(trainer))
        ctx.reduced = exchange([self], "flush", pl_module.device)
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

    def reserved_buffers(self, flush_every: int) -> list[tuple[str, float, str]]:
        """The buffers whose size the arguments set, ``(what, bytes, formula)``, when flushing every
        ``flush_every`` entries (see :func:`~lightning_sas.validation.check_memory`)."""
        return []

    def check_memory(self, flush_every: int) -> None:
        """Refuse, before anything is allocated, settings whose buffers exceed the bound."""
        check_memory(type(self).__name__, self.reserved_buffers(flush_every),
                     "lower flush_every or the sizes named (or raise the *_every cadences)")

    def config(self) -> dict[str, Any]:
        """The constructor arguments that define the statistics (stored in the run's meta)."""
        return {"flush_every": self.flush_every}
