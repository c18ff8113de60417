"""The checks of ``SASReplicas``'s arguments: one clear error at construction, naming the
argument, before anything is allocated."""

from __future__ import annotations

from typing import Any

from lightning_sas.callbacks._common import resolve_callable
from lightning_sas.data.loaders import is_map_style
from lightning_sas.replicas.data_setup import is_index_list
from lightning_sas.validation import MAX_COUNT, check_bool, check_choice, check_float, check_int, check_memory, check_seed

__all__ = ["MAX_REPLICAS", "check_arguments"]

#: the most perturbed replicas a run may have (each a copy of the model and its optimizer)
MAX_REPLICAS = 1024


def check_arguments(replicas: Any, swaps: Any, fork_at: Any, sampler: Any, holdout_fraction: Any, num_train_probes: Any,
                    num_heldout_probes: Any, probe_every: Any, loss_fn: Any, path: Any, batch_size: Any, holdout: Any,
                    holdout_excluded: Any, checkpoint_replicas: Any, max_blocks: Any, probe_batch_size: Any,
                    pool_size: Any, seed: Any) -> dict[str, Any]:
    """The checked arguments by the attribute names of ``SASReplicas`` (``sampler`` as
    ``sampler_mode``, ``loss_fn`` resolved from an import path); a bad one raises ``ValueError``
    naming it, and so does a block summary over the memory bound."""
    if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= MAX_REPLICAS:
        raise ValueError(f"replicas must be an integer K >= 1 (perturbed replicas, at most {MAX_REPLICAS}: each is a "
                         f"copy of the model and its optimizer), got {replicas!r}")
    if not (isinstance(swaps, str) and swaps == "auto") and (isinstance(swaps, bool) or not isinstance(swaps, int)
                                                              or not 1 <= swaps <= MAX_COUNT):
        raise ValueError(f"swaps must be 'auto' or a positive integer m (samples swapped per replica), got {swaps!r}")
    if not ((isinstance(fork_at, str) and fork_at in ("start", "late_phase"))
            or (isinstance(fork_at, int) and not isinstance(fork_at, bool) and 0 <= fork_at <= 1 << 62)):
        raise ValueError(f"fork_at must be 'start', 'late_phase' or a non-negative step, got {fork_at!r}")
    sampler = check_choice("sampler", sampler, ("common", "independent"))
    path = check_choice("path", path, ("auto", "fast", "generic"))
    if holdout_fraction is not None:  # None: auto_holdout_size
        holdout_fraction = check_float("holdout_fraction", holdout_fraction, 0.0, 1.0, low_open=True, high_open=True)
    probe_every = check_int("probe_every", probe_every, 1)
    num_heldout_probes = check_int("num_heldout_probes", num_heldout_probes, 1)
    num_train_probes = check_int("num_train_probes", num_train_probes, 0)
    batch_size = check_int("batch_size", batch_size, 1, allow_none=True)
    pool_size = check_int("pool_size", pool_size, 2)
    probe_batch_size = check_int("probe_batch_size", probe_batch_size, 1)
    max_blocks = check_int("max_blocks", max_blocks, 4, even=True)
    if holdout_excluded is not None:
        raise ValueError(
            "holdout_excluded was removed: it excluded nothing (the held-out split was drawn from the data the main "
            "run trains on). For late forks train the main run on a Subset that leaves held-out samples out and pass "
            "them as holdout= (a Dataset, or the left-out indices into the Subset's dataset)."
        )
    if holdout is not None and not (is_map_style(holdout) or is_index_list(holdout)):
        raise ValueError(f"holdout must be None, a map-style Dataset or a 1-D sequence of integer indices, got "
                         f"{type(holdout).__name__}")
    checkpoint_replicas = check_bool("checkpoint_replicas", checkpoint_replicas)
    seed = check_seed("seed", seed)
    points = (replicas + 1) * (num_train_probes + num_heldout_probes)
    check_memory("SASReplicas", [("block summary", 3 * max_blocks * points * 8,
                                  f"max_blocks ({max_blocks}) x 3 x (replicas + 1) ({replicas + 1}) x "
                                  f"(num_train_probes + num_heldout_probes) ({num_train_probes + num_heldout_probes}) "
                                  "x 8 bytes")],
                 "lower max_blocks, replicas or the probe counts")
    return {
        "replicas": replicas, "swaps": swaps, "fork_at": fork_at, "sampler_mode": sampler,
        "holdout_fraction": holdout_fraction, "num_train_probes": num_train_probes,
        "num_heldout_probes": num_heldout_probes, "probe_every": probe_every,
        "loss_fn": resolve_callable(loss_fn, "loss_fn"), "path": path, "batch_size": batch_size, "holdout": holdout,
        "checkpoint_replicas": checkpoint_replicas, "max_blocks": max_blocks, "probe_batch_size": probe_batch_size,
        "pool_size": pool_size, "seed": seed,
    }
