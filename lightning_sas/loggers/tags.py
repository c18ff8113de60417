"""Logged tag names and the TensorBoard custom-scalars layout built from them (one place)."""

from __future__ import annotations

import math
import re
from typing import Any

__all__ = [
    "SCALAR_TAGS",
    "MARGIN_CHARTS",
    "OVERVIEW",
    "OVERVIEW_CHARTS",
    "OPEN_CATEGORIES",
    "FLAG_KEYS",
    "is_flag",
    "tag_for",
    "margin_series",
    "layer_tags",
    "scalars_from_summary",
    "custom_scalars_layout",
]

#: summary key -> (dashboard group, tag). Every tag starts with "sas/". The flags among them
#: (:data:`FLAG_KEYS`) keep their tag for loggers other than TensorBoard, which get them as 0/1.
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
    "control_heldout_gap": ("SAS", "sas/sas/control_heldout_gap"),
    "control_heldout_gap_se": ("SAS", "sas/sas/control_heldout_gap_se"),
    "control_train_loss": ("SAS", "sas/probes/control_train_loss"),
    "control_heldout_loss": ("SAS", "sas/probes/control_heldout_loss"),
    "window_start": ("Loss dynamics", "sas/loss/window_start"),
    "sas_max": ("SAS", "sas/sas/sas_max"),
    "sas_max_se": ("SAS", "sas/sas/sas_max_se"),
    "sas_max_null": ("SAS", "sas/sas/sas_max_null"),
    "sas_mean": ("SAS", "sas/sas/sas_mean"),
    "sas_mean_se": ("SAS", "sas/sas/sas_mean_se"),
    "sas_replaced": ("SAS", "sas/sas/sas_replaced"),
    "sas_replaced_se": ("SAS", "sas/sas/sas_replaced_se"),
    "stability_gap": ("SAS", "sas/sas/stability_gap"),
    "stability_gap_se": ("SAS", "sas/sas/stability_gap_se"),
    "stability_gap_removed": ("SAS", "sas/sas/stability_gap_removed"),
    "stability_gap_removed_se": ("SAS", "sas/sas/stability_gap_removed_se"),
    "stability_gap_added": ("SAS", "sas/sas/stability_gap_added"),
    "stability_gap_added_se": ("SAS", "sas/sas/stability_gap_added_se"),
    "replicas": ("SAS", "sas/sas/replicas"),
    "swaps": ("SAS", "sas/sas/swaps"),
    "sas_resolved": ("SAS", "sas/sas/resolved"),
    "sas_converged": ("SAS", "sas/sas/converged"),
    "stability_gap_max_share": ("SAS", "sas/sas/stability_gap_max_share"),
    "paper_coefficient": ("SAS", "sas/sas/paper_coefficient"),
    "mean_pairwise_abs_difference": ("SAS", "sas/sas/mean_pairwise_abs_difference"),
}

#: margin charts: (group, title, value key, standard-error key). The band is the summary's 95 %
#: interval ``<key>_lower``/``<key>_upper`` where it has one (the gaps and the replica
#: statistics: skewness-corrected or on the log scale), else value ± 2 SE, or ± t SE for a replica
#: statistic (``sas_critical_t``, Student's t with K - 1 dof; for ``sas_mean``,
#: ``sas_mean_critical_t``, Satterthwaite's dof of its crossed SE)
MARGIN_CHARTS: list[tuple[str, str, str, str]] = [
    ("Loss dynamics", "time-averaged loss ± 2 SE", "loss_mean", "loss_se"),
    ("SAS", "ergodic generalization gap (main model), 95 % interval", "ergodic_gap", "ergodic_gap_se"),
    ("SAS", "control replica's held-out gap, 95 % interval", "control_heldout_gap", "control_heldout_gap_se"),
    ("SAS", "SAS (sup over probes), 95 % interval", "sas_max", "sas_max_se"),
    ("SAS", "SAS on held-out points, 95 % interval", "sas_mean", "sas_mean_se"),
    ("SAS", "stability gap (replace-one, both sides of m swaps), 95 % interval", "stability_gap", "stability_gap_se"),
    ("SAS", "stability gap, removed side, 95 % interval", "stability_gap_removed", "stability_gap_removed_se"),
    ("SAS", "stability gap, added side, 95 % interval", "stability_gap_added", "stability_gap_added_se"),
]

#: statistics averaged over the K replicas, whose margins use Student's t with K - 1 dof
#: (``sas_critical_t``), but ``sas_mean``'s ``sas_mean_critical_t``
REPLICA_STATISTICS = frozenset({"sas_max", "sas_mean", "sas_replaced", "stability_gap", "stability_gap_removed",
                                "stability_gap_added"})

#: several tags on one chart: (group, title, keys)
SHARED_CHARTS: list[tuple[str, str, tuple[str, ...]]] = [
    ("SAS", "stability gap vs the gap it estimates (control, held-out split)", ("stability_gap", "control_heldout_gap")),
]

#: the first category of the custom-scalars page: what a user opens it for
OVERVIEW = "Overview"

#: the Overview charts as they show on the page: (title, keys). Each is a margin chart with one
#: series per key, a line with a shaded band: the 95 % interval (value ± 2 SE for the loss) for the
#: keys of :data:`MARGIN_CHARTS`, a zero-width band (a plain, unsmoothed line) for a key
#: without an SE (IAT, ESS, distances, the null level).
#:
#: Why margin charts with several series: ``MarginChartContent.series`` is repeated in
#: TensorBoard's layout proto and its margin-chart card draws every series with its band, so the
#: two gaps are compared band against band and ``sas_max`` against its null level on one chart.
#: The alternative, a Multiline chart of both values and their ``_lower``/``_upper`` tags
#: (anchored regexes), draws six unshaded, smoothed lines in one colour, told apart only by
#: their markers. ``torch``'s ``add_custom_scalars`` writes one series per margin chart, so
#: :func:`~lightning_sas.loggers.export.write_layout` writes the layout proto itself.
#:
#: Why margin charts only: TensorBoard's dashboard (``tf-dom-repeat``, unchanged through 2.x)
#: inserts each chart by element index while every chart stamps two ``dom-if`` templates, so a
#: category shows its multiline charts in layout order and then its margin charts in reverse
#: layout order. :func:`custom_scalars_layout` lists the Overview's (all margin) charts in
#: reverse so that the page shows them in this order.
OVERVIEW_CHARTS: list[tuple[str, tuple[str, ...]]] = [
    ("time-averaged loss ± 2 SE", ("loss_mean",)),
    ("generalization gap: stability gap vs control's held-out gap, main model's gap (95 % intervals)",
     ("stability_gap", "control_heldout_gap", "ergodic_gap")),
    ("SAS (sup over probes), 95 % interval, vs its null level", ("sas_max", "sas_max_null")),
    ("integrated autocorrelation time (steps)", ("iat",)),
    ("effective sample size", ("ess",)),
    ("distance to the ergodic mean of the weights vs update size", ("distance_to_ergodic_mean", "update_size")),
]

#: categories shown open when the page loads (the detailed sections start collapsed, one click away)
OPEN_CATEGORIES = (OVERVIEW,)

#: 0/1 flags of the summary: never charted, and TensorBoard gets them as the status text
#: (:func:`~lightning_sas.loggers.status.status_markdown`) instead of scalars. Every
#: ``*_resolved`` key and every boolean value is a flag too (:func:`is_flag`).
FLAG_KEYS = frozenset(
    {"late_phase_found", "lr_constant_in_late_phase", "stationary", "sas_resolved", "sas_converged"}
)

_MARGIN_SE = {key: se_key for _group, _title, key, se_key in MARGIN_CHARTS}


def is_flag(key: str, value: Any = None) -> bool:
    """Is summary entry ``key`` (with ``value``) a yes/no flag rather than a quantity?"""
    return key in FLAG_KEYS or key.endswith("_resolved") or isinstance(value, bool)


#: the ends of a summary's 95 % intervals: ``<key>_lower``, ``<key>_upper``
INTERVAL_ENDS = ("_lower", "_upper")


def tag_for(key: str) -> str:
    """The tag of a summary key (unknown keys go under ``sas/other/``); an interval end
    ``<key>_lower``/``<key>_upper`` is ``<key>``'s tag with that suffix (a margin chart's band)."""
    if key in SCALAR_TAGS:
        return SCALAR_TAGS[key][1]
    for end in INTERVAL_ENDS:
        if key.endswith(end) and key.removesuffix(end) in SCALAR_TAGS:
            return SCALAR_TAGS[key.removesuffix(end)][1] + end
    return f"sas/other/{key}"


def margin_series(key: str) -> tuple[str, str, str]:
    """(value, lower, upper) tags of ``key`` on a margin chart; the value tag three times for a key
    without a standard error (a line with a zero-width band)."""
    tag = tag_for(key)
    return (tag, tag + "_lower", tag + "_upper") if key in _MARGIN_SE else (tag, tag, tag)


#: characters of a layer's tag name that every logger keeps: Lightning's ``MLFlowLogger`` strips
#: all but ``[A-Za-z0-9_/. -]`` from a metric name (so two names could merge), MLflow rejects a
#: name whose path form is not its own (``a//b``, ``a/../b``), W&B reads ``/`` as a section.
#: A ``/`` inside a parameter's name would add a tag level, so it is replaced too.
_LAYER_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")

#: the tag prefix of the per-layer weight norms
LAYER_NORM_PREFIX = "sas/layers/norm/"


def layer_tags(names: Any) -> dict[str, str]:
    """``{layer name: tag}`` for the per-layer norms: ``sas/layers/norm/<name>`` with every
    character outside ``[A-Za-z0-9_.-]`` replaced by ``_`` (names of dots only get a leading
    ``_``), so MLflow, W&B, TensorBoard and CSV all accept the tag unchanged.

    Distinct names keep distinct tags: a name that needs no change keeps its tag; the others, in
    sorted order, take their cleaned name or, when that is taken, the first free ``<clean>_2``,
    ``<clean>_3``, ... The result depends on the set of names only (not their order), so a
    layer keeps its tag at every flush of a run."""
    names = [str(n) for n in names]
    taken: set[str] = set()
    out: dict[str, str] = {}
    for name in names:
        if not _LAYER_NAME_UNSAFE.search(name) and name.strip(".") and name not in taken:
            out[name] = LAYER_NORM_PREFIX + name
            taken.add(name)
    for name in sorted(n for n in set(names) if n not in out):
        clean = _LAYER_NAME_UNSAFE.sub("_", name)
        if not clean.strip("."):
            clean = "_" + clean
        candidate, k = clean, 1
        while candidate in taken:
            k += 1
            candidate = f"{clean}_{k}"
        out[name] = LAYER_NORM_PREFIX + candidate
        taken.add(candidate)
    return out


def scalars_from_summary(summary: dict[str, Any], flags: bool = True) -> dict[str, float]:
    """Numeric entries of a summary as ``{tag: float}``, with ``_lower``/``_upper`` margin tags (the
    summary's interval where it has one, else value ± t SE);
    None and non-numbers are left out. Flags (:func:`is_flag`) become 0/1 with ``flags=True``
    (loggers without text) and are left out with ``flags=False`` (TensorBoard, which gets them as
    the status text)."""
    out: dict[str, float] = {}
    for key, value in summary.items():
        if is_flag(key, value):
            if flags and isinstance(value, (bool, int, float)):
                out[tag_for(key)] = float(value)
        elif isinstance(value, (int, float)) and value == value:
            out[tag_for(key)] = float(value)
    replica_t = summary.get("sas_critical_t")
    replica_t = float(replica_t) if isinstance(replica_t, (int, float)) and not isinstance(replica_t, bool) else 2.0
    mean_t = summary.get("sas_mean_critical_t")
    mean_t = float(mean_t) if isinstance(mean_t, (int, float)) and not isinstance(mean_t, bool) else replica_t
    for _group, _title, key, se_key in MARGIN_CHARTS:
        value, se = summary.get(key), summary.get(se_key)
        ends = [summary.get(key + end) for end in INTERVAL_ENDS]
        if all(isinstance(e, (int, float)) and not isinstance(e, bool) and math.isfinite(e) for e in ends):
            out[tag_for(key) + "_lower"], out[tag_for(key) + "_upper"] = float(ends[0]), float(ends[1])
        elif isinstance(value, (int, float)) and isinstance(se, (int, float)):
            t = mean_t if key == "sas_mean" else replica_t if key in REPLICA_STATISTICS else 2.0
            width = t * float(se)
            out[tag_for(key) + "_lower"] = float(value) - width
            out[tag_for(key) + "_upper"] = float(value) + width
    layers = summary.get("layers") or {}
    tags = layer_tags(layers)
    for name, value in layers.items():
        if isinstance(value, (int, float)):
            out[tags[str(name)]] = float(value)
    return out


def _multiline(keys: tuple[str, ...]) -> list[Any]:
    # Multiline tags are regular expressions: anchor them so "time_average" does not also match
    # its "_se"/"_lower"/"_upper" companions
    return ["Multiline", [f"^{re.escape(tag_for(k))}$" for k in keys]]


def custom_scalars_layout() -> dict[str, dict[str, list[Any]]]:
    """Layout for the custom-scalars dashboard, categories in display order: :data:`OVERVIEW`
    first (:data:`OVERVIEW_CHARTS`), then one category per dashboard group (Loss dynamics,
    Oscillation, Weights, SAS) with a multiline chart per quantity (flags excluded) and a margin
    chart per (value, SE) pair.

    The format is ``SummaryWriter.add_custom_scalars``'s, except that a "Margin" chart may list
    several (value, lower, upper) triples, one series each
    (:func:`~lightning_sas.loggers.export.layout_proto` writes them)."""
    # reversed: TensorBoard shows a category's margin charts in reverse order (see OVERVIEW_CHARTS)
    layout: dict[str, dict[str, list[Any]]] = {
        OVERVIEW: {title: ["Margin", [t for key in keys for t in margin_series(key)]] for title, keys in reversed(OVERVIEW_CHARTS)}
    }
    for key, (group, _tag) in SCALAR_TAGS.items():
        if key.endswith("_se") or is_flag(key):
            continue
        layout.setdefault(group, {})[key.replace("_", " ")] = _multiline((key,))
    for group, title, key, _se in MARGIN_CHARTS:
        layout.setdefault(group, {})[title] = ["Margin", list(margin_series(key))]
    for group, title, keys in SHARED_CHARTS:
        layout.setdefault(group, {})[title] = _multiline(keys)
    return layout
