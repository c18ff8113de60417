"""Small pieces shared by the callbacks: loss extraction, step indexing, run directory, import paths."""

from __future__ import annotations

import importlib
import os
from pathlib import PurePath
import warnings
import weakref
from typing import Any, Callable

import torch
from torch import Tensor

__all__ = [
    "SASWarning",
    "extract_loss",
    "stream_index",
    "run_directory",
    "resolve_callable",
    "warn_once",
    "is_global_zero",
]


class SASWarning(UserWarning):
    """Warnings issued by lightning-sas (one per cause)."""


#: the warning keys each live owner has issued; weak, so that a new callback that happens to
#: reuse a collected one's ``id`` still warns (an ``id``-keyed set silently dropped those)
_WARNED: "weakref.WeakKeyDictionary[object, set[str]]" = weakref.WeakKeyDictionary()


def warn_once(owner: object, key: str, message: str) -> None:
    """Issue ``message`` once per ``owner`` and ``key``."""
    issued = _WARNED.setdefault(owner, set())
    if key in issued:
        return
    issued.add(key)
    warnings.warn(message, SASWarning, stacklevel=3)


def extract_loss(outputs: Any) -> Tensor | None:
    """The loss tensor in what ``training_step`` returned (tensor or dict with ``"loss"``)."""
    loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
    if not isinstance(loss, Tensor):
        return None
    if loss.ndim:
        if loss.numel() != 1:
            return None
        loss = loss.reshape(())
    return loss.detach() if loss.requires_grad else loss


def stream_index(trainer: Any, pl_module: Any, batches_seen: int) -> int:
    """Index of the current stream entry (DESIGN 9): optimizer step in automatic optimization,
    batch count in manual optimization."""
    if pl_module.automatic_optimization:
        return int(trainer.global_step)
    return int(batches_seen)


def is_global_zero(trainer: Any) -> bool:
    return bool(getattr(trainer, "is_global_zero", True))


def run_directory(trainer: Any, store: bool | str | os.PathLike = True) -> str | None:
    """Where the run's streams go, or None when nothing should be written.

    ``store`` a path: that directory. ``store=True``: ``<log_dir>/sas`` of the first logger whose
    ``log_dir`` is a real path (TensorBoard, CSV); with no such logger (``logger=False``,
    ``fast_dev_run``, which replaces the loggers by a dummy) nothing is written, as Lightning
    writes no logs then, and the summary lives in memory only. ``store=False``: nothing.
    Reads no collective (only rank 0 writes)."""
    if store is False or store is None:
        return None
    if isinstance(store, (str, os.PathLike)) and not isinstance(store, bool):
        return os.fspath(store)
    for logger in getattr(trainer, "loggers", None) or []:
        try:
            base = getattr(logger, "log_dir", None)
        except Exception:  # a logger whose log_dir cannot be computed here
            continue
        # a real path only: a Mock's attribute also answers os.fspath
        if isinstance(base, (str, PurePath)) and str(base):
            return os.path.join(os.fspath(base), "sas")
    return None


def resolve_callable(value: str | Callable | None, argument: str) -> Callable | None:
    """``value`` itself, or the object named by an import path ``"package.module.name"``
    (so LightningCLI YAML can name a function)."""
    if value is None or callable(value):
        return value
    if isinstance(value, str) and "." in value:
        module_name, _, attr = value.rpartition(".")
        try:
            obj = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"{argument}={value!r} could not be imported ({err}); pass a callable or an import path 'package.module.function'") from err
        if callable(obj):
            return obj
    raise ValueError(f"{argument} must be a callable or an import path 'package.module.function', got {value!r}")


def first_param_group(trainer: Any) -> dict[str, Any] | None:
    """The first parameter group of the first optimizer (its ``"lr"`` is the stream's learning
    rate: schedulers change it in place), or None without one."""
    optimizers = getattr(trainer, "optimizers", None) or []
    groups = getattr(optimizers[0], "param_groups", None) if optimizers else None
    return groups[0] if groups else None


def device_float_dtype(device: torch.device) -> torch.dtype:
    """float64 where the device has it (not on MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def prepare_batch(trainer: Any, batch: Any, device: Any) -> Any:
    """Move a batch we built ourselves to ``device`` and convert it like the precision plugin
    converts training inputs (e.g. float64 under ``precision="64-true"``). Duck-typed, so the
    trainer, its precision plugin and the batch may come from either Lightning namespace."""
    from lightning_sas._compat import lightning_module

    batch = lightning_module("utilities", trainer).move_data_to_device(batch, device)
    plugin = getattr(trainer, "precision_plugin", None)
    return plugin.convert_input(batch) if plugin is not None else batch
