"""Which engine runs a rank's replicas, tried before the run relies on it.

``path="fast"`` stacks the replicas (:class:`~lightning_sas.replicas.stacked.StackedReplicas`),
``"generic"`` deep-copies the module (:class:`~lightning_sas.replicas.generic.GenericReplicas`),
``"auto"`` tries fast, then generic. Each candidate takes one dry-run step and probe evaluation
(its private random stream restored after); a module no path can run is one ``ValueError`` that
names the hook that failed and the way out.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Sequence

import numpy as np
import torch

from lightning_sas._compat import lightning_module
from lightning_sas.callbacks._common import sharded_parameters
from lightning_sas.replicas.generic import GenericReplicas
from lightning_sas.replicas.placement import NoLocalReplicas
from lightning_sas.replicas.rng import PrivateRNG
from lightning_sas.replicas.stacked import StackedReplicas, stacked_unsupported_reason
from lightning_sas.replicas.trainer_view import WAYS_OUT, ReplicaTrainerError

__all__ = ["DryRun", "choose_engine", "gradient_clipping", "refuse_sharded_parameters"]


class DryRun:
    """One replica step on a fresh batch of the common sampler and one probe evaluation, with
    the replicas' private stream restored after (``make_batches(positions, rows, device)`` builds
    the batches of global replicas ``rows``)."""

    def __init__(self, make_batches: Callable[[list[np.ndarray], Sequence[int], torch.device], list[Any]],
                 positions: list[np.ndarray], rows: Sequence[int], probe_batches: list[Any],
                 swap_batches: list[list[Any]], rng: PrivateRNG, device: torch.device) -> None:
        self.make_batches = make_batches
        self.positions = positions
        self.rows = list(rows)
        self.probe_batches = probe_batches
        self.swap_batches = swap_batches
        self.rng = rng
        self.device = device

    def __call__(self, engine: Any) -> None:
        rows = self.rows[: engine.n] or list(range(engine.n))  # a rank without replicas tries the control's
        batches = self.make_batches(self.positions, rows, self.device)
        saved = self.rng.state_dict()
        try:
            with self.rng.active(self.device):
                engine.step(batches, 0, 0)
                engine.per_sample_losses(self.probe_batches[:1], self.swap_batches[:1], rows)
        finally:
            self.rng.load_state_dict(saved)


def refuse_sharded_parameters(trainer: Any, pl_module: Any) -> None:
    """A replica is a full copy of the module: sharded parameters (FSDP) cannot be copied by one rank."""
    sharding = sharded_parameters(trainer, pl_module)
    if sharding is not None:
        raise ValueError(
            f"SASReplicas cannot run on sharded parameters ({sharding}): a replica is a full copy of the module "
            "trained by one rank, and each rank here holds only a shard. Train with DDP (or one device) for the "
            "in-run SAS estimate, or run the multi-run protocol (lightning-sas perturb), which trains each "
            "neighbouring run with your own strategy; replicas=0 keeps the rest of SASMonitor under FSDP."
        )


def gradient_clipping(trainer: Any) -> tuple[float, str] | None:
    """The trainer's ``(gradient_clip_val, algorithm)``, or None without clipping."""
    value = getattr(trainer, "gradient_clip_val", None)
    if not value:
        return None
    algorithm = getattr(trainer, "gradient_clip_algorithm", None) or "norm"
    return float(value), str(getattr(algorithm, "value", algorithm))


def choose_engine(trainer: Any, pl_module: Any, n: int, path: str, loss_fn: Any, step: int, dry_run: DryRun,
                  device: torch.device) -> tuple[Any, str | None]:
    """``(engine, fallback_reason)`` for ``n`` local replicas forked from ``pl_module`` now (its
    optimizer state too when ``step > 0``). ``fallback_reason``: why ``"auto"`` took the generic
    path (None when it did not). Raises ``ValueError`` when the requested path cannot run it."""
    clip = gradient_clipping(trainer)
    opt_state = [copy.deepcopy(o.state_dict()) for o in trainer.optimizers] if step > 0 else None
    # manual optimization: the module's own training_step steps its optimizers (a per-sample
    # loss there is for the probes only; two optimizers cannot train on one mean loss)
    manual = not pl_module.automatic_optimization
    use_step = manual or (loss_fn is None and not callable(getattr(pl_module, "sas_per_sample_loss", None)))
    reason = ("manual optimization (the module's own training_step steps its optimizers)" if manual
              else stacked_unsupported_reason(pl_module, loss_fn))

    def generic_refusal() -> ValueError | None:
        return _generic_refusal(trainer, pl_module, loss_fn, use_step, clip, opt_state, dry_run)

    if n == 0:  # more ranks than replicas: this rank only keeps the collectives in step
        if path == "fast" and reason is not None:
            raise ValueError(_fast_refusal(reason, generic_refusal()))
        return NoLocalReplicas("fast" if path in ("auto", "fast") and reason is None else "generic", device), None
    engine: Any = None
    if path in ("auto", "fast") and reason is None:
        try:
            engine = StackedReplicas(pl_module, n, loss_fn, clip, opt_state, trainer=trainer)
            dry_run(engine)
            engine = StackedReplicas(pl_module, n, loss_fn, clip, opt_state, trainer=trainer)
        except Exception as err:
            reason = f"{type(err).__name__}: {err}"
            engine = None
    if engine is not None:
        return engine, None
    if path == "fast":
        raise ValueError(_fast_refusal(reason, generic_refusal()))
    refusal = generic_refusal()
    if refusal is not None:
        raise refusal
    engine = GenericReplicas(pl_module, n, loss_fn, use_step, clip, opt_state, trainer=trainer)
    if path == "auto" and reason:
        rank_zero = lightning_module("utilities.rank_zero", trainer)
        rank_zero.rank_zero_info(f"lightning-sas: replicas use the generic path because {reason}.")
    return engine, reason


def _generic_refusal(trainer: Any, pl_module: Any, loss_fn: Any, use_step: bool, clip: Any, opt_state: Any,
                     dry_run: DryRun) -> ValueError | None:
    """Build one generic replica and dry-run a step: None when it works, else the error to
    raise, naming the hook that failed and the one way out for it."""
    stage = "configure_optimizers"
    try:
        probe = GenericReplicas(pl_module, 1, loss_fn, use_step, clip, opt_state, trainer=trainer)
        stage = "step"
        dry_run(probe)
    except ReplicaTrainerError as err:
        return ValueError(str(err))
    except Exception as err:
        failure = f"({type(err).__name__}: {err})"
        if stage == "configure_optimizers":
            message = (f"SASReplicas: the replicas' configure_optimizers failed at fork time {failure}. "
                       f"{WAYS_OUT['configure_optimizers']}")
        elif use_step and pl_module.automatic_optimization:
            message = (f"SASReplicas: a replica's training_step failed at fork time {failure}. A replica is a deep "
                       f"copy of the module with a read-only view of the trainer. {WAYS_OUT['training_step']}")
        elif use_step:
            message = (f"SASReplicas: a replica's manual-optimization training_step failed at fork time {failure}. "
                       f"{WAYS_OUT['manual training_step']}")
        else:
            message = (f"SASReplicas: a replica step on the per-sample loss failed at fork time {failure}. "
                       f"{WAYS_OUT['per-sample loss']}")
        error = ValueError(message)
        error.__cause__ = err
        return error
    return None


def _fast_refusal(reason: str | None, generic: ValueError | None) -> str:
    """Why ``path='fast'`` cannot run this module, with a way out that was tried: the generic
    path when a generic replica runs it (``generic`` is None: its dry run worked), else what the
    generic path needs."""
    if generic is None:
        way = "Use path='generic' (a dry run of a generic replica on this module worked)."
    else:
        way = f"The generic path cannot run it as it is either: {generic}"
    return f"SASReplicas(path='fast') cannot run this module: {reason}. {way}"
