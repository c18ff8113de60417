"""Logged tag names and the TensorBoard custom-scalars layout built from them (one place)."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["SCALAR_TAGS", "MARGIN_CHARTS", "tag_for", "scalars_from_summary", "custom_scalars_layout"]

#: summary key -> (dashboard group, tag). Every tag starts with "sas/".
SCALAR_TAGS: dict[str, tuple[str, str]] = {
    # loss dynamics
    "loss_mean": ("Loss dynamics", "sas/loss/time_average"),
    "loss_se": ("Loss dynamics", "sas/loss/time_average_se"),
    "loss_std": ("Loss dynamics", "sas/loss/amplitude"),
    "late_phase_start": ("Loss dynamics", "sas/loss/late_phase_start"),
    "late_phase_found": ("Loss dynamics", "sas/loss/late_phase_found"),
    "nonfinite_losses": ("Loss dynamics", "sas/loss/nonfinite_count"),
    "lr": ("Loss dynamics", "sas/loss/learning_rate"),
    "lr_constant_in_late_phase": ("Loss dynamics", "sas/loss/lr_constant_in_late_phase"),
    # oscillation
    "iat": ("Oscillation", "sas/oscillation/iat"),
    "ess": ("Oscillation", "sas/oscillation/ess"),
    "dominant_period": ("Oscillation", "sas/oscillation/dominant_period"),
    "power_fraction": ("Oscillation", "sas/oscillation/power_fraction"),
    "geweke_z": ("Oscillation", "sas/oscillation/geweke_z"),
    "stationary": ("Oscillation", "sas/oscillation/stationary"),
    # weights
    "weight_norm": ("Weights", "sas/weights/norm"),
    "update_size": ("Weights", "sas/weights/update_size"),
    "distance_from_init": ("Weights", "sas/weights/distance_from_init"),
    "distance_to_ergodic_mean": ("Weights", "sas/weights/distance_to_ergodic_mean"),
    "grad_norm": ("Weights", "sas/weights/grad_norm"),
    # generalization (probes) and SAS
    "ergodic_gap": ("SAS", "sas/sas/ergodic_gap"),
    "ergodic_gap_se": ("SAS", "sas/sas/ergodic_gap_se"),
    "probe_train_loss": ("SAS", "sas/probes/train_loss"),
    "probe_test_loss": ("SAS", "sas/probes/test_loss"),
    "nonfinite_probe_losses": ("SAS", "sas/probes/nonfinite_count"),
    "ergodic_gap_validation": ("SAS", "sas/sas/ergodic_gap_validation"),
    "sas_max": ("SAS", "sas/sas/sas_max"),
    "sas_max_se": ("SAS", "sas/sas/sas_max_se"),
    "sas_max_null": ("SAS", "sas/sas/sas_max_null"),
    "sas_mean": ("SAS", "sas/sas/sas_mean"),
    "sas_mean_se": ("SAS", "sas/sas/sas_mean_se"),
    "sas_replaced": ("SAS", "sas/sas/sas_replaced"),
    "sas_replaced_se": ("SAS", "sas/sas/sas_replaced_se"),
    "stability_gap": ("SAS", "sas/sas/stability_gap"),
    "stability_gap_se": ("SAS", "sas/sas/stability_gap_se"),
    "sas_resolved": ("SAS", "sas/sas/resolved"),
    "sas_converged": ("SAS", "sas/sas/converged"),
    "stability_gap_max_share": ("SAS", "sas/sas/stability_gap_max_share"),
    "paper_coefficient": ("SAS", "sas/sas/paper_coefficient"),
    "mean_pairwise_abs_difference": ("SAS", "sas/sas/mean_pairwise_abs_difference"),
}

#: margin charts: (group, title, value key, standard-error key) drawn as value +- 2 SE, or
#: +- t SE for the replica statistics (``sas_critical_t``, Student's t with K - 1 dof)
MARGIN_CHARTS: list[tuple[str, str, str, str]] = [
    ("Loss dynamics", "time-averaged loss +- 2 SE", "loss_mean", "loss_se"),
    ("SAS", "ergodic generalization gap +- 2 SE", "ergodic_gap", "ergodic_gap_se"),
    ("SAS", "SAS (sup over probes) +- t SE", "sas_max", "sas_max_se"),
    ("SAS", "SAS on held-out points +- t SE", "sas_mean", "sas_mean_se"),
    ("SAS", "stability gap (replace-one) +- t SE", "stability_gap", "stability_gap_se"),
]

#: statistics averaged over the K replicas, whose margins use Student's t with K - 1 dof
REPLICA_STATISTICS = frozenset({"sas_max", "sas_mean", "sas_replaced", "stability_gap"})

#: several tags on one chart: (group, title, keys)
SHARED_CHARTS: list[tuple[str, str, tuple[str, ...]]] = [
    ("SAS", "stability gap vs ergodic gap", ("stability_gap", "ergodic_gap")),
]


def tag_for(key: str) -> str:
    """The tag of a summary key (unknown keys go under ``sas/other/``)."""
    return SCALAR_TAGS[key][1] if key in SCALAR_TAGS else f"sas/other/{key}"


def scalars_from_summary(summary: dict[str, Any]) -> dict[str, float]:
    """Numeric entries of a summary as ``{tag: float}``, with ``_lower``/``_upper`` margin tags;
    booleans become 0/1, None and non-numbers are left out."""
    out: dict[str, float] = {}
    for key, value in summary.items():
        if isinstance(value, bool):
            out[tag_for(key)] = float(value)
        elif isinstance(value, (int, float)) and value == value:
            out[tag_for(key)] = float(value)
    replica_t = summary.get("sas_critical_t")
    replica_t = float(replica_t) if isinstance(replica_t, (int, float)) and not isinstance(replica_t, bool) else 2.0
    for _group, _title, key, se_key in MARGIN_CHARTS:
        value, se = summary.get(key), summary.get(se_key)
        if isinstance(value, (int, float)) and isinstance(se, (int, float)):
            width = (replica_t if key in REPLICA_STATISTICS else 2.0) * float(se)
            out[tag_for(key) + "_lower"] = float(value) - width
            out[tag_for(key) + "_upper"] = float(value) + width
    layers = summary.get("layers") or {}
    for name, value in layers.items():
        if isinstance(value, (int, float)):
            out[f"sas/layers/norm/{name}"] = float(value)
    return out


def custom_scalars_layout() -> dict[str, dict[str, list[Any]]]:
    """Layout for ``SummaryWriter.add_custom_scalars``: one category per dashboard group, one
    multiline chart per quantity, a margin chart per (value, SE) pair with exact tags."""
    layout: dict[str, dict[str, list[Any]]] = {}
    for key, (group, tag) in SCALAR_TAGS.items():
        if key.endswith("_se"):
            continue
        # Multiline tags are regular expressions: anchor them so "time_average" does not also
        # match its "_se"/"_lower"/"_upper" companions
        layout.setdefault(group, {})[key.replace("_", " ")] = ["Multiline", [f"^{re.escape(tag)}$"]]
    for group, title, key, _se in MARGIN_CHARTS:
        tag = tag_for(key)
        layout.setdefault(group, {})[title] = ["Margin", [tag, tag + "_lower", tag + "_upper"]]
    for group, title, keys in SHARED_CHARTS:
        layout.setdefault(group, {})[title] = ["Multiline", [f"^{re.escape(tag_for(k))}$" for k in keys]]
    return layout
