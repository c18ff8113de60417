"""Bounded block summaries of a stream: the memory behind every time average.

A stream ``x_1, x_2, ...`` (each ``x_t`` a tensor of a fixed ``shape``, e.g. one loss or one loss
per probe point) is summarised by at most ``max_blocks`` contiguous blocks, block ``b`` holding

    n_b = #finite values,   S_b = sum x_t,   Q_b = sum x_t^2     over the rows t in block b

plus the step at which the block starts. Every block spans ``block_len`` rows; when all blocks are
full, neighbours are merged pairwise (``block_len`` doubles), so memory is ``O(max_blocks)``
whatever the run length. From the blocks one gets exactly:

* the time average from any block boundary on: ``<x> = sum_{b>=j} S_b / sum_{b>=j} n_b``;
* MSER truncation on block means (``stats.mser.mser_truncation``);
* batch-means standard errors (``stats.batch_means.batch_means_se_from_blocks``).

Non-finite values are excluded per element with ``torch.where`` (no boolean-mask indexing, hence
no host-device sync) and counted in ``nonfinite``. The bookkeeping that decides where a row goes
(``BlockCursor``) is plain Python, so appending never reads a device value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["BlockCursor", "BlockMoments", "append_rows", "blocks_from_series"]


@dataclass
class BlockCursor:
    """Host-side position in a block summary (no tensors: reading it never syncs)."""

    max_blocks: int
    block_len: int = 1
    n_blocks: int = 0
    rows_in_last: int = 0
    rows_total: int = 0
    starts: list[int] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        return {
            "max_blocks": self.max_blocks,
            "block_len": self.block_len,
            "n_blocks": self.n_blocks,
            "rows_in_last": self.rows_in_last,
            "rows_total": self.rows_total,
            "starts": list(self.starts),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["max_blocks"]) != self.max_blocks:
            raise ValueError(
                f"block summary was saved with max_blocks={state['max_blocks']} but this one has "
                f"max_blocks={self.max_blocks}; construct it with the same value to resume"
            )
        self.block_len = int(state["block_len"])
        self.n_blocks = int(state["n_blocks"])
        self.rows_in_last = int(state["rows_in_last"])
        self.rows_total = int(state["rows_total"])
        self.starts = [int(s) for s in state["starts"]]

    def first_block_from(self, step: int | None) -> int:
        """Index of the first block starting at or after ``step`` (0 when ``step`` is None)."""
        if step is None:
            return 0
        for b, start in enumerate(self.starts):
            if start >= step:
                return b
        return self.n_blocks


def _merge_pairs(tensors: Sequence[Tensor], cursor: BlockCursor) -> None:
    """Merge neighbouring blocks pairwise in place: ``n`` full blocks become ``n/2``."""
    half = cursor.n_blocks // 2
    for t in tensors:
        merged = t[0 : 2 * half : 2] + t[1 : 2 * half : 2]
        t[:half].copy_(merged)
        t[half:].zero_()
    cursor.starts = cursor.starts[0 : 2 * half : 2]
    cursor.n_blocks = half
    cursor.block_len *= 2
    cursor.rows_in_last = cursor.block_len


def append_rows(
    sums: Tensor,
    sumsqs: Tensor,
    counts: Tensor,
    nonfinite: Tensor,
    cursor: BlockCursor,
    values: Tensor,
    steps: Sequence[int],
    weight: Tensor | None = None,
) -> None:
    """Append ``values`` (``(T, *shape)``, row ``t`` observed at ``steps[t]``) in place.

    ``weight`` (``shape``, 0/1) marks the elements this process owns: others add nothing, which
    lets ranks that evaluate disjoint probe points merge their states by summation.
    """
    if values.shape[0] != len(steps):
        raise ValueError(f"got {values.shape[0]} rows but {len(steps)} steps")
    values = values.to(dtype=sums.dtype, device=sums.device)
    finite = torch.isfinite(values)
    if weight is not None:
        w = weight.to(dtype=torch.bool, device=sums.device)
        nonfinite.add_((~finite & w).sum(0, dtype=nonfinite.dtype))
        finite = finite & w
    else:
        nonfinite.add_((~finite).sum(0, dtype=nonfinite.dtype))
    clean = torch.where(finite, values, torch.zeros((), dtype=values.dtype, device=values.device))
    ones = finite.to(sums.dtype)
    row = 0
    total = values.shape[0]
    while row < total:
        if cursor.n_blocks == 0 or cursor.rows_in_last == cursor.block_len:
            if cursor.n_blocks == cursor.max_blocks:
                _merge_pairs((sums, sumsqs, counts), cursor)
            # whole blocks at once while they fit (same result as one row at a time)
            length = cursor.block_len
            whole = min((total - row) // length, cursor.max_blocks - cursor.n_blocks)
            if whole > 1:
                b0, stop = cursor.n_blocks, row + whole * length
                shape = (whole, length, *clean.shape[1:])
                chunk = clean[row:stop].reshape(shape)
                sums[b0 : b0 + whole].add_(chunk.sum(1))
                sumsqs[b0 : b0 + whole].add_((chunk * chunk).sum(1))
                counts[b0 : b0 + whole].add_(ones[row:stop].reshape(shape).sum(1))
                cursor.starts.extend(int(steps[r]) for r in range(row, stop, length))
                cursor.n_blocks += whole
                cursor.rows_in_last = length
                cursor.rows_total += whole * length
                row = stop
                continue
            cursor.starts.append(int(steps[row]))
            cursor.n_blocks += 1
            cursor.rows_in_last = 0
        take = min(total - row, cursor.block_len - cursor.rows_in_last)
        b = cursor.n_blocks - 1
        chunk = clean[row : row + take]
        sums[b].add_(chunk.sum(0))
        sumsqs[b].add_((chunk * chunk).sum(0))
        counts[b].add_(ones[row : row + take].sum(0))
        cursor.rows_in_last += take
        cursor.rows_total += take
        row += take


class BlockMoments:
    """Bounded (count, sum, sum of squares) blocks of a stream; see the module docstring.

    Args:
        max_blocks: most blocks kept (even, >= 4); memory is ``3 * max_blocks * prod(shape)``
            float64 values.
        shape: shape of one observation (``()`` for a scalar stream, ``(P,)`` per probe point).
        device: where the tensors live (the training device for on-device streams).
    """

    def __init__(
        self, max_blocks: int = 256, shape: Sequence[int] = (), device: torch.device | str | None = None
    ) -> None:
        if max_blocks < 4 or max_blocks % 2:
            raise ValueError(f"max_blocks must be an even integer >= 4, got {max_blocks}")
        self.shape = tuple(shape)
        self.cursor = BlockCursor(max_blocks=max_blocks)
        opts = {"dtype": torch.float64, "device": device}
        self.sums = torch.zeros((max_blocks, *self.shape), **opts)
        self.sumsqs = torch.zeros((max_blocks, *self.shape), **opts)
        self.counts = torch.zeros((max_blocks, *self.shape), **opts)
        self.nonfinite = torch.zeros(self.shape, dtype=torch.int64, device=device)

    @property
    def max_blocks(self) -> int:
        return self.cursor.max_blocks

    @property
    def n_blocks(self) -> int:
        return self.cursor.n_blocks

    @property
    def rows(self) -> int:
        """Rows appended so far (finite or not)."""
        return self.cursor.rows_total

    def append(self, values: Tensor | np.ndarray, steps: Sequence[int], weight: Tensor | None = None) -> None:
        """Append rows ``values[t]`` observed at ``steps[t]`` (steps non-decreasing)."""
        values = torch.as_tensor(values)
        if values.ndim == len(self.shape):
            values = values.unsqueeze(0)
        append_rows(self.sums, self.sumsqs, self.counts, self.nonfinite, self.cursor, values, steps, weight)

    def arrays(self, from_step: int | None = None) -> dict[str, np.ndarray]:
        """Host copies of the used blocks starting at or after ``from_step``.

        Keys ``counts``, ``sums``, ``sumsqs`` (``(n, *shape)``) and ``starts`` (``(n,)``). This
        reads device memory: call it at flush time, not per step.
        """
        j = self.cursor.first_block_from(from_step)
        n = self.cursor.n_blocks
        return {
            "counts": self.counts[j:n].cpu().numpy(),  # sync-ok: flush-time read
            "sums": self.sums[j:n].cpu().numpy(),  # sync-ok
            "sumsqs": self.sumsqs[j:n].cpu().numpy(),  # sync-ok
            "starts": np.asarray(self.cursor.starts[j:n], dtype=np.int64),
        }

    def mean(self, from_step: int | None = None) -> Tensor:
        """Time average ``sum S_b / sum n_b`` over blocks starting at or after ``from_step``.

        Elements with no finite value are NaN-free: they read 0 and have zero count.
        """
        j = self.cursor.first_block_from(from_step)
        n = self.cursor.n_blocks
        count = self.counts[j:n].sum(0)
        return self.sums[j:n].sum(0) / count.clamp_min(1.0)

    def state_dict(self) -> dict[str, Any]:
        """Tensors and Python primitives only (loads with ``torch.load(weights_only=True)``):
        the used blocks only, counts as int64 (they are whole numbers, exact below 2^53)."""
        n = self.cursor.n_blocks
        return {
            "cursor": self.cursor.state_dict(),
            "sums": self.sums[:n].detach().cpu().clone(),  # sync-ok: checkpoint time
            "sumsqs": self.sumsqs[:n].detach().cpu().clone(),  # sync-ok
            "counts": self.counts[:n].detach().to(torch.int64).cpu(),  # sync-ok
            "nonfinite": self.nonfinite.detach().cpu().clone(),  # sync-ok
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cursor.load_state_dict(state["cursor"])
        n = self.cursor.n_blocks
        for name in ("sums", "sumsqs", "counts"):
            target = getattr(self, name)
            target.zero_()
            target[:n].copy_(state[name].to(device=target.device, dtype=target.dtype))
        self.nonfinite.copy_(state["nonfinite"].to(self.nonfinite.device))


def blocks_from_series(
    values: np.ndarray, steps: np.ndarray | None = None, max_blocks: int = 256
) -> BlockMoments:
    """Build the block summary of a whole stored series (offline, CPU): same blocks as online."""
    values = np.asarray(values, dtype=np.float64)
    if steps is None:
        steps = np.arange(values.shape[0])
    blocks = BlockMoments(max_blocks=max_blocks, shape=values.shape[1:])
    if values.shape[0]:
        blocks.append(torch.from_numpy(values), [int(s) for s in steps])
    return blocks
