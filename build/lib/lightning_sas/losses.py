"""Per-sample losses: the module's ``sas_per_sample_loss``, a user ``loss_fn``, or inferred."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["IGNORE_INDEX", "PerSampleLoss", "PerSampleLossError", "infer_per_sample_loss", "per_sample_loss",
           "sequence_cross_entropy"]

#: ``loss_fn(module, batch) -> Tensor[B]``: the loss of every sample of ``batch`` under ``module``
PerSampleLoss = Callable[[Any, Any], Tensor]

#: target value of tokens left out of a sequence loss (PyTorch's and Hugging Face's convention)
IGNORE_INDEX = -100

#: dict-batch keys of the model input and of the target, in order of preference
INPUT_KEYS = ("input_ids", "x", "input", "inputs", "features")
TARGET_KEYS = ("labels", "label", "y", "target", "targets")


class PerSampleLossError(ValueError):
    """The per-sample loss of a batch could not be computed."""


_HINT = "define `sas_per_sample_loss(self, batch)` on the module or pass `loss_fn=` (module, batch) -> Tensor[B]"


def _split_batch(batch: Any) -> tuple[Any, Any, bool]:
    """``(x, y, is_dict)`` of an ``(x, y)`` pair or a dict batch."""
    if isinstance(batch, Mapping):
        x = next((batch[k] for k in INPUT_KEYS if k in batch), None)
        y = next((batch[k] for k in TARGET_KEYS if k in batch), None)
        if x is None or y is None:
            raise PerSampleLossError(
                f"cannot infer a per-sample loss: a dict batch needs an input key {INPUT_KEYS} and a target key "
                f"{TARGET_KEYS}, got {sorted(map(str, batch))}; {_HINT}")
        return x, y, True
    if isinstance(batch, Sequence) and not isinstance(batch, (str, bytes)) and len(batch) == 2:
        return batch[0], batch[1], False
    raise PerSampleLossError(f"cannot infer a per-sample loss: the batch is not an (x, y) pair or a dict with labels; {_HINT}")


def _logits(out: Any) -> Any:
    """The prediction in a model output: a tensor, the first item of a tuple, ``out["logits"]``
    or ``out.logits`` (Hugging Face style output objects)."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, Mapping):
        return out.get("logits", out.get("output"))
    logits = getattr(out, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(out, (tuple, list)) and out:
        return out[0]
    return None


def sequence_cross_entropy(logits: Tensor, targets: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Per-sequence mean token cross-entropy of ``(B, T, V)`` logits against ``(B, T)`` targets,
    tokens with ``ignore_index`` left out: ``l_b = sum_t m_bt CE_bt / sum_t m_bt`` (NaN for a
    sequence with no target token, which the statistics then exclude and count)."""
    b, t, v = logits.shape
    token = F.cross_entropy(logits.float().reshape(b * t, v), targets.long().reshape(b * t),
                            ignore_index=ignore_index, reduction="none").reshape(b, t)
    mask = (targets != ignore_index).to(token.dtype)
    return (token * mask).sum(1) / mask.sum(1)


def _labels_are_inputs(x: Tensor, y: Tensor) -> Tensor:
    """Are the targets the inputs themselves (``labels = input_ids``, padding set to -100)? A
    0-d boolean tensor."""
    return ((y == x) | (y == IGNORE_INDEX)).all()


def infer_per_sample_loss(module: torch.nn.Module, batch: Any) -> Tensor:
    """Per-sample loss of the common batch shapes, without a ``loss_fn``:

    * ``(x, y)`` pairs and dict batches (inputs under ``input_ids``/``x``/``input``/``inputs``,
      targets under ``labels``/``label``/``y``/``target``/``targets``); the module is called on
      the inputs and its prediction is the output tensor, the first item of a tuple, or the
      ``logits`` of a dict or output object;
    * integer targets with class scores ``(B, C, ...)``: cross-entropy, averaged over the trailing
      positions; for dict batches (sequence models) ``(B, T, V)`` logits with ``(B, T)`` targets:
      token cross-entropy with ``ignore_index=-100`` averaged per sequence
      (:func:`sequence_cross_entropy`), the targets shifted by one position when they are the
      inputs themselves up to ignored tokens (a causal language model's ``labels = input_ids``
      with padding set to -100, as in Hugging Face);
    * float targets of the output's shape: mean squared error over the trailing dimensions.

    Cross-entropy on log-probabilities equals NLL, because ``log_softmax`` is idempotent.
    Raises :class:`PerSampleLossError` for anything else.
    """
    x, y, is_dict = _split_batch(batch)
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise PerSampleLossError(f"cannot infer a per-sample loss: inputs and targets must be tensors; {_HINT}")
    out = _logits(module(x))
    if not isinstance(out, Tensor):
        raise PerSampleLossError(f"cannot infer a per-sample loss: the module's output has no tensor prediction; {_HINT}")
    if not torch.is_floating_point(y):
        classes_last = out.ndim == 3 and y.ndim == 2 and out.shape[:2] == y.shape
        classes_first = out.ndim >= 2 and out.shape[0] == y.shape[0] and out.shape[2:] == y.shape[1:]
        if classes_last and (is_dict or not classes_first):
            aligned = sequence_cross_entropy(out, y)
            if y.shape != x.shape or y.shape[1] < 2:
                return aligned
            # a causal LM whose labels are its inputs: position t predicts token t + 1 (chosen on
            # the device, no host read: probes run between flushes)
            return torch.where(_labels_are_inputs(x, y), sequence_cross_entropy(out[:, :-1], y[:, 1:]), aligned)
        if classes_first:
            return F.cross_entropy(out.float(), y.long(), reduction="none").reshape(y.shape[0], -1).mean(1)
    else:
        if out.shape == y.shape:
            return ((out.float() - y.float()) ** 2).reshape(y.shape[0], -1).mean(1)
        if out.ndim == 2 and out.shape[1] == 1 and y.shape == out.shape[:1]:
            return (out[:, 0].float() - y.float()) ** 2
    raise PerSampleLossError(
        f"cannot infer a per-sample loss from output shape {tuple(out.shape)} and target shape "
        f"{tuple(y.shape)} ({y.dtype}); {_HINT}"
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
