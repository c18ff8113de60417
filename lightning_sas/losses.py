"""Per-sample losses: the module's ``sas_per_sample_loss``, a user ``loss_fn``, or inferred."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["PerSampleLoss", "PerSampleLossError", "infer_per_sample_loss", "per_sample_loss"]

#: ``loss_fn(module, batch) -> Tensor[B]``: the loss of every sample of ``batch`` under ``module``
PerSampleLoss = Callable[[Any, Any], Tensor]


class PerSampleLossError(ValueError):
    """The per-sample loss of a batch could not be computed."""


def infer_per_sample_loss(module: torch.nn.Module, batch: Any) -> Tensor:
    """Per-sample loss of an ``(x, y)`` batch: cross-entropy for integer targets and class scores
    ``(B, C, ...)``, mean squared error over the trailing dimensions for float targets of the
    output's shape. Raises :class:`PerSampleLossError` otherwise.

    Cross-entropy on log-probabilities equals NLL, because ``log_softmax`` is idempotent.
    """
    if isinstance(batch, Mapping):
        x, y = batch.get("x", batch.get("input")), batch.get("y", batch.get("target", batch.get("label")))
    elif isinstance(batch, Sequence) and not isinstance(batch, (str, bytes)) and len(batch) == 2:
        x, y = batch
    else:
        raise PerSampleLossError(
            "cannot infer a per-sample loss: the batch is not an (x, y) pair; define "
            "`sas_per_sample_loss(self, batch)` on the module or pass `loss_fn=` (module, batch) -> Tensor[B]"
        )
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise PerSampleLossError("cannot infer a per-sample loss: x and y must be tensors")
    out = module(x)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, Tensor):
        raise PerSampleLossError("cannot infer a per-sample loss: the module's output is not a tensor")
    if not torch.is_floating_point(y) and out.ndim >= 2 and out.shape[0] == y.shape[0] and out.shape[2:] == y.shape[1:]:
        return F.cross_entropy(out.float(), y.long(), reduction="none").reshape(y.shape[0], -1).mean(1)
    if torch.is_floating_point(y) and out.shape == y.shape:
        return ((out.float() - y.float()) ** 2).reshape(y.shape[0], -1).mean(1)
    if torch.is_floating_point(y) and out.ndim == 2 and out.shape[1] == 1 and y.shape == out.shape[:1]:
        return (out[:, 0].float() - y.float()) ** 2
    raise PerSampleLossError(
        f"cannot infer a per-sample loss from output shape {tuple(out.shape)} and target shape "
        f"{tuple(y.shape)} ({y.dtype}); define `sas_per_sample_loss(self, batch)` or pass `loss_fn=`"
    )


def per_sample_loss(module: torch.nn.Module, batch: Any, loss_fn: PerSampleLoss | None = None) -> Tensor:
    """Per-sample losses of ``batch`` (shape ``(B,)``), by the first of: the module's
    ``sas_per_sample_loss(batch)``, ``loss_fn(module, batch)``, :func:`infer_per_sample_loss`."""
    method = getattr(module, "sas_per_sample_loss", None)
    if callable(method):
        return method(batch)
    if loss_fn is not None:
        return loss_fn(module, batch)
    return infer_per_sample_loss(module, batch)
