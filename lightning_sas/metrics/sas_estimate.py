"""Per-replica, per-probe-point time averages and the SAS statistics computed from them."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from lightning_sas.data.probes import SwapLayout
from lightning_sas.metrics.time_average import TimeAverage
from lightning_sas.stats.sas import (
    estimate_by_window,
    forgetting_curve,
    heldout_gap,
    mean_pairwise_abs_difference,
    paper_coefficient,
    sas_statistics,
    time_average,
)

__all__ = ["SASEstimate"]


class SASEstimate(TimeAverage):
    r"""Late-phase time averages :math:`\langle l_r(z)\rangle` of the control (``r = 0``) and
    ``K`` perturbed replicas on their probe points, usable on its own.

    The probe points follow a :class:`~lightning_sas.data.SwapLayout`: every replica has the
    shared points (``P_train``, ``P_test``) and its ``2m`` swapped points, the control has the
    swapped points of every replica, all in one flat vector of ``layout.total`` points. The states
    are the block summaries of :class:`TimeAverage` over that vector (summed across ranks).
    ``update(values, step, rows)`` takes the concatenated segments of the replicas ``rows`` (their
    global indices; all rows when None): the other segments get weight 0, every state is additive
    per point and the block cursor advances identically on every rank, so ranks that run disjoint
    replicas sum to one process's state exactly.

    :meth:`estimate` returns the statistics of :func:`lightning_sas.stats.sas.sas_statistics`
    (Chandramoorthy et al., NeurIPS 2022), the control replica's gap on the held-out split
    (``control_heldout_gap``, the gap ``stability_gap`` estimates), the authors'
    ``paper_coefficient`` over the neighbouring pairs (control, k), the per-point
    ``mean_pairwise_abs_difference``, the estimate against the averaging window and the
    forgetting curve.

    Args:
        layout: the probe layout (``K``, shared points, ``m`` swaps per replica).
        max_blocks: blocks of the bounded summary.
    """

    def __init__(self, layout: SwapLayout, max_blocks: int = 128, **kwargs: Any) -> None:
        if layout.replicas < 1:
            raise ValueError(f"the layout needs at least one perturbed replica, got {layout.replicas}")
        super().__init__(num_points=layout.total, max_blocks=max_blocks, **kwargs)
        self.layout = layout
        self.num_replicas = layout.replicas + 1
        #: (rows, device) -> (positions, owned mask): one host-to-device copy per placement
        self._row_cache: dict[tuple[tuple[int, ...], str], tuple[Tensor, Tensor]] = {}

    def segment_length(self, rows: Sequence[int]) -> int:
        """Points in the concatenated segments of ``rows``."""
        return int(sum(self.layout.segment_length(int(r)) for r in rows))

    def update(self, values: Tensor, step: int, weight: Tensor | None = None,  # type: ignore[override]
               rows: Sequence[int] | None = None) -> None:
        """Append one observation at ``step``: ``values`` holds the segments of ``rows`` (global
        replica indices; every row when None), concatenated; the other rows are left out (weight
        0). ``weight`` (0/1 over the whole vector) masks points further."""
        if rows is None:
            super().update(values.reshape(-1), step, weight)
            return
        expected = self.segment_length(rows)
        if values.numel() != expected:
            raise ValueError(f"expected {expected} losses for replicas {list(rows)}, got {values.numel()}")
        positions, owned = self._rows_on(rows, values.device)
        full = torch.zeros(self.layout.total, dtype=values.dtype, device=values.device)
        full.index_copy_(0, positions, values.reshape(-1))
        if weight is not None:
            owned = owned & weight.to(device=values.device, dtype=torch.bool).reshape(-1)
        super().update(full, step, owned)

    def _rows_on(self, rows: Sequence[int], device: torch.device | str) -> tuple[Tensor, Tensor]:
        """Flat positions of ``rows``' segments and the boolean mask of the points they own, on
        ``device``, cached (one host-to-device copy per placement, not per update)."""
        key = (tuple(int(r) for r in rows), str(device))
        if key not in self._row_cache:
            positions = torch.as_tensor(self.layout.positions(key[0]), dtype=torch.long).to(device)
            mask = torch.zeros(self.layout.total, dtype=torch.bool, device=device)
            mask[positions] = True
            self._row_cache[key] = (positions, mask)
        return self._row_cache[key]

    def keep_rows(self, rows: Sequence[int]) -> None:
        """Zero every state outside the replicas ``rows`` (after loading a full state on a rank
        that owns only ``rows``, so that the sum over ranks is the full state again)."""
        keep = self._rows_on(rows, self.sums.device)[1]
        for name in ("sums", "sumsqs", "counts", "nonfinite"):
            state = getattr(self, name)
            setattr(self, name, torch.where(keep, state, torch.zeros((), dtype=state.dtype, device=state.device)))

    def replica_block_means(self, from_step: int | None = None) -> dict[str, np.ndarray]:
        """Host block means from ``from_step`` in the aligned layout: ``perturbed`` and
        ``control`` ``(K, n_blocks, shared + 2m)``, ``control_full`` ``(n_blocks, control
        segment)``, ``counts`` ``(n_blocks,)`` and ``starts``."""
        arrays = self.block_arrays(from_step)
        means = arrays["means"]
        perturbed, control, control_full = self.layout.aligned(means)
        n = means.shape[0]
        counts = arrays["counts"].max(axis=1) if n else np.zeros(0)
        return {
            "perturbed": np.moveaxis(perturbed, 0, 1),
            "control": np.moveaxis(control, 0, 1),
            "control_full": control_full,
            "counts": counts,
            "starts": arrays["starts"],
        }

    def estimate(self, from_step: int | None = None, fork_step: int = 0) -> dict[str, Any]:
        """All SAS figures over the blocks from ``from_step`` (host values; flush time only)."""
        data = self.replica_block_means(from_step)
        perturbed, control, counts, starts = data["perturbed"], data["control"], data["counts"], data["starts"]
        layout = self.layout
        out: dict[str, Any] = {"swaps": layout.m}
        if perturbed.shape[1] == 0 or counts.sum() == 0:
            out["sas_resolved"] = False
            out["sas_converged"] = False
            return out
        removed, added, heldout = layout.removed_columns, layout.added_columns, layout.heldout_columns
        out.update(sas_statistics(perturbed, control, counts, removed, added, heldout))
        windows = estimate_by_window(perturbed, control, counts, removed, added, heldout, starts, fork_step)
        out["sas_converged"] = bool(windows.get("converged", False))
        out["windows"] = windows
        out["forgetting"] = forgetting_curve(perturbed, control, starts, removed, fork_step)
        # per-row time averages on P_test: row 0 the control, rows 1..K the perturbed replicas
        held = np.concatenate([time_average(control[:1], counts)[:, heldout], time_average(perturbed, counts)[:, heldout]])
        pairs = [(0, k) for k in range(1, layout.replicas + 1)]
        out["paper_coefficient"], out["paper_coefficient_se"] = paper_coefficient(held.mean(axis=1), pairs)
        out["mean_pairwise_abs_difference"], out["mean_pairwise_abs_difference_se"] = mean_pairwise_abs_difference(held, pairs)
        # the gap stability_gap estimates: the control replica on the held-out split, P_test minus
        # (P_train and every removed sample); its own keys, never the main model's ergodic_gap
        gap = heldout_gap(data["control_full"], counts, layout.control_train_columns(), heldout)
        out["control_heldout_gap"] = gap["gap"]
        out["control_heldout_gap_se"] = gap["gap_se"]
        out["control_heldout_gap_lower"], out["control_heldout_gap_upper"] = gap["gap_lower"], gap["gap_upper"]
        out["control_train_loss"] = gap["train_loss"]
        out["control_heldout_loss"] = gap["test_loss"]
        return out
