"""Parse what ``configure_optimizers`` returns, and step schedulers like Lightning does."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lightning_sas.callbacks._common import is_due

__all__ = ["OptimizerSet", "parse_optimizers", "ELEMENTWISE_OPTIMIZERS"]

#: optimizers whose update of each element depends only on that element's history, so one
#: optimizer over stacked replica parameters equals one optimizer per replica
ELEMENTWISE_OPTIMIZERS = (
    torch.optim.SGD,
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.RMSprop,
    torch.optim.Adagrad,
    torch.optim.Adamax,
    torch.optim.NAdam,
    torch.optim.RAdam,
)


@dataclass
class OptimizerSet:
    optimizers: list[torch.optim.Optimizer]
    #: (scheduler, interval "step"|"epoch", frequency)
    schedulers: list[tuple[Any, str, int]]

    def zero_grad(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    def step(self, step_index: int) -> None:
        """One optimizer step, then the step-interval schedulers due at ``step_index``."""
        for opt in self.optimizers:
            opt.step()
        self.step_schedulers(step_index)

    def step_schedulers(self, step_index: int) -> None:
        """The step-interval schedulers due after optimizer step ``step_index`` (0-based)."""
        for sched, interval, frequency in self.schedulers:
            if interval == "step" and is_due(step_index, frequency, offset=1):
                sched.step()

    def epoch_end(self, epoch: int) -> None:
        for sched, interval, frequency in self.schedulers:
            if interval == "epoch" and is_due(epoch, frequency, offset=1):
                sched.step()

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizers": [o.state_dict() for o in self.optimizers],
            "schedulers": [s.state_dict() for s, _, _ in self.schedulers],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for opt, st in zip(self.optimizers, state["optimizers"]):
            opt.load_state_dict(st)
        for (sched, _, _), st in zip(self.schedulers, state["schedulers"]):
            sched.load_state_dict(st)


def _scheduler_entry(item: Any) -> tuple[Any, str, int] | None:
    if isinstance(item, dict):
        sched = item.get("scheduler")
        if sched is None:
            return None
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            return None  # needs a monitored metric: replicas have none
        return sched, str(item.get("interval", "epoch")), int(item.get("frequency", 1))
    if isinstance(item, torch.optim.lr_scheduler.ReduceLROnPlateau):
        return None
    return item, "epoch", 1


def parse_optimizers(config: Any) -> OptimizerSet:
    """Optimizers and schedulers from any of the forms ``configure_optimizers`` may return."""
    optimizers: list[torch.optim.Optimizer] = []
    schedulers: list[tuple[Any, str, int]] = []
    if isinstance(config, torch.optim.Optimizer):
        optimizers = [config]
    elif isinstance(config, dict):
        optimizers = [config["optimizer"]]
        if config.get("lr_scheduler") is not None:
            entry = _scheduler_entry(config["lr_scheduler"])
            if entry:
                schedulers.append(entry)
    elif isinstance(config, (list, tuple)):
        if len(config) == 2 and isinstance(config[0], (list, tuple)):
            optimizers = list(config[0])
            schedulers = [e for e in (_scheduler_entry(s) for s in config[1]) if e]
        elif all(isinstance(c, dict) for c in config):
            for c in config:
                sub = parse_optimizers(c)
                optimizers += sub.optimizers
                schedulers += sub.schedulers
        else:
            optimizers = [c for c in config if isinstance(c, torch.optim.Optimizer)]
    if not optimizers:
        raise ValueError(f"configure_optimizers returned no optimizer the replicas can use: {type(config).__name__}")
    return OptimizerSet(optimizers, schedulers)
