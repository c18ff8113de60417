"""Ergodic generalization gap: late-phase time average of held-out minus training probe losses."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_sas.metrics.time_average import TimeAverage
from lightning_sas.stats.sas import heldout_gap

__all__ = ["ErgodicGap"]


class ErgodicGap(TimeAverage):
    r"""Time-averaged generalization gap over the late phase (Chandramoorthy et al., NeurIPS 2022).

    The probe vector is ``[P_train..., P_test..., extra...]`` (``num_train``, ``num_test``, then
    ``num_extra`` points the gap leaves out, such as a multi-run plan's swapped samples). With
    per-point late-phase averages :math:`\langle l(z) \rangle`,

    .. math:: \mathrm{gap} = \frac{1}{|P_\mathrm{test}|}\sum_{z \in P_\mathrm{test}} \langle l(z)\rangle
              - \frac{1}{|P_\mathrm{train}|}\sum_{z \in P_\mathrm{train}} \langle l(z)\rangle .

    A point without a finite value in the window is left out of its set's mean. Its standard error
    (:func:`~lightning_sas.stats.batch_means.gap_standard_error`) adds the temporal part, batch
    means of the per-block gap series after removing its least-squares line in time
    (:func:`~lightning_sas.stats.sas.detrend`; blocks of the time average, merged into batches
    longer than ``min_batch_len`` evaluations when given), and the sampling of the probe points,
    ``s^2/n`` of the per-point averages of each set, in quadrature. Both are
    :func:`~lightning_sas.stats.sas.heldout_gap`, which also gives the control replica's gap.
    """

    def __init__(self, num_train: int, num_test: int, max_blocks: int = 128, num_extra: int = 0, **kwargs: Any) -> None:
        if num_train < 1 or num_test < 1:
            raise ValueError(f"num_train and num_test must be >= 1, got {num_train} and {num_test}")
        super().__init__(num_points=num_train + num_test + num_extra, max_blocks=max_blocks, **kwargs)
        self.num_train = num_train
        self.num_test = num_test
        self.num_extra = num_extra

    def compute(self) -> Tensor:  # type: ignore[override]
        """``<l>`` over ``P_test`` minus ``<l>`` over ``P_train``, points without a finite value left
        out (:meth:`gap_with_se`; a 0-d float64 tensor, NaN without a finite point on a side)."""
        gap = self.gap_with_se()["gap"]
        return torch.tensor(float("nan") if gap is None else gap, dtype=torch.float64, device=self.sums.device)

    def gap_with_se(self, min_batch_len: float | None = None) -> dict[str, float | None]:
        """Host dict ``gap``, ``gap_se``, ``train_loss``, ``test_loss`` over the blocks from
        :attr:`start_step` on (:func:`~lightning_sas.stats.sas.heldout_gap`, the one
        implementation of the gap).

        Reads device memory: call at flush time (after :meth:`synced` under DDP).
        """
        arrays = self.block_arrays(self.start_step)
        train = np.arange(self.num_train)
        test = np.arange(self.num_train, self.num_train + self.num_test)
        return heldout_gap(arrays["means"], arrays["counts"], train, test, min_batch_len=min_batch_len)
