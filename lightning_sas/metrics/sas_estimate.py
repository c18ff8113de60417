"""Per-replica, per-probe-point time averages and the SAS statistics computed from them."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from lightning_sas.metrics.time_average import TimeAverage
from lightning_sas.stats.batch_means import batch_means_se_from_blocks
from lightning_sas.stats.sas import (
    estimate_by_window,
    forgetting_curve,
    mean_pairwise_abs_difference,
    paper_coefficient,
    sas_statistics,
    time_average,
)

__all__ = ["SASEstimate"]


class SASEstimate(TimeAverage):
    r"""Late-phase time averages :math:`\langle l_r(z)\rangle` of ``num_replicas`` replicas on
    ``num_points`` probe points (replica 0 = control), usable on its own.

    ``update(losses, step)`` takes a ``(num_replicas, num_points)`` tensor; states are the block
    summaries of :class:`TimeAverage` over the flattened ``R * P`` series (summed across ranks).
    Ranks that run disjoint replicas pass ``rows`` (their global replica indices) and only their
    own rows' losses: the other rows get weight 0, every state is additive per point and the block
    cursor advances identically on every rank, so the summed state equals one process's exactly.
    :meth:`estimate` returns the SAS statistics of :func:`lightning_sas.stats.sas.sas_statistics`
    (Chandramoorthy et al., NeurIPS 2022) plus the control replica's ergodic gap, the authors'
    ``paper_coefficient`` over the neighbouring pairs (control, k) and the per-point
    ``mean_pairwise_abs_difference``.
    """

    def __init__(self, num_replicas: int, num_points: int, max_blocks: int = 128, **kwargs: Any) -> None:
        if num_replicas < 2:
            raise ValueError(f"num_replicas must be >= 2 (a control and at least one perturbed replica), got {num_replicas}")
        super().__init__(num_points=num_replicas * num_points, max_blocks=max_blocks, **kwargs)
        self.num_replicas = num_replicas
        self.points_per_replica = num_points
        #: (rows, device) -> (index, row mask): one host-to-device copy per placement
        self._row_cache: dict[tuple[tuple[int, ...], str], tuple[Tensor, Tensor]] = {}

    def update(self, values: Tensor, step: int, weight: Tensor | None = None,  # type: ignore[override]
               rows: Sequence[int] | None = None) -> None:
        """Append one ``(num_replicas, num_points)`` observation at ``step``; with ``rows`` (global
        replica indices), ``values`` holds only those replicas' rows, ``(len(rows), num_points)``,
        and every other row is left out (weight 0). ``weight`` (0/1, ``(num_replicas, num_points)``)
        masks points further."""
        shape = (self.num_replicas, self.points_per_replica)
        if rows is not None:
            if tuple(values.shape) != (len(rows), self.points_per_replica):
                raise ValueError(f"expected losses of shape {(len(rows), self.points_per_replica)}, got {tuple(values.shape)}")
            index, mask = self._rows_on(rows, values.device)
            full = torch.zeros(shape, dtype=values.dtype, device=values.device).index_copy_(0, index, values)
            owned = mask.unsqueeze(1).expand(shape)
            weight = owned if weight is None else owned & weight.to(device=values.device, dtype=torch.bool).reshape(shape)
            values = full
        if tuple(values.shape) != shape:
            raise ValueError(f"expected losses of shape {shape}, got {tuple(values.shape)}")
        super().update(values.reshape(-1), step, None if weight is None else weight.reshape(-1))

    def _rows_on(self, rows: Sequence[int], device: torch.device | str) -> tuple[Tensor, Tensor]:
        """Index tensor and boolean row mask of ``rows`` on ``device``, cached (one host-to-device
        copy per placement, not per update)."""
        key = (tuple(int(r) for r in rows), str(device))
        if key not in self._row_cache:
            index = torch.as_tensor(key[0], dtype=torch.long).to(device)
            mask = torch.zeros(self.num_replicas, dtype=torch.bool, device=device)
            mask[index] = True
            self._row_cache[key] = (index, mask)
        return self._row_cache[key]

    def keep_rows(self, rows: Sequence[int]) -> None:
        """Zero every state outside the replicas ``rows`` (after loading a full state on a rank
        that owns only ``rows``, so that the sum over ranks is the full state again)."""
        keep = self._rows_on(rows, self.sums.device)[1].repeat_interleave(self.points_per_replica)
        for name in ("sums", "sumsqs", "counts", "nonfinite"):
            state = getattr(self, name)
            setattr(self, name, torch.where(keep, state, torch.zeros((), dtype=state.dtype, device=state.device)))

    def replica_block_means(self, from_step: int | None = None) -> dict[str, np.ndarray]:
        """Host ``means`` of shape ``(R, n_blocks, P)``, ``counts`` ``(n_blocks,)``, ``starts``."""
        arrays = self.block_arrays(from_step)
        n = arrays["means"].shape[0]
        means = arrays["means"].reshape(n, self.num_replicas, self.points_per_replica).transpose(1, 0, 2)
        counts = arrays["counts"].reshape(n, self.num_replicas, self.points_per_replica).max(axis=(1, 2)) if n else np.zeros(0)
        return {"means": means, "counts": counts, "starts": arrays["starts"]}

    def estimate(self, columns: Mapping[str, np.ndarray], from_step: int | None = None, fork_step: int = 0) -> dict[str, Any]:
        """All SAS figures over the blocks from ``from_step`` (host values; flush time only).

        ``columns`` gives probe columns ``replaced`` (``i_k``), ``replacement`` (``z'_k``),
        ``heldout`` (``P_test``) and ``train`` (``P_train``, includes the ``i_k``).
        """
        data = self.replica_block_means(from_step)
        means, counts, starts = data["means"], data["counts"], data["starts"]
        replaced = np.asarray(columns["replaced"])
        replacement = np.asarray(columns["replacement"])
        heldout = np.asarray(columns["heldout"])
        train = np.asarray(columns["train"])
        out: dict[str, Any] = {}
        if means.shape[1] == 0 or counts.sum() == 0:
            out["sas_resolved"] = False
            out["sas_converged"] = False
            return out
        stats = sas_statistics(means, counts, replaced, replacement, heldout)
        out.update(stats)
        windows = estimate_by_window(means, counts, replaced, replacement, heldout, starts, fork_step)
        out["sas_converged"] = bool(windows.get("converged", False))
        out["windows"] = windows
        out["forgetting"] = forgetting_curve(means, starts, replaced, fork_step)
        averages = time_average(means, counts)
        pairs = [(0, k) for k in range(1, self.num_replicas)]
        coef, coef_se = paper_coefficient(averages[:, heldout].mean(axis=1), pairs)
        out["paper_coefficient"], out["paper_coefficient_se"] = coef, coef_se
        mpd, mpd_se = mean_pairwise_abs_difference(averages[:, heldout], pairs)
        out["mean_pairwise_abs_difference"], out["mean_pairwise_abs_difference_se"] = mpd, mpd_se
        # ergodic gap on the control replica against the held-out split
        control = averages[0]
        out["ergodic_gap"] = float(control[heldout].mean() - control[train].mean())
        block_gap = np.nanmean(means[0][:, heldout], axis=1) - np.nanmean(means[0][:, train], axis=1)
        ok = np.isfinite(block_gap)
        out["ergodic_gap_se"] = batch_means_se_from_blocks(counts[ok], block_gap[ok] * counts[ok])
        out["probe_train_loss"] = float(control[train].mean())
        out["probe_test_loss"] = float(control[heldout].mean())
        return out
