"""Per-sample time averages over the late phase as a torchmetrics ``Metric``."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_sas.stats.blocks import BlockCursor, append_rows

__all__ = ["TimeAverage"]


class TimeAverage(Metric):
    r"""Streaming time average of ``num_points`` per-sample series, with bounded memory.

    Each ``update(values, step)`` appends one observation ``l_t(z)`` per point ``z``. The state is
    the block summary of :mod:`lightning_sas.stats.blocks` (``max_blocks`` blocks of count, sum and
    sum of squares per point), so

    .. math:: \langle l(z) \rangle = \frac{\sum_{b \ge j} S_b(z)}{\sum_{b \ge j} n_b(z)}

    is available from any block boundary ``j`` on: set :attr:`start_step` to the late-phase start
    and :meth:`compute` averages over the blocks that start at or after it.

    Distributed: all states reduce by summation. Ranks that evaluate disjoint subsets of the
    points pass ``weight`` (1 for owned points, 0 elsewhere), so the summed state is the full
    one; ranks that evaluate every point pass ``weight`` on one rank only, or use one process.
    The block cursor is host-side Python and advances identically on every rank, because every
    rank calls ``update`` at the same steps.

    Non-finite values are excluded per point and counted in ``nonfinite``.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(self, num_points: int, max_blocks: int = 128, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_points < 1:
            raise ValueError(f"num_points must be >= 1, got {num_points}")
        if max_blocks < 4 or max_blocks % 2:
            raise ValueError(f"max_blocks must be an even integer >= 4, got {max_blocks}")
        self.num_points = num_points
        self.max_blocks = max_blocks
        shape = (max_blocks, num_points)
        self.add_state("sums", torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum", persistent=True)
        self.add_state("sumsqs", torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum", persistent=True)
        self.add_state("counts", torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum", persistent=True)
        self.add_state(
            "nonfinite", torch.zeros(num_points, dtype=torch.int64), dist_reduce_fx="sum", persistent=True
        )
        self.cursor = BlockCursor(max_blocks=max_blocks)
        #: late-phase start (optimizer step) used by :meth:`compute`; None averages everything
        self.start_step: int | None = None

    def update(self, values: Tensor, step: int, weight: Tensor | None = None) -> None:  # type: ignore[override]
        """Append one observation per point (``values`` of shape ``(num_points,)``) at ``step``."""
        values = values.detach().reshape(1, -1)
        if values.shape[1] != self.num_points:
            raise ValueError(f"expected {self.num_points} values, got {values.shape[1]}")
        append_rows(self.sums, self.sumsqs, self.counts, self.nonfinite, self.cursor, values, [int(step)], weight)

    def compute(self) -> Tensor:
        """Per-point late-phase time average (0 where a point has no finite value)."""
        return self.per_point_average()

    def per_point_average(self) -> Tensor:
        """The time average per point from :attr:`start_step` on, on the current (local or
        synced) states; unlike ``compute()`` it neither syncs nor caches."""
        j = self.cursor.first_block_from(self.start_step)
        n = self.cursor.n_blocks
        return self.sums[j:n].sum(0) / self.counts[j:n].sum(0).clamp_min(1.0)

    @contextmanager
    def synced(self) -> Iterator["TimeAverage"]:
        """Context in which the states are reduced over ranks (a collective: call on every rank)."""
        with self.sync_context(should_sync=True, should_unsync=True):
            yield self

    #: the additive states, in the order of :meth:`filled_states`
    STATE_NAMES = ("sums", "sumsqs", "counts", "nonfinite")

    def filled_states(self) -> list[Tensor]:
        """The states' filled blocks (``[:n_blocks]``; the cursor is the same on every rank) and
        ``nonfinite``: what a flush sums over ranks (one packed all-reduce, not one per state)."""
        n = self.cursor.n_blocks
        return [self.sums[:n], self.sumsqs[:n], self.counts[:n], self.nonfinite]

    @contextmanager
    def summed_states(self, summed: list[Tensor] | None) -> Iterator["TimeAverage"]:
        """Context in which the states are ``summed`` (:meth:`filled_states` summed over ranks);
        the local states come back on exit. ``None`` or empty: the local states (one process)."""
        if not summed:
            yield self
            return
        saved = {name: getattr(self, name) for name in self.STATE_NAMES}
        try:
            n = self.cursor.n_blocks
            for name, value in zip(self.STATE_NAMES, summed):
                full = saved[name].clone()
                if name == "nonfinite":
                    full.copy_(value.round().to(full.dtype))
                else:
                    full[:n] = value.to(full.dtype)
                setattr(self, name, full)
            yield self
        finally:
            for name, value in saved.items():
                setattr(self, name, value)

    def block_arrays(self, from_step: int | None = None) -> dict[str, np.ndarray]:
        """Host copies of the blocks starting at or after ``from_step`` (flush time only).

        Returns ``counts``/``sums``/``sumsqs`` of shape ``(n_blocks, num_points)``, ``means``
        (``sums / counts``, NaN where a block has no finite value) and ``starts`` (``(n_blocks,)``).
        """
        j = self.cursor.first_block_from(from_step)
        n = self.cursor.n_blocks
        counts = self.counts[j:n].cpu().numpy()  # sync-ok: flush time
        sums = self.sums[j:n].cpu().numpy()  # sync-ok
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(counts > 0, sums / np.where(counts > 0, counts, 1.0), np.nan)
        return {
            "counts": counts,
            "sums": sums,
            "sumsqs": self.sumsqs[j:n].cpu().numpy(),  # sync-ok
            "means": means,
            "starts": np.asarray(self.cursor.starts[j:n], dtype=np.int64),
        }

    def reset(self) -> None:
        super().reset()
        self.cursor = BlockCursor(max_blocks=self.max_blocks)

    # Lightning checkpoints: tensors and primitives only.
    #: states with one row per block (the checkpoint keeps the used rows only)
    _BLOCK_STATES = ("sums", "sumsqs", "counts")

    def checkpoint_state(self) -> dict[str, Any]:
        """States (on CPU) plus the host cursor and late-phase start, for a callback's
        ``state_dict`` (loads with ``torch.load(weights_only=True)``). Compact: only the
        ``n_blocks`` used blocks are kept (the rest are zeros by construction) and the counts
        are int64 (whole numbers)."""
        n = self.cursor.n_blocks
        states: dict[str, Tensor] = {}
        for name, value in self.metric_state.items():
            value = value.detach()
            if name in self._BLOCK_STATES:
                value = value[:n]
                value = value.to(torch.int64) if name == "counts" else value
            states[name] = value.cpu().clone()  # sync-ok: checkpoint time
        return {"states": states, "cursor": self.cursor.state_dict(), "start_step": self.start_step}

    def load_checkpoint_state(self, state: dict[str, Any]) -> bool:
        """Restore :meth:`checkpoint_state` (also the older full-size form); False (nothing
        changed) if the shapes do not fit this metric."""
        def fits(name: str, value: Tensor) -> bool:
            current = getattr(self, name)
            if name in self._BLOCK_STATES:
                return value.shape[1:] == current.shape[1:] and value.shape[0] <= current.shape[0]
            return value.shape == current.shape

        if not all(fits(name, value) for name, value in state["states"].items()):
            return False
        for name, value in state["states"].items():
            current = getattr(self, name)
            if name in self._BLOCK_STATES:
                full = torch.zeros_like(current)
                full[: value.shape[0]].copy_(value.to(device=current.device, dtype=current.dtype))
                setattr(self, name, full)
            else:
                setattr(self, name, value.to(device=current.device, dtype=current.dtype))
        self.cursor.load_state_dict(state["cursor"])
        self.start_step = state.get("start_step")
        return True
