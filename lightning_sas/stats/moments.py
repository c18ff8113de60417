"""Mergeable streaming mean and variance, per element, in float64 torch tensors.

For two disjoint sets with counts ``n_a, n_b``, means ``mu_a, mu_b`` and sums of squared
deviations ``M2_a, M2_b``, the union has [T. F. Chan, G. H. Golub & R. J. LeVeque, "Updating
formulae and a pairwise algorithm for computing sample variances", COMPSTAT 1982; also
torchmetrics ``pearson._final_aggregation``]:

    n     = n_a + n_b,
    delta = mu_b - mu_a,
    mu    = mu_a + delta * n_b / n,
    M2    = M2_a + M2_b + delta^2 * n_a * n_b / n.

A batch is reduced to ``(n_b, mu_b, M2_b)`` with two vectorised passes and merged into the
running state, so updates are numerically stable and associative up to rounding (shards and
ranks can be merged in any order).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["RunningMoments", "merge_moments"]


def merge_moments(
    n_a: Tensor, mean_a: Tensor, m2_a: Tensor, n_b: Tensor, mean_b: Tensor, m2_b: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Chan et al. (1982) merge of ``(count, mean, M2)`` of two disjoint sets, elementwise.

    ``n = n_a + n_b``, ``mean = mean_a + delta n_b / n``, ``M2 = M2_a + M2_b + delta^2 n_a n_b
    / n`` with ``delta = mean_b - mean_a``. Where ``n = 0`` the result is ``(0, 0, 0)`` (no
    division by zero, no NaN). Inputs broadcast; Python numbers are accepted (float64).
    """
    n_a, mean_a, m2_a, n_b, mean_b, m2_b = (
        t if isinstance(t, Tensor) else torch.as_tensor(t, dtype=torch.float64)
        for t in (n_a, mean_a, m2_a, n_b, mean_b, m2_b)
    )
    n = n_a + n_b
    safe = torch.where(n > 0, n, torch.ones_like(n))
    delta = mean_b - mean_a
    mean = torch.where(n > 0, mean_a + delta * (n_b / safe), torch.zeros_like(mean_a + delta))
    m2 = torch.where(
        n > 0, m2_a + m2_b + delta * delta * (n_a * n_b / safe), torch.zeros_like(mean)
    )
    return n, mean, m2


class RunningMoments:
    """Per-element count, mean and ``M2 = sum (x - mean)^2`` of a stream of tensors of ``shape``.

    ``update(batch)`` takes a tensor of shape ``(m, *shape)`` (``m`` samples; a tensor of exactly
    ``shape`` counts as one sample). Non-finite values are excluded per element with
    ``torch.where`` (no boolean-mask indexing, no ``.item()``: no host-device sync) and counted in
    ``nonfinite``. State is float64 (``count`` too: exact up to 2^53) except ``nonfinite``
    (int64), all on ``device``. Merging follows Chan et al. (1982), see :func:`merge_moments`.
    """

    def __init__(self, shape: Sequence[int] | torch.Size = (), device: Any = None) -> None:
        shape = torch.Size(shape)
        kw = {"dtype": torch.float64, "device": device}
        self._count = torch.zeros(shape, **kw)
        self._mean = torch.zeros(shape, **kw)
        self._m2 = torch.zeros(shape, **kw)
        self.nonfinite = torch.zeros(shape, dtype=torch.int64, device=device)

    @property
    def shape(self) -> torch.Size:
        return self._mean.shape

    @property
    def device(self) -> torch.device:
        return self._mean.device

    @property
    def count(self) -> Tensor:
        """Number of finite values seen, per element (float64)."""
        return self._count

    @property
    def mean(self) -> Tensor:
        """Mean of the finite values, per element (0 where nothing was seen)."""
        return self._mean

    @property
    def m2(self) -> Tensor:
        """Sum of squared deviations from the mean, per element."""
        return self._m2

    @property
    def var(self) -> Tensor:
        """Unbiased variance ``M2 / (count - 1)``; ``0`` where ``count < 2`` (never NaN)."""
        n = self._count
        return torch.where(n > 1, self._m2.clamp_min(0) / (n - 1).clamp_min(1), torch.zeros_like(n))

    @property
    def std(self) -> Tensor:
        """``sqrt(var)`` (``0`` where ``count < 2``)."""
        return self.var.sqrt()

    def update(self, batch: Tensor) -> None:
        """Fold the samples ``batch[0], batch[1], ...`` into the moments (no host sync)."""
        x = torch.as_tensor(batch).to(device=self.device, dtype=torch.float64)
        if x.shape == self.shape:
            x = x.unsqueeze(0)
        if x.shape[1:] != self.shape:
            raise ValueError(
                f"expected a batch of shape (m, *{tuple(self.shape)}), got {tuple(x.shape)}"
            )
        finite = torch.isfinite(x)
        zero = torch.zeros((), dtype=torch.float64, device=x.device)
        xz = torch.where(finite, x, zero)
        n_b = finite.sum(0, dtype=torch.float64)
        mean_b = xz.sum(0) / n_b.clamp_min(1)
        dev = torch.where(finite, x - mean_b, zero)
        m2_b = (dev * dev).sum(0)
        self._count, self._mean, self._m2 = merge_moments(
            self._count, self._mean, self._m2, n_b, mean_b, m2_b
        )
        self.nonfinite = self.nonfinite + (~finite).sum(0)

    def merge(self, other: RunningMoments) -> RunningMoments:
        """Fold another ``RunningMoments`` (disjoint samples, same shape) into this one."""
        if other.shape != self.shape:
            raise ValueError(f"shape mismatch: {tuple(self.shape)} vs {tuple(other.shape)}")
        dev = self.device
        self._count, self._mean, self._m2 = merge_moments(
            self._count,
            self._mean,
            self._m2,
            other._count.to(dev),
            other._mean.to(dev),
            other._m2.to(dev),
        )
        self.nonfinite = self.nonfinite + other.nonfinite.to(dev)
        return self

    def reset(self) -> None:
        """Forget everything seen so far (shape and device are kept)."""
        for t in (self._count, self._mean, self._m2, self.nonfinite):
            t.zero_()

    def state_dict(self) -> dict[str, Tensor]:
        """Tensors only (safe for ``torch.load(weights_only=True)``); the count as int64 (a whole
        number, exact below 2^53)."""
        return {
            "count": self._count.to(torch.int64),
            "mean": self._mean.clone(),
            "m2": self._m2.clone(),
            "nonfinite": self.nonfinite.clone(),
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore from :meth:`state_dict` onto this instance's device (the shape is taken over)."""
        dev = self.device
        self._count = state["count"].to(device=dev, dtype=torch.float64).clone()
        self._mean = state["mean"].to(device=dev, dtype=torch.float64).clone()
        self._m2 = state["m2"].to(device=dev, dtype=torch.float64).clone()
        self.nonfinite = state["nonfinite"].to(device=dev, dtype=torch.int64).clone()
