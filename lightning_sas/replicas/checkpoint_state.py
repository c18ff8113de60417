"""The replicas' checkpoint state: packed on save, put back on load (tensors and primitives only).

One format whatever the number of ranks: the state of all ``K + 1`` replicas in global order, the
time averages summed over ranks, and each rank's private random stream. Saving under DDP is a
collective (one ``gather_object`` onto rank 0); on load every rank reads the full state and keeps
its own replicas' rows, so a run may resume on another number of ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from lightning_sas.callbacks._common import warn_once
from lightning_sas.replicas.placement import distributed_ready, merge_engine_states, select_engine_state, to_cpu
from lightning_sas.replicas.rng import PrivateRNG

__all__ = ["ReplicaPlacement", "pack_state", "restore_state", "tensor_bytes", "without_replica_weights"]


@dataclass(frozen=True)
class ReplicaPlacement:
    """Where this process stands: ``world`` ranks, this ``rank``, the global replicas ``rows`` it
    runs, of ``num_replicas`` (``K + 1``) in all."""

    world: int
    rank: int
    rows: list[int]
    num_replicas: int


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a nest of dicts, lists and tuples."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def pack_state(header: dict[str, Any], placement: ReplicaPlacement, metric: Any, engine: Any, rng: PrivateRNG,
               checkpoint_replicas: bool, reduced: list[torch.Tensor] | None = None) -> tuple[dict[str, Any], int | None]:
    """``(state, engine bytes)``: ``header`` (the callback's counters and configuration, with
    ``"engine": None``) completed with the time averages (``"metric"``) and, when
    ``checkpoint_replicas``, the replicas (``"engine"``; its size in bytes, else None).

    Under DDP a collective (call on every rank): rank 0's state holds every replica and the time
    averages summed over ranks (``reduced``: that sum when the caller made it already; then one
    ``gather_object`` is the only collective here), plus every rank's stream (``"rng_ranks"``)."""
    distributed = placement.world > 1 and distributed_ready()
    state = dict(header)
    if metric is not None:
        if distributed and reduced:
            with metric.summed_states(reduced):
                state["metric"] = metric.checkpoint_state()
        elif distributed:
            with metric.synced():
                state["metric"] = metric.checkpoint_state()
        else:
            state["metric"] = metric.checkpoint_state()
    local = engine.state_dict() if engine is not None and checkpoint_replicas else None
    if placement.world > 1:
        state["world_size"] = placement.world
        if not distributed:  # outside the process group only this rank's replicas are here
            local = None
    if distributed:
        gathered: list[Any] | None = [None] * placement.world if placement.rank == 0 else None
        dist.gather_object((list(placement.rows), to_cpu(local), rng.state_dict()), gathered, dst=0)
        local = None
        if gathered is not None:
            state["rng_ranks"] = [g[2] for g in gathered]
            if engine is not None and checkpoint_replicas:
                local = merge_engine_states([(g[0], g[1]) for g in gathered], placement.num_replicas)
    if local is None:
        return state, None
    state["engine"] = local
    return state, tensor_bytes(local)


def restore_state(owner: object, state: dict[str, Any], placement: ReplicaPlacement, metric: Any, engine: Any,
                  rng: PrivateRNG, sampler: Any) -> tuple[int, bool]:
    """Put a checkpoint's state back into ``metric``, ``engine``, ``rng`` and ``sampler``, this
    rank's rows only; returns ``(steps_taken, enabled)``. Warnings are keyed by ``owner``."""
    world, rank = placement.world, placement.rank
    saved_world = int(state.get("world_size", 1))
    rng_ranks = state.get("rng_ranks")
    if saved_world == world and rng_ranks is not None and rank < len(rng_ranks):
        rng.load_state_dict(rng_ranks[rank])
    elif rank == 0:
        rng.load_state_dict(state["rng"])
    if saved_world != world and state.get("engine") is not None:
        warn_once(owner, "world", f"SASReplicas: the checkpoint was saved on {saved_world} rank(s) and resumes on "
                  f"{world}; the replicas, their optimizers and the time averages resume exactly, the "
                  "replicas' private random streams (dropout) restart per rank.")
    if state.get("sampler") is not None and sampler is not None:
        sampler.load_state_dict(state["sampler"])
    if metric is not None and "metric" in state:
        if not metric.load_checkpoint_state(state["metric"]):
            warn_once(owner, "shape", "SASReplicas: the checkpoint's probe set differs in size; the estimate restarts.")
        elif world > 1:
            metric.keep_rows(placement.rows)
    if state.get("engine") is not None and engine is not None:
        engine.load_state_dict(state["engine"] if world == 1 else select_engine_state(state["engine"], placement.rows))
    return int(state.get("steps_taken", 0)), bool(state.get("enabled", True))


def without_replica_weights(owner: object, late_fork_allowed: bool) -> str | None:
    """A checkpoint saved with ``checkpoint_replicas=False`` after the fork: None when the
    replicas may restart from the current weights as a late fork (``holdout=`` given: the main
    run never trained on the held-out samples), else why the estimate stays off. Warns once
    (per ``owner``) either way."""
    if late_fork_allowed:
        warn_once(owner, "noreplicas", "SASReplicas: the checkpoint has no replica weights (checkpoint_replicas=False); "
                  "the replicas restart from the current weights as a late fork, with new time averages.")
        return None
    reason = ("the checkpoint has no replica weights (checkpoint_replicas=False) and replicas forked again "
              "from the main model would have seen the held-out split; resume from a checkpoint with "
              "checkpoint_replicas=True, or train the main run without held-out samples and pass them "
              "as holdout= to restart them as a late fork")
    warn_once(owner, "noreplicas", f"SASReplicas: {reason}. The SAS estimate is off for this run.")
    return reason
