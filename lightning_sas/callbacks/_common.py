"""Small pieces shared by the callbacks: loss extraction, step indexing, run directory, import paths."""

from __future__ import annotations

import importlib
import logging
import os
import re
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
    "entry_completed",
    "is_due",
    "next_due",
    "run_directory",
    "store_location",
    "say_once",
    "resolve_callable",
    "warn_once",
    "is_global_zero",
    "sharded_parameters",
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


#: the lines lightning-sas says through :mod:`logging` (where the store goes, that nothing is
#: written): WARNING level, so Python's default handler and Hydra's log show them
log = logging.getLogger("lightning_sas")


def say_once(owner: object, key: str, message: str) -> None:
    """Log ``message`` (WARNING) once per ``owner`` and ``key``: for facts a user must see but
    that are no fault (a SASWarning is for a diagnostic that is lost)."""
    issued = _WARNED.setdefault(owner, set())
    if f"say:{key}" in issued:
        return
    issued.add(f"say:{key}")
    log.warning(message)


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
    """Index of the current stream entry: optimizer step in automatic optimization,
    batch count in manual optimization."""
    if pl_module.automatic_optimization:
        return int(trainer.global_step)
    return int(batches_seen)


def entry_completed(trainer: Any, automatic: bool, index: int) -> bool:
    """Did this batch complete stream entry ``index``? In manual optimization every batch is an
    entry; in automatic optimization once the optimizer stepped (``global_step > index``), not
    while gradients accumulate or when the step was skipped."""
    return (not automatic) or trainer.global_step > index


def is_due(index: int, every: int, offset: int = 0) -> bool:
    """Is entry ``index`` due at a cadence of ``every`` entries: ``(index + offset) % every == 0``?
    ``offset=0``: entries 0, every, 2 every, ... (snapshots, probes); ``offset=1``: after every
    ``every``-th entry, entries every - 1, 2 every - 1, ... (flushes)."""
    return (index + offset) % every == 0


def next_due(index: int, every: int, offset: int = 0) -> int:
    """The first entry at or after ``index`` that :func:`is_due`:
    ``ceil((index + offset) / every) * every - offset``."""
    return -(-(index + offset) // every) * every - offset


def is_global_zero(trainer: Any) -> bool:
    return bool(getattr(trainer, "is_global_zero", True))


def sharded_parameters(trainer: Any, module: Any) -> str | None:
    """How the module's parameters are sharded over ranks, or None when every rank holds them
    whole (one process, DDP): ``"FSDP2 (fully_shard, DTensor parameters)"`` or ``"FSDP1
    (FullyShardedDataParallel)"``. Reads no collective."""
    try:
        from torch.distributed.tensor import DTensor
    except Exception:  # pragma: no cover - builds without torch.distributed
        DTensor = None  # type: ignore[assignment]  # noqa: N806
    for param in module.parameters():
        if DTensor is not None and isinstance(param, DTensor):
            return "FSDP2 (fully_shard, DTensor parameters)"
        if getattr(param, "_is_flat_param", False):
            return "FSDP1 (FullyShardedDataParallel)"
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except Exception:  # pragma: no cover
        return None
    roots = [module, getattr(getattr(trainer, "strategy", None), "model", None), getattr(trainer, "model", None)]
    for root in roots:
        if isinstance(root, torch.nn.Module) and any(isinstance(m, FullyShardedDataParallel) for m in root.modules()):
            return "FSDP1 (FullyShardedDataParallel)"
    return None


def run_directory(trainer: Any, store: bool | str | os.PathLike = True) -> str | None:
    """Where the run's streams go, or None when nothing should be written
    (:func:`store_location` without its note)."""
    return store_location(trainer, store)[0]


#: the folder, under the trainer's ``default_root_dir``, of the stores of runs whose loggers
#: have no log directory (MLflow, W&B): ``<default_root_dir>/lightning_sas/<the logger's run id>``
DEFAULT_STORE_FOLDER = "lightning_sas"


def _path_part(value: Any) -> str:
    """A run id as one safe path component ("" when there is none)."""
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, int):
        return f"version_{value}"
    text = re.sub(r"[^A-Za-z0-9_.-]", "_", str(value)).strip(".")
    return text


def _next_version(root: str) -> str:
    n = 0
    while os.path.exists(os.path.join(root, f"version_{n}")):
        n += 1
    return f"version_{n}"


def _class_named(obj: Any, *names: str) -> bool:
    """Is ``obj`` an instance of a class named one of ``names`` (either Lightning namespace, subclasses included)?"""
    return any(cls.__name__ in names for cls in type(obj).__mro__)


def store_location(trainer: Any, store: bool | str | os.PathLike = True) -> tuple[str | None, str | None]:
    """``(directory, note)``: where the run's streams go (None: nothing is written) and, where
    the user may not expect it, one line that says so and how to choose (else None).

    ``store`` a path: that directory. ``store=False``: nothing. ``store=True``:

    * ``<log_dir>/sas`` of the first logger whose ``log_dir`` is a real path (TensorBoard, CSV);
    * with loggers but none with a log directory, among them MLflow or W&B: the documented
      default ``<trainer.default_root_dir>/lightning_sas/<run id>`` (the first logger's
      ``version`` of the MLflow or W&B logger: its run id; ``version_<n>``, the first free one,
      without it), with a note saying where; with other loggers without a log directory:
      nothing, with a note saying how to keep the run;
    * with no logger (``logger=False``, Hydra's ``logger: null``): nothing, with a note saying
      so and how to keep the run;
    * under ``fast_dev_run`` (Lightning replaces the loggers by a dummy and writes no logs):
      nothing, silently.

    Reads no collective (only rank 0 writes)."""
    if store is False or store is None:
        return None, None
    if isinstance(store, (str, os.PathLike)) and not isinstance(store, bool):
        return os.fspath(store), None
    loggers = list(getattr(trainer, "loggers", None) or [])
    for logger in loggers:
        try:
            base = getattr(logger, "log_dir", None)
        except Exception:  # a logger whose log_dir cannot be computed here
            continue
        # a real path only: a Mock's attribute also answers os.fspath
        if isinstance(base, (str, PurePath)) and str(base):
            return os.path.join(os.fspath(base), "sas"), None
    real = [lg for lg in loggers if not _class_named(lg, "DummyLogger")]
    if not loggers:
        return None, ("lightning-sas: nothing is written: the trainer has no logger and SASMonitor has no store, so "
                      "the diagnostics live in memory only (SASMonitor.summary()). To keep the run, pass "
                      "SASMonitor(store=\"DIR\") (then `lightning-sas report DIR`) or give the Trainer a logger "
                      "(e.g. TensorBoardLogger, whose log directory holds the store).")
    if not real:
        return None, None
    names = ", ".join(dict.fromkeys(type(lg).__name__ for lg in real))
    if not any(_class_named(lg, "MLFlowLogger", "WandbLogger") for lg in real):
        return None, (f"lightning-sas: nothing is written: {names} has no log directory and SASMonitor has no store. "
                      "To keep the run, pass SASMonitor(store=\"DIR\") (then `lightning-sas report DIR`).")
    root = getattr(trainer, "default_root_dir", None)
    root = os.fspath(root) if isinstance(root, (str, PurePath)) and str(root) else os.getcwd()
    root = os.path.join(root, DEFAULT_STORE_FOLDER)
    named = next(lg for lg in real if _class_named(lg, "MLFlowLogger", "WandbLogger"))
    try:
        version = _path_part(getattr(named, "version", None))
    except Exception:
        version = ""
    directory = os.path.join(root, version or _next_version(root))
    return directory, (f"lightning-sas: the run store goes to {directory} ({names} has no log directory); "
                       f"read it with `lightning-sas report {directory}`. SASMonitor(store=\"DIR\") puts it "
                       f"elsewhere, store=False writes none.")


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
