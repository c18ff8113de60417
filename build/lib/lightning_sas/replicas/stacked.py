"""Fast replicas: all replicas' parameters stacked, one vmapped gradient and one optimizer step."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from lightning_sas.losses import PerSampleLoss, per_sample_loss
from lightning_sas.isolation import eval_mode
from lightning_sas.replicas.generic import ClipConfig, detached_copies, precision_context, replica_optimizers
from lightning_sas.replicas.optim import ELEMENTWISE_OPTIMIZERS, OptimizerSet

__all__ = ["StackedReplicas", "stacked_unsupported_reason", "stack_batches"]


class _PerSampleLossModule(nn.Module):
    """``forward(batch) = per-sample loss of batch under template`` so ``functional_call`` can
    swap in one replica's parameters."""

    def __init__(self, template: nn.Module, loss_fn: PerSampleLoss | None) -> None:
        super().__init__()
        self.template = template
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> Tensor:
        return per_sample_loss(self.template, batch, self.loss_fn)


def stack_batches(batches: Sequence[Any]) -> Any:
    """Stack ``R`` batches of the same structure leaf-wise along a new leading dimension."""
    first = batches[0]
    if isinstance(first, Tensor):
        return torch.stack(list(batches))
    if isinstance(first, Mapping):
        return type(first)({k: stack_batches([b[k] for b in batches]) for k in first})  # type: ignore[call-arg]
    if isinstance(first, (list, tuple)):
        items = [stack_batches([b[i] for b in batches]) for i in range(len(first))]
        return type(first)(items) if not hasattr(first, "_fields") else type(first)(*items)
    raise TypeError(f"cannot stack batch elements of type {type(first).__name__} for the fast path")


def stacked_unsupported_reason(template: nn.Module, loss_fn: PerSampleLoss | None) -> str | None:
    """Why the stacked (vmap) path cannot run this module, or None when it can."""
    if loss_fn is None and not callable(getattr(template, "sas_per_sample_loss", None)):
        return "no loss_fn (a training_step that calls self.log cannot be vmapped)"
    for module in template.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats and module.training:
            return f"{type(module).__name__} updates running statistics in training mode"
    return None


class StackedReplicas:
    """``n`` replicas as stacked parameters ``(n, *shape)``: every replica's mean per-sample loss
    comes from one ``vmap`` of ``functional_call`` (``randomness="different"`` for dropout), one
    ``backward`` of their sum gives every replica its own gradient (the replicas share no
    parameter), and one optimizer built by the module's own ``configure_optimizers`` on a copy
    whose parameters are the stacked tensors (so groups and schedulers are kept) updates all
    replicas at once. Valid for elementwise optimizers only; gradients are clipped per replica.

    Layout: the vmapped backward of a linear layer returns weight gradients in the transposed
    layout (strides ``(out*in, 1, out)``); a parameter stored contiguously would make autograd
    copy every gradient into its layout, and every optimizer op run on mismatched strides (a
    sixth of the step's time on a CPU). Before the first step the parameters (and their optimizer
    state) therefore take their gradients' layout, once; values and shapes are unchanged.
    """

    path = "fast"

    def __init__(self, template: Any, n: int, loss_fn: PerSampleLoss | None, clip: ClipConfig = None,
                 optimizer_state: list[dict[str, Any]] | None = None, trainer: Any = None) -> None:
        self.n = n
        self.clip = clip
        self._context = precision_context(trainer)
        functional_template, holder = detached_copies(template, 2, trainer)
        self.wrapper = _PerSampleLossModule(functional_template, loss_fn)
        self.wrapper.train(template.training)
        for name, param in list(holder.named_parameters()):
            owner_name, _, attr = name.rpartition(".")
            owner = holder.get_submodule(owner_name) if owner_name else holder
            stacked = param.detach().unsqueeze(0).repeat(n, *([1] * param.ndim)).clone()
            setattr(owner, attr, nn.Parameter(stacked, requires_grad=param.requires_grad))
        self.params: dict[str, nn.Parameter] = dict(holder.named_parameters())
        self.buffers = {f"template.{k}": v for k, v in functional_template.named_buffers()}
        self.optim: OptimizerSet = replica_optimizers(holder)
        for opt in self.optim.optimizers:
            if not isinstance(opt, ELEMENTWISE_OPTIMIZERS):
                raise TypeError(f"{type(opt).__name__} is not an elementwise optimizer")
        if optimizer_state is not None:
            for opt, st in zip(self.optim.optimizers, optimizer_state):
                opt.load_state_dict(_stack_optimizer_state(st, n))
        self._holder = holder
        self._layout_matched = False
        self._stack_cache: dict[tuple[int, tuple[int, ...]], tuple[Any, Any]] = {}

    def _named(self, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {f"template.{k}": v for k, v in params.items()}

    def step(self, batches: Sequence[Any], batch_idx: int, step_index: int) -> None:
        """One optimizer step of every replica, replica ``r`` on ``batches[r]``."""
        shared = all(b is batches[0] for b in batches)
        batch = batches[0] if shared else stack_batches(batches)
        # vmapped forward, ordinary autograd backward: the replicas are independent, so the
        # gradient of sum_r L_r with respect to replica r's slice is replica r's own gradient
        params = dict(self.params)

        def mean_loss(p: dict[str, Tensor], b: Any) -> Tensor:
            return functional_call(self.wrapper, {**self._named(p), **self.buffers}, (b,)).mean()

        step_losses = vmap(mean_loss, in_dims=(0, None if shared else 0), randomness="different")
        if not self._layout_matched:
            self._match_gradient_layout(lambda: step_losses(params, batch).sum())
        self.optim.zero_grad()
        with self._context():
            total = step_losses(params, batch).sum()
        total.backward()
        self._clip({k: p.grad for k, p in self.params.items() if p.grad is not None})
        self.optim.step(step_index)

    def _match_gradient_layout(self, total_loss: Callable[[], Tensor]) -> None:
        """Give each parameter (and its optimizer state) the memory layout of its gradient, learnt
        from one gradient of ``total_loss()`` that is then discarded (run under ``fork_rng``, so
        dropout draws are not consumed: a resumed engine relayouts the same way and continues
        bitwise). ``empty_like`` keeps a dense layout, so autograd later stores gradients as is."""
        names = [k for k, p in self.params.items() if p.requires_grad]
        device = next(iter(self.params.values())).device
        with torch.random.fork_rng(devices=[device] if device.type != "cpu" else [], device_type=device.type):
            with self._context():
                total = total_loss()
            grads = torch.autograd.grad(total, [self.params[k] for k in names], allow_unused=True)
        with torch.no_grad():
            for name, grad in zip(names, grads):
                param = self.params[name]
                if grad is not None and grad.stride() != param.stride():
                    param.data = torch.empty_like(grad, dtype=param.dtype).copy_(param)
        self._match_state_layout()
        self._layout_matched = True

    @torch.no_grad()
    def _match_state_layout(self) -> None:
        """Optimizer state tensors shaped like their parameter take the parameter's layout."""
        for opt in self.optim.optimizers:
            for param, per_param in opt.state.items():
                for key, value in list(per_param.items()):
                    if isinstance(value, Tensor) and value.shape == param.shape and value.stride() != param.stride():
                        per_param[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)

    def _clip(self, grads: dict[str, Tensor]) -> None:
        if self.clip is None:
            return
        value, algorithm = self.clip
        if algorithm == "value":
            for g in grads.values():
                g.clamp_(-value, value)
            return
        squares = torch.stack([g.reshape(self.n, -1).pow(2).sum(1) for g in grads.values()]).sum(0)
        coef = (value / (squares.sqrt() + 1e-6)).clamp(max=1.0)
        for g in grads.values():
            g.mul_(coef.view(-1, *([1] * (g.ndim - 1))).to(g.dtype))

    def epoch_end(self, epoch: int) -> None:
        self.optim.epoch_end(epoch)

    @torch.no_grad()
    def per_sample_losses(self, shared: Sequence[Any], swaps: Sequence[Sequence[Any]], rows: Sequence[int]) -> Tensor:
        """Per-sample losses of the replicas ``rows`` (global indices, in stacked order) in eval
        mode, as their :class:`~lightning_sas.data.SwapLayout` segments concatenated: the shared
        batches through one ``vmap`` over every replica, each perturbed replica's own swapped
        points through one ``vmap`` over replicas and their stacked batches, and the control's
        swapped points of every replica through one ``vmap`` over the batches."""
        params = {k: p.detach() for k, p in self.params.items()}

        def losses(p: dict[str, Tensor], b: Any) -> Tensor:
            return functional_call(self.wrapper, {**self._named(p), **self.buffers}, (b,))

        rows = list(rows)
        perturbed = [i for i, r in enumerate(rows) if r > 0]
        with eval_mode(self.wrapper), self._context():
            common = torch.cat([vmap(losses, in_dims=(0, None))(params, b).to(torch.float64) for b in shared], dim=1)
            own = None
            if perturbed and swaps:
                index = torch.as_tensor(perturbed, device=common.device)
                sub = {k: v.index_select(0, index) for k, v in params.items()}
                own = torch.cat([vmap(losses, in_dims=(0, 0))(sub, self._stacked(chunk, [rows[i] - 1 for i in perturbed]))
                                 .to(torch.float64) for chunk in swaps], dim=1)
            control = None
            if 0 in rows and swaps:
                p0 = {k: v[rows.index(0)] for k, v in params.items()}
                control = torch.cat([vmap(losses, in_dims=(None, 0))(p0, self._stacked(chunk, range(len(chunk))))
                                     .to(torch.float64) for chunk in swaps], dim=1).reshape(-1)
        parts = []
        for i, r in enumerate(rows):
            parts.append(common[i])
            if r == 0 and control is not None:
                parts.append(control)
            elif own is not None:
                parts.append(own[perturbed.index(i)])
        return torch.cat(parts)

    def _stacked(self, chunk: Sequence[Any], which: Sequence[int]) -> Any:
        """The batches ``chunk[j]`` for ``j`` in ``which``, stacked leaf-wise (cached: probe
        batches are fixed for the run)."""
        key = (id(chunk), tuple(which))
        cached = self._stack_cache.get(key)
        if cached is None or cached[0] is not chunk:
            cached = (chunk, stack_batches([chunk[j] for j in which]))
            self._stack_cache[key] = cached
        return cached[1]

    def parameters_of(self, r: int) -> dict[str, Tensor]:
        return {k: v.detach()[r] for k, v in self.params.items()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "params": {k: v.detach().cpu().clone(memory_format=torch.contiguous_format)  # sync-ok
                       for k, v in self.params.items()},
            "optim": self.optim.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for k, v in state["params"].items():
                self.params[k].copy_(v.to(self.params[k].device))
        self.optim.load_state_dict(state["optim"])
        self._match_state_layout()


def _stack_optimizer_state(state: dict[str, Any], n: int) -> dict[str, Any]:
    """The main optimizer's state repeated for ``n`` stacked replicas (tensor states gain a
    leading dimension; scalar ones like Adam's ``step`` are shared)."""
    state = copy.deepcopy(state)
    for per_param in state.get("state", {}).values():
        for key, value in list(per_param.items()):
            if isinstance(value, Tensor) and value.ndim > 0:
                per_param[key] = value.unsqueeze(0).repeat(n, *([1] * value.ndim))
    return state
