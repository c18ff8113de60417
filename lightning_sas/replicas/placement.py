"""Replicas under DDP: which rank runs which replica, and one checkpoint state for all of them.

Rank ``r`` of ``W`` runs the global replicas ``j`` with ``j % W == r`` (the control ``j = 0`` on
rank 0). At checkpoint time each rank's engine state is gathered onto rank 0 and merged into the
one-process format (stacked parameters and optimizer tensors in global replica order, shared
scalars such as Adam's ``step`` kept once); on load each rank selects its own rows again.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "replica_rows",
    "rank_seed",
    "distributed_ready",
    "NoLocalReplicas",
    "merge_engine_states",
    "select_engine_state",
    "to_cpu",
]


def replica_rows(num_replicas: int, world_size: int, rank: int) -> list[int]:
    """Global indices of the replicas that ``rank`` runs: round-robin, ``j % world_size == rank``
    (rank 0 holds the control ``j = 0``; ranks ``>= num_replicas`` hold none)."""
    return list(range(rank, num_replicas, world_size))


def rank_seed(seed: int, rank: int) -> int:
    """Seed of rank ``rank``'s private replica stream, a seeded function of ``(seed, rank)``."""
    return int(np.random.SeedSequence([abs(int(seed)), int(rank)]).generate_state(1)[0])


def distributed_ready() -> bool:
    return dist.is_available() and dist.is_initialized()


class NoLocalReplicas:
    """The engine of a rank with no replica (more ranks than replicas): steps nothing and adds
    zero-weight rows, so the metric's cursor and the collectives stay in step with the others."""

    n = 0

    def __init__(self, path: str, device: torch.device) -> None:
        self.path = path
        self._empty = torch.zeros(0, dtype=torch.float64, device=device)

    def step(self, batches: Sequence[Any], batch_idx: int, step_index: int) -> None:
        return None

    def epoch_end(self, epoch: int) -> None:
        return None

    def per_sample_losses(self, shared: Sequence[Any], swaps: Sequence[Sequence[Any]], rows: Sequence[int]) -> Tensor:
        return self._empty

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


def _rows_of(value: Any, index: Tensor) -> Any:
    """Optimizer state of stacked parameters: tensors with a replica dimension are indexed,
    shared scalars (Adam's ``step``) kept (the inverse of ``_stack_optimizer_state``)."""
    if isinstance(value, Tensor) and value.ndim > 0:
        return value.index_select(0, index.to(value.device))
    return value


def _map_optimizer_states(optim: dict[str, Any], fn: Any) -> dict[str, Any]:
    """``optim`` (an ``OptimizerSet`` state) with ``fn(optimizer, param_id, key, value)`` applied
    to every per-parameter optimizer state entry."""
    out: dict[str, Any] = {"optimizers": [], "schedulers": optim["schedulers"]}
    for o, sd in enumerate(optim["optimizers"]):
        states = {pid: {k: fn(o, pid, k, v) for k, v in per.items()} for pid, per in sd["state"].items()}
        out["optimizers"].append({**sd, "state": states})
    return out


def merge_engine_states(parts: list[tuple[list[int], Any]], num_replicas: int) -> dict[str, Any] | None:
    """One engine state of all ``num_replicas`` replicas (the one-process format) from the ranks'
    ``(rows, state)``; None when some rank has no state."""
    owner: dict[int, tuple[int, int]] = {}
    for p, (rows, st) in enumerate(parts):
        if rows and st is None:
            return None
        for i, j in enumerate(rows):
            owner[j] = (p, i)
    order = [owner[j] for j in range(num_replicas)]
    first = parts[order[0][0]][1]
    if "modules" in first:  # generic: one entry per replica
        return {key: [parts[p][1][key][i] for p, i in order] for key in ("modules", "optim")}

    def stack(get: Any) -> Any:
        values = [get(parts[p][1]) for p, _ in order]
        if not (isinstance(values[0], Tensor) and values[0].ndim > 0):
            return values[0]
        return torch.stack([v[i] for v, (_, i) in zip(values, order)])

    params = {k: stack(lambda st, k=k: st["params"][k]) for k in first["params"]}
    optim = _map_optimizer_states(
        first["optim"], lambda o, pid, k, v: stack(lambda st: st["optim"]["optimizers"][o]["state"][pid][k]))
    return {"params": params, "optim": optim}


def select_engine_state(state: dict[str, Any], rows: Sequence[int]) -> dict[str, Any]:
    """The replicas ``rows`` (global indices) of a full engine state."""
    if not rows:
        return {}
    if "modules" in state:
        return {key: [state[key][j] for j in rows] for key in ("modules", "optim")}
    index = torch.as_tensor(list(rows), dtype=torch.long)
    return {
        "params": {k: _rows_of(v, index) for k, v in state["params"].items()},
        "optim": _map_optimizer_states(state["optim"], lambda o, pid, k, v: _rows_of(v, index)),
    }


def to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor on the CPU (objects gathered across ranks are pickled)."""
    if isinstance(obj, Tensor):
        return obj.detach().cpu()  # sync-ok: checkpoint time
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj
