"""What a replica sees as ``self.trainer``: a read-only view of the real trainer.

Replicas run the user's own ``configure_optimizers`` (both paths) and ``training_step`` (the
generic path), which read ``self.trainer``: ``self.trainer.model.parameters()`` (Lightning's
FSDP-ready recipe), ``max_steps`` and ``estimated_stepping_batches`` for ``OneCycleLR``,
``current_epoch``, ``global_step``, ... and call ``self.log``. A deep copy has no trainer, so each
replica gets a :class:`ReplicaTrainerView`: the run's settings and progress are read live from
the real trainer, the replica itself stands in for ``model`` and ``lightning_module``, its own
optimizers and schedulers for the trainer's, a strategy that serves the replica and the run's
read-only strategy attributes (``root_device``, ``world_size``, ...) for ``strategy``, logging is
silent, and nothing can be changed through it. Anything else raises :class:`ReplicaTrainerError`,
which names the attribute, the hook that asked for it and one way out that works for that hook.
"""

from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any, Iterator

from lightning_sas._private import STRATEGY_OPTIMIZERS, module_trainer, set_module_trainer

__all__ = ["ReplicaTrainerError", "ReplicaTrainerView", "SilentLogger", "attach_view", "running"]

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

#: what the replica gets instead of the trainer's own (itself, its optimizers, no logger, no metrics)
REPLACED = ("model", "lightning_module", "optimizers", "lr_scheduler_configs", "strategy", "logger", "loggers",
            "callback_metrics", "logged_metrics", "progress_bar_metrics", "callbacks")

#: read live from the real trainer's strategy (placement and precision; no collectives)
STRATEGY_SERVED = frozenset(
    {
        "root_device", "world_size", "global_rank", "local_rank", "node_rank", "is_global_zero", "num_nodes",
        "num_processes", "parallel_devices", "precision_plugin", "accelerator",
    }
)

#: the hooks a replica runs, as :meth:`ReplicaTrainerView.running` names them, and for each the
#: one way out that works when it needs something a replica cannot have
WAYS_OUT = {
    "configure_optimizers": (
        "Define `sas_configure_optimizers(self)` on the module, returning what configure_optimizers returns "
        "without that attribute: both replica paths build the replica optimizers with it."
    ),
    "training_step": (
        "Pass loss_fn=(module, batch) -> per-sample losses (a callable or an import path): replicas then train on "
        "its mean instead of running training_step."
    ),
    "manual training_step": (
        "A manual-optimization training_step steps the replicas itself, so it cannot do without it: measure SAS with "
        "the multi-run protocol instead (lightning-sas perturb)."
    ),
    "per-sample loss": (
        "Measure SAS with the multi-run protocol instead (lightning-sas perturb), or define "
        "`sas_per_sample_loss(self, batch)` without that attribute."
    ),
}


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
    def model(self) -> Any:
        return self._view.model

    @property
    def optimizers(self) -> list[Any]:
        return self._view.optimizers

    @property
    def lightning_module(self) -> Any:
        return self._view.lightning_module

    def backward(self, loss: Any, optimizer: Any = None, *args: Any, **kwargs: Any) -> None:
        loss.backward(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name == STRATEGY_OPTIMIZERS:  # where LightningModule.optimizers() reads them
            return self._view.optimizers
        if name in STRATEGY_SERVED:
            return getattr(self._view._trainer.strategy, name)
        if name.startswith("__"):
            raise AttributeError(name)
        raise ReplicaTrainerError(_message(f"trainer.strategy.{name}", self._view._hook))


def _message(what: str, hook: str | None) -> str:
    """The error for ``what``, asked for by ``hook`` (a key of :data:`WAYS_OUT`, or None when
    unknown), naming the one way out for that hook."""
    where = f"a replica's {hook}" if hook else "a replica's code"
    way = WAYS_OUT.get(hook or "", "Define `sas_configure_optimizers(self)` if configure_optimizers needs it, or pass "
                       "loss_fn=(module, batch) -> per-sample losses if training_step needs it.")
    return (
        f"SASReplicas: {where} uses `{what}`, which a replica cannot have (replicas see a read-only view of the "
        "trainer: the run's settings and progress, the replica itself as `model` and `lightning_module`, their own "
        f"optimizers, silent logging). {way}"
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
        object.__setattr__(self, "_hook", None)

    @contextmanager
    def running(self, hook: str) -> Iterator[None]:
        """Name the hook the replica runs now (a key of :data:`WAYS_OUT`), so that an attribute
        it cannot have is reported with the way out for that hook."""
        previous = self._hook
        object.__setattr__(self, "_hook", hook)
        try:
            yield
        finally:
            object.__setattr__(self, "_hook", previous)

    def set_optimizers(self, optimizers: list[Any], schedulers: list[tuple[Any, str, int]]) -> None:
        """The replica's own optimizers and ``(scheduler, interval, frequency)`` triples."""
        object.__setattr__(self, "_optimizers", list(optimizers))
        configs = [SimpleNamespace(scheduler=s, interval=i, frequency=f, name=None, reduce_on_plateau=False,
                                   monitor=None, strict=True) for s, i, f in schedulers]
        object.__setattr__(self, "_scheduler_configs", configs)

    # the replacements
    @property
    def model(self) -> Any:
        """The replica itself (``self.trainer.model.parameters()`` are the replica's parameters;
        on the fast path, the module holding the stacked parameters)."""
        return self._module

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
        raise ReplicaTrainerError(_message(f"trainer.{name}", self._hook))

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
        if hasattr(sub, "log") and set_module_trainer(sub, view):
            sub.log = noop
            sub.log_dict = noop
    return view


@contextmanager
def running(module: Any, hook: str) -> Iterator[None]:
    """:meth:`ReplicaTrainerView.running` for ``module``'s view (nothing without one)."""
    view = module_trainer(module)
    if isinstance(view, ReplicaTrainerView):
        with view.running(hook):
            yield
    else:
        yield
