"""Ergodic generalization gap: late-phase time average of held-out minus training probe losses."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import Tensor

from lightning_sas.metrics.time_average import TimeAverage
from lightning_sas.stats.batch_means import batch_means_se_from_blocks, gap_standard_error
from lightning_sas.stats.sas import detrend

__all__ = ["ErgodicGap"]


class ErgodicGap(TimeAverage):
    r"""Time-averaged generalization gap over the late phase (Chandramoorthy et al., NeurIPS 2022).

    The probe vector is ``[P_train..., P_test..., extra...]`` (``num_train``, ``num_test``, then
    ``num_extra`` points the gap leaves out, such as a multi-run plan's swapped samples). With
    per-point late-phase averages :math:`\langle l(z) \rangle`,

    .. math:: \mathrm{gap} = \frac{1}{|P_\mathrm{test}|}\sum_{z \in P_\mathrm{test}} \langle l(z)\rangle
              - \frac{1}{|P_\mathrm{train}|}\sum_{z \in P_\mathrm{train}} \langle l(z)\rangle .

    Its standard error (:func:`~lightning_sas.stats.batch_means.gap_standard_error`) adds the
    temporal part, batch means of the per-block gap series after removing its least-squares line
    in time (:func:`~lightning_sas.stats.sas.detrend`; blocks of the time average, merged into
    batches longer than ``min_batch_len`` evaluations when given), and the sampling of the probe
    points, ``s^2/n`` of the per-point averages of each set, in quadrature.
    """

    def __init__(self, num_train: int, num_test: int, max_blocks: int = 128, num_extra: int = 0, **kwargs: Any) -> None:
        if num_train < 1 or num_test < 1:
            raise ValueError(f"num_train and num_test must be >= 1, got {num_train} and {num_test}")
        super().__init__(num_points=num_train + num_test + num_extra, max_blocks=max_blocks, **kwargs)
        self.num_train = num_train
        self.num_test = num_test
        self.num_extra = num_extra

    @property
    def _test(self) -> slice:
        return slice(self.num_train, self.num_train + self.num_test)

    def compute(self) -> Tensor:  # type: ignore[override]
        """``<l>`` over ``P_test`` minus ``<l>`` over ``P_train`` (a 0-d float64 tensor)."""
        per_point = self.per_point_average()
        return per_point[self._test].mean() - per_point[: self.num_train].mean()

    def gap_with_se(self, min_batch_len: float | None = None) -> dict[str, float | None]:
        """Host dict ``gap``, ``gap_se``, ``train_loss``, ``test_loss`` over the late phase.

        Reads device memory: call at flush time (after :meth:`synced` under DDP).
        """
        arrays = self.block_arrays(self.start_step)
        counts, sums = arrays["counts"], arrays["sums"]
        if counts.shape[0] == 0 or counts.sum() == 0:
            return {"gap": None, "gap_se": None, "train_loss": None, "test_loss": None}
        with np.errstate(invalid="ignore", divide="ignore"):
            per_point = sums.sum(0) / np.maximum(counts.sum(0), 1.0)
        seen = counts.sum(0) > 0
        train_ok, test_ok = seen[: self.num_train], seen[self._test]
        if not train_ok.any() or not test_ok.any():
            return {"gap": None, "gap_se": None, "train_loss": None, "test_loss": None}
        train = float(per_point[: self.num_train][train_ok].mean())
        test = float(per_point[self._test][test_ok].mean())
        means = arrays["means"]
        with np.errstate(invalid="ignore"):
            block_gap = np.nanmean(means[:, self._test], axis=1) - np.nanmean(means[:, : self.num_train], axis=1)
        ok = np.isfinite(block_gap)
        rows = counts.max(axis=1)[ok]
        drift_free = detrend(block_gap[ok][None, :], rows)[0]  # a drift of the window is no noise
        temporal = batch_means_se_from_blocks(rows, drift_free * rows, min_batch_len=min_batch_len)
        se = gap_standard_error(temporal, per_point[: self.num_train][train_ok], per_point[self._test][test_ok])
        return {"gap": test - train, "gap_se": se, "train_loss": train, "test_loss": test}
