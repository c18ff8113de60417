"""The summary keys of the in-run SAS estimate, and why a key has no value at a flush."""

from __future__ import annotations

__all__ = ["INTERVAL_STATISTICS", "RUN_KEYS", "SAS_KEYS", "unavailable_reasons"]

#: statistics of the replicas reported with a 95 % interval (``<name>_lower``, ``<name>_upper``)
INTERVAL_STATISTICS = ("sas_max", "sas_mean", "sas_replaced", "stability_gap", "stability_gap_removed",
                       "stability_gap_added", "control_heldout_gap")

#: summary keys added by the replicas
SAS_KEYS = (
    "sas_max", "sas_max_se", "sas_mean", "sas_mean_se", "sas_replaced", "sas_replaced_se",
    "stability_gap", "stability_gap_se", "stability_gap_removed", "stability_gap_removed_se",
    "stability_gap_added", "stability_gap_added_se", "sas_max_null", "sas_mean_null", "sas_replaced_null",
    "sas_max_resolved", "sas_mean_resolved", "sas_replaced_resolved", "stability_gap_resolved",
    "stability_gap_removed_resolved", "stability_gap_added_resolved", "swaps",
    "sas_resolved", "sas_converged", "paper_coefficient", "paper_coefficient_se",
    "mean_pairwise_abs_difference", "mean_pairwise_abs_difference_se", "replicas", "replica_path",
    "replica_sampler", "fork_step", "steps_since_fork", "replica_checkpoint_bytes",
    "sas_critical_t", "sas_mean_critical_t", "stability_gap_max_share", "control_heldout_gap", "control_heldout_gap_se",
    "control_train_loss", "control_heldout_loss",
) + tuple(f"{name}_{end}" for name in INTERVAL_STATISTICS for end in ("lower", "upper"))

#: keys that describe the run (set once the replicas are forked), not the estimate
RUN_KEYS = ("replicas", "swaps", "replica_path", "replica_sampler", "fork_step", "steps_since_fork",
            "replica_checkpoint_bytes")


def unavailable_reasons(frozen_reason: str | None, checkpoint_replicas: bool, has_estimate: bool, window_start: int,
                        probe_every: int) -> dict[str, str]:
    """``{key: why it has no value}`` at a flush of forked replicas: every key, when the estimate
    stopped (``frozen_reason``); the checkpoint size before a checkpoint; the jackknife SE of
    the paper's coefficient; and, without a replica probe inside the window (``has_estimate``
    false), every estimate key."""
    reasons: dict[str, str] = {}
    if frozen_reason:
        reasons.update(dict.fromkeys(SAS_KEYS, f"frozen: {frozen_reason}"))
    reasons["replica_checkpoint_bytes"] = "no checkpoint saved yet" if checkpoint_replicas else "checkpoint_replicas=False"
    reasons["paper_coefficient_se"] = "the jackknife over runs needs K >= 2 perturbed replicas"
    if not has_estimate:  # no replica probe inside the window yet
        reasons.update({key: f"no replica probe evaluation inside the statistics window yet (it starts at step "
                             f"{window_start}; probe_every={probe_every}); the probe of the untrained model at step 0 "
                             "never counts"
                        for key in SAS_KEYS if key not in RUN_KEYS})
    return reasons
