"""Generic replicas: deep copies of the LightningModule stepping with its own code."""

from __future__ import annotations

import copy
from contextlib import nullcontext
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from lightning_sas.isolation import eval_mode
from lightning_sas.losses import PerSampleLoss, per_sample_loss
from lightning_sas.replicas.optim import OptimizerSet, parse_optimizers
from lightning_sas.replicas.trainer_view import attach_view

__all__ = ["GenericReplicas", "ClipConfig", "clip_gradients", "detached_copies", "replica_optimizers",
           "takes_batch_idx", "precision_context"]

ClipConfig = tuple[float, str] | None


def detached_copies(template: torch.nn.Module, n: int, trainer: Any = None) -> list[torch.nn.Module]:
    """``n`` deep copies of ``template`` that share (never copy) the trainer it references; each
    copy then sees a read-only view of the trainer and logs nothing (:func:`attach_view`)."""
    memo_roots = [trainer] + [getattr(m, "_trainer", None) for m in template.modules()]
    copies = []
    for _ in range(n):
        memo = {id(obj): obj for obj in memo_roots if obj is not None}
        module = copy.deepcopy(template, memo)
        attach_view(module, trainer)
        copies.append(module)
    return copies


def replica_optimizers(module: Any) -> OptimizerSet:
    """The replica's optimizers: the module's ``sas_configure_optimizers()`` when it defines one
    (to build them without the trainer), else its own ``configure_optimizers()``; the replica's
    trainer view then serves them (``self.optimizers()``, ``self.lr_schedulers()``)."""
    configure = getattr(module, "sas_configure_optimizers", None)
    optim = parse_optimizers(configure() if callable(configure) else module.configure_optimizers())
    view = getattr(module, "_trainer", None)
    if view is not None and hasattr(view, "set_optimizers"):
        view.set_optimizers(optim.optimizers, optim.schedulers)
    return optim


def takes_batch_idx(module: Any) -> bool:
    """Does ``module.training_step`` take ``batch_idx`` (Lightning allows ``training_step(self, batch)``)?"""
    try:
        from lightning_sas._compat import lightning_module

        signature_utils = lightning_module("utilities.signature_utils", module)
        return bool(signature_utils.is_param_in_hook_signature(module.training_step, "batch_idx", min_args=2))
    except Exception:  # pragma: no cover - signature not inspectable: pass it, as Lightning would
        return True


def precision_context(trainer: Any) -> Callable[[], Any]:
    """The precision plugin's ``train_step_context`` (autocast under mixed precision), so replicas
    compute in the main run's precision; a no-op without a trainer."""
    plugin = getattr(trainer, "precision_plugin", None)
    return plugin.train_step_context if plugin is not None else nullcontext


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
    """``n`` deep copies of a LightningModule, each stepping with its own code.

    * automatic optimization: the module's ``training_step`` (or the mean of ``loss_fn`` when
      given) inside a closure, ``optimizer.step(closure)`` (so closure optimizers such as LBFGS
      work), gradients clipped per replica as the trainer clips, step-interval schedulers stepped;
    * manual optimization: the module's own ``training_step``, which steps the replica's
      optimizers itself through ``self.optimizers()`` and ``self.manual_backward`` (or, with
      ``loss_fn``, the mean per-sample loss stepped by every optimizer).

    Each copy sees a read-only view of the real trainer
    (:class:`~lightning_sas.replicas.trainer_view.ReplicaTrainerView`): ``self.trainer.max_steps``,
    ``estimated_stepping_batches``, ``current_epoch``, ... read the run's values, ``self.log`` does
    nothing. The caller dry-runs one step at fork time and reports what a replica cannot do.
    """

    path = "generic"

    def __init__(self, template: Any, n: int, loss_fn: PerSampleLoss | None, use_training_step: bool,
                 clip: ClipConfig = None, optimizer_state: list[dict[str, Any]] | None = None,
                 trainer: Any = None) -> None:
        self.n = n
        self.loss_fn = loss_fn
        self.use_training_step = use_training_step
        self.automatic = bool(getattr(template, "automatic_optimization", True))
        self.clip = clip
        self._context = precision_context(trainer)
        self.modules = detached_copies(template, n, trainer)  # each submodule keeps its own mode
        self._pass_batch_idx = takes_batch_idx(template)
        self._template_modules = list(template.modules())
        self._template_params = list(template.parameters())
        self.optim: list[OptimizerSet] = []
        for module in self.modules:
            opt = replica_optimizers(module)
            if optimizer_state is not None:
                for o, st in zip(opt.optimizers, optimizer_state):
                    o.load_state_dict(copy.deepcopy(st))
            self.optim.append(opt)

    def _training_step(self, module: Any, batch: Any, batch_idx: int) -> Any:
        out = module.training_step(batch, batch_idx) if self._pass_batch_idx else module.training_step(batch)
        return out.get("loss") if isinstance(out, dict) else out

    def _loss(self, module: Any, batch: Any, batch_idx: int) -> Tensor | None:
        if self.use_training_step:
            loss = self._training_step(module, batch, batch_idx)
            if loss is not None and not isinstance(loss, Tensor):
                raise RuntimeError(f"training_step of a replica returned {type(loss).__name__}, not a loss tensor")
            return loss
        return per_sample_loss(module, batch, self.loss_fn).mean()

    def follow(self) -> None:
        """Give every replica the main module's current train/eval mode of each submodule and
        ``requires_grad`` of each parameter: a model that keeps a part in eval mode, or a
        fine-tuning callback that freezes and unfreezes layers, trains its replicas alike."""
        for module in self.modules:
            for own, main in zip(module.modules(), self._template_modules):
                own.training = main.training
            for own_p, main_p in zip(module.parameters(), self._template_params):
                if own_p.requires_grad != main_p.requires_grad:
                    own_p.requires_grad_(main_p.requires_grad)

    def step(self, batches: Sequence[Any], batch_idx: int, step_index: int) -> None:
        """One step of every replica, replica ``r`` on ``batches[r]``."""
        self.follow()
        for module, opt, batch in zip(self.modules, self.optim, batches):
            with self._context():
                if not self.automatic and self.use_training_step:
                    self._training_step(module, batch, batch_idx)  # steps its own optimizers
                    continue
                self._optimizer_step(module, opt, batch, batch_idx, step_index)

    def _optimizer_step(self, module: Any, opt: OptimizerSet, batch: Any, batch_idx: int, step_index: int) -> None:
        computed: list[Tensor | None] = []

        def closure() -> Tensor | None:
            opt.zero_grad()
            with torch.enable_grad():
                loss = self._loss(module, batch, batch_idx)
            computed.append(loss)
            if loss is None:  # training_step returned None: the step is skipped, as in Lightning
                return None
            if not loss.requires_grad:  # nothing trainable now (every layer frozen): no update
                computed[-1] = None
                return None
            loss.backward()
            clip_gradients(list(module.parameters()), self.clip)
            return loss

        if isinstance(opt.optimizers[0], torch.optim.LBFGS):  # evaluates the closure itself
            opt.optimizers[0].step(closure)
            if computed and computed[-1] is None:
                return
        else:
            closure()
            if computed[-1] is None:
                return
            for o in opt.optimizers:
                o.step()
        opt.step_schedulers(step_index)

    def epoch_end(self, epoch: int) -> None:
        for opt in self.optim:
            opt.epoch_end(epoch)

    @torch.no_grad()
    def per_sample_losses(self, shared: Sequence[Any], swaps: Sequence[Sequence[Any]], rows: Sequence[int]) -> Tensor:
        """Per-sample losses of the replicas ``rows`` (their global indices, one per module) in
        eval mode, as their segments of :class:`~lightning_sas.data.SwapLayout` concatenated: the
        ``shared`` probe batches, then a perturbed replica ``r``'s own swapped points
        (``swaps[c][r - 1]`` for each chunk ``c``) or, for the control (``r = 0``), every
        replica's swapped points in replica order."""
        parts = []
        for module, r in zip(self.modules, rows):
            with eval_mode(module), self._context():
                def losses(batches: Sequence[Any]) -> Tensor:
                    return torch.cat([per_sample_loss(module, b, self.loss_fn).detach().to(torch.float64) for b in batches])

                parts.append(losses(shared))
                if r == 0:
                    parts.extend(losses([chunk[k] for chunk in swaps]) for k in range(len(swaps[0]) if swaps else 0))
                else:
                    parts.append(losses([chunk[r - 1] for chunk in swaps]))
        return torch.cat(parts)

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
