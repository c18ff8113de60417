"""What a replica sees as ``self.trainer``: a read-only view of the real trainer.

Generic replicas run the user's own ``configure_optimizers`` and ``training_step``, which read
``self.trainer`` (``max_steps`` and ``estimated_stepping_batches`` for ``OneCycleLR``,
``current_epoch``, ``global_step``, ...) and call ``self.log``. A deep copy has no trainer, so each
replica gets a :class:`ReplicaTrainerView` (docs: Design, "Decisions about Lightning"): the run's settings and progress
are read live from the real trainer, the replica's own optimizers and schedulers stand in for the
trainer's, logging is silent, and nothing can be changed through it. Anything else raises
:class:`ReplicaTrainerError`, which names the attribute and the way out.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

__all__ = ["ReplicaTrainerError", "ReplicaTrainerView", "SilentLogger", "attach_view"]

#: read live from the real trainer (settings, progress and state; no collectives, no side effects)
SERVED = frozenset(
    {
        "max_steps", "max_epochs", "min_steps", "min_epochs", "max_time", "estimated_stepping_batches",
        "num_training_batches", "num_val_batches", "num_sanity_val_batches", "global_step", "current_epoch",
        "is_last_batch", "world_size", "num_devices", "num_nodes", "device_ids", "precision", "precision_plugin",
        "accumulate_grad_batches", "global_rank", "local_rank", "node_rank", "is_global_zero", "training",
        "sanity_checking", "validating", "testing", "predicting", "state", "fast_dev_run", "default_root_dir",
        "check_val_every_n_epoch", "val_check_interval", "val_check_batch", "log_every_n_steps",
        "gradient_clip_val", "gradient_clip_algorithm", "limit_train_batches", "limit_val_batches",
        "overfit_batches", "reload_dataloaders_every_n_epochs", "datamodule", "train_dataloader", "interrupted",
        "received_sigterm", "ckpt_path", "should_stop",
    }
)

#: what the replica gets instead of the trainer's own (its optimizers, no logger, no metrics)
REPLACED = ("lightning_module", "optimizers", "lr_scheduler_configs", "strategy", "logger", "loggers",
            "callback_metrics", "logged_metrics", "progress_bar_metrics", "callbacks")


class ReplicaTrainerError(AttributeError):
    """A replica's code needs something of the trainer that a replica cannot have."""


class SilentLogger:
    """A logger whose every method and attribute does nothing (``self.logger.experiment.add_scalar``
    in a replica's ``training_step`` is a no-op)."""

    def __getattr__(self, name: str) -> "SilentLogger":
        if name.startswith("__"):
            raise AttributeError(name)
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        return None


class _ReplicaStrategy:
    """The strategy calls a manual-optimization ``training_step`` makes through the module
    (``self.optimizers()``, ``self.manual_backward(loss)``), served for one replica."""

    def __init__(self, view: "ReplicaTrainerView") -> None:
        self._view = view

    @property
    def _lightning_optimizers(self) -> list[Any]:
        return self._view.optimizers

    @property
    def optimizers(self) -> list[Any]:
        return self._view.optimizers

    @property
    def lightning_module(self) -> Any:
        return self._view.lightning_module

    def backward(self, loss: Any, optimizer: Any = None, *args: Any, **kwargs: Any) -> None:
        loss.backward(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        raise ReplicaTrainerError(_message(f"trainer.strategy.{name}"))


def _message(what: str) -> str:
    return (
        f"SASReplicas: a replica's code uses `{what}`, which a replica cannot have (replicas see a "
        "read-only view of the trainer: its settings and progress, their own optimizers, silent logging). "
        "Use replica_path='fast' with loss_fn=(module, batch) -> per-sample losses, or define "
        "`sas_configure_optimizers(self)` on the module to build the replica optimizers without the trainer."
    )


class ReplicaTrainerView:
    """Read-only stand-in for ``self.trainer`` inside one replica.

    Args:
        trainer: the real trainer (read live, never written).
        module: the replica (``lightning_module``).
    """

    def __init__(self, trainer: Any, module: Any) -> None:
        object.__setattr__(self, "_trainer", trainer)
        object.__setattr__(self, "_module", module)
        object.__setattr__(self, "_optimizers", [])
        object.__setattr__(self, "_scheduler_configs", [])
        object.__setattr__(self, "_silent", SilentLogger())

    def set_optimizers(self, optimizers: list[Any], schedulers: list[tuple[Any, str, int]]) -> None:
        """The replica's own optimizers and ``(scheduler, interval, frequency)`` triples."""
        object.__setattr__(self, "_optimizers", list(optimizers))
        configs = [SimpleNamespace(scheduler=s, interval=i, frequency=f, name=None, reduce_on_plateau=False,
                                   monitor=None, strict=True) for s, i, f in schedulers]
        object.__setattr__(self, "_scheduler_configs", configs)

    # the replacements
    @property
    def lightning_module(self) -> Any:
        return self._module

    @property
    def optimizers(self) -> list[Any]:
        return self._optimizers

    @property
    def lr_scheduler_configs(self) -> list[Any]:
        return self._scheduler_configs

    @property
    def strategy(self) -> _ReplicaStrategy:
        return _ReplicaStrategy(self)

    @property
    def logger(self) -> Any:
        return self._silent if getattr(self._trainer, "logger", None) is not None else None

    @property
    def loggers(self) -> list[Any]:
        return [self._silent for _ in (getattr(self._trainer, "loggers", None) or [])]

    @property
    def callback_metrics(self) -> dict[str, Any]:
        return {}

    @property
    def logged_metrics(self) -> dict[str, Any]:
        return {}

    @property
    def progress_bar_metrics(self) -> dict[str, Any]:
        return {}

    @property
    def callbacks(self) -> list[Any]:
        return []

    def __getattr__(self, name: str) -> Any:
        if name in SERVED:
            return getattr(self._trainer, name)
        if name.startswith("__"):
            raise AttributeError(name)
        raise ReplicaTrainerError(_message(f"trainer.{name}"))

    def __setattr__(self, name: str, value: Any) -> None:
        raise ReplicaTrainerError(f"SASReplicas: a replica's code tried to set `trainer.{name}`; a replica cannot "
                                  "change the run's trainer.")

    def __delattr__(self, name: str) -> None:
        raise ReplicaTrainerError(f"SASReplicas: a replica's code tried to delete `trainer.{name}`.")

    def __repr__(self) -> str:
        return f"ReplicaTrainerView({type(self._trainer).__name__})"


def attach_view(module: Any, trainer: Any) -> ReplicaTrainerView | None:
    """Give ``module`` (a replica, or the holder of stacked parameters) a view of ``trainer`` as
    its ``trainer``, and silent ``log``/``log_dict`` (also on nested LightningModules)."""
    view = ReplicaTrainerView(trainer, module) if trainer is not None else None

    def noop(*args: Any, **kwargs: Any) -> None:
        return None

    for sub in module.modules():
        if hasattr(sub, "_trainer") and hasattr(sub, "log"):
            sub._trainer = view
            sub.log = noop
            sub.log_dict = noop
    return view
