"""Generic replicas: deep copies of the LightningModule stepping with its own code."""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
from torch import Tensor

from lightning_sas.losses import PerSampleLoss, per_sample_loss
from lightning_sas.replicas.optim import OptimizerSet, parse_optimizers

__all__ = ["GenericReplicas", "ClipConfig"]

ClipConfig = tuple[float, str] | None


def _silence_logging(module: Any) -> None:
    """Replicas have no trainer: their ``self.log`` calls do nothing."""

    def noop(*args: Any, **kwargs: Any) -> None:
        return None

    module.log = noop
    module.log_dict = noop


def clip_gradients(params: Sequence[Tensor], clip: ClipConfig) -> None:
    """Clip like Lightning's ``gradient_clip_val``/``gradient_clip_algorithm``, for one replica."""
    if clip is None:
        return
    value, algorithm = clip
    grads = [p for p in params if p.grad is not None]
    if algorithm == "value":
        torch.nn.utils.clip_grad_value_(grads, value)
    else:
        torch.nn.utils.clip_grad_norm_(grads, value)


class GenericReplicas:
    """``n`` deep copies of a LightningModule, each stepping with its own ``training_step`` (or
    ``loss_fn`` in manual optimization) and ``configure_optimizers`` (schedulers included).

    The copies never touch the trainer: their logging is silenced, and ``training_step`` runs with
    the module's train mode. A ``training_step`` that needs ``self.trainer`` fails on a copy: the
    caller dry-runs one step at fork time and reports it.
    """

    path = "generic"

    def __init__(self, template: Any, n: int, loss_fn: PerSampleLoss | None, use_training_step: bool,
                 clip: ClipConfig = None, optimizer_state: list[dict[str, Any]] | None = None) -> None:
        self.n = n
        self.loss_fn = loss_fn
        self.use_training_step = use_training_step
        self.clip = clip
        trainer_ref = getattr(template, "_trainer", None)
        try:
            template._trainer = None  # never deep-copy the trainer
            self.modules = [copy.deepcopy(template) for _ in range(n)]
        finally:
            template._trainer = trainer_ref
        self.optim: list[OptimizerSet] = []
        for module in self.modules:
            _silence_logging(module)
            module.train(template.training)
            opt = parse_optimizers(module.configure_optimizers())
            if optimizer_state is not None:
                for o, st in zip(opt.optimizers, optimizer_state):
                    o.load_state_dict(copy.deepcopy(st))
            self.optim.append(opt)

    def _loss(self, module: Any, batch: Any, batch_idx: int) -> Tensor:
        if self.use_training_step:
            loss = module.training_step(batch, batch_idx)
            if isinstance(loss, dict):
                loss = loss.get("loss")
            if not isinstance(loss, Tensor):
                raise RuntimeError("training_step of a replica returned no loss tensor")
            return loss
        return per_sample_loss(module, batch, self.loss_fn).mean()

    def step(self, batches: Sequence[Any], batch_idx: int, step_index: int) -> None:
        """One optimizer step of every replica, replica ``r`` on ``batches[r]``."""
        for module, opt, batch in zip(self.modules, self.optim, batches):
            opt.zero_grad()
            loss = self._loss(module, batch, batch_idx)
            loss.backward()
            clip_gradients(list(module.parameters()), self.clip)
            opt.step(step_index)

    def epoch_end(self, epoch: int) -> None:
        for opt in self.optim:
            opt.epoch_end(epoch)

    @torch.no_grad()
    def per_sample_losses(self, probe_batches: Sequence[Any]) -> Tensor:
        """``(n, P)`` losses of every replica on the probe batches, in eval mode."""
        rows = []
        for module in self.modules:
            modes = [m.training for m in module.modules()]
            module.eval()
            try:
                rows.append(torch.cat([per_sample_loss(module, b, self.loss_fn).detach().to(torch.float64) for b in probe_batches]))
            finally:
                for m, mode in zip(module.modules(), modes):
                    m.training = mode
        return torch.stack(rows)

    def parameters_of(self, r: int) -> dict[str, Tensor]:
        return {k: v.detach() for k, v in self.modules[r].named_parameters()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "modules": [{k: v.detach().cpu().clone() for k, v in m.state_dict().items()} for m in self.modules],  # sync-ok
            "optim": [o.state_dict() for o in self.optim],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for module, st in zip(self.modules, state["modules"]):
            module.load_state_dict(st)
        for opt, st in zip(self.optim, state["optim"]):
            opt.load_state_dict(st)
