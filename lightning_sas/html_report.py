"""Self-contained HTML reports (figures embedded as base64 PNG) for ``report`` and ``compare``."""

from __future__ import annotations

import base64
import html
from typing import Any, Mapping

from lightning_sas.formatting import format_value
from lightning_sas.loggers.status import status_html

__all__ = ["EXPLANATIONS", "html_page"]

#: plain-words explanation of each summary key
EXPLANATIONS: dict[str, str] = {
    "steps": "Stream entries seen (optimizer steps; batches in manual optimization).",
    "late_phase_start": "Step where the initial transient ends (MSER on the loss stream's blocks); n/a while the loss is still trending.",
    "late_phase_found": "Whether MSER found the end of the transient; if not, the statistics use the second half and are provisional.",
    "late_phase_steps": "Number of loss values in the late phase.",
    "loss_mean": "Time-averaged training loss over the late phase.",
    "loss_se": "Standard error of that average, from batch means longer than the autocorrelation time.",
    "loss_std": "Amplitude of the late-phase oscillation (standard deviation of the loss).",
    "iat": "Integrated autocorrelation time: how many steps the loss takes to forget itself.",
    "ess": "Effective sample size: late-phase steps divided by the IAT.",
    "dominant_period": "Period (in steps) of the strongest oscillation in the late-phase loss.",
    "power_fraction": "Share of the loss variance at that period (near 0: no dominant oscillation).",
    "geweke_z": "Geweke z: early vs late part of the late phase; |z| < 2 is consistent with stationarity.",
    "stationary": "Whether |Geweke z| < 2.",
    "lr": "Learning rate at the last step.",
    "lr_constant_in_late_phase": "A learning rate that changes in the late phase leaves no invariant measure to average over.",
    "nonfinite_losses": "NaN/Inf losses, excluded from every statistic.",
    "weight_norm": "Norm of all trainable weights.",
    "update_size": "Norm of the last optimizer update at a snapshot step.",
    "distance_from_init": "Distance of the weights from their initial values.",
    "distance_to_ergodic_mean": "Distance of the weights from their running late-phase mean: weights that oscillate keep it flat and non-zero.",
    "ergodic_mean_start": "Step from which the ergodic mean of the weights is accumulated.",
    "grad_norm": "Gradient norm before the last snapshot step's update.",
    "window_start": "First step of the window every statistic averages over (the late phase, else the second half of the stream).",
    "window": "Which window every statistic averages over: the late phase, or the second half of the stream while no late phase is found.",
    "ergodic_gap": "The main model's time-averaged loss on held-out (validation) probe points minus on training probe points: the ergodic generalization gap.",
    "control_heldout_gap": "The control replica's time-averaged loss on the held-out split minus on its training points: the gap stability_gap estimates.",
    "ergodic_gap_se": "Standard error of the ergodic gap.",
    "probe_train_loss": "Time-averaged loss on the training probe points.",
    "probe_test_loss": "Time-averaged loss on the held-out probe points.",
    "sas_max": "SAS estimate: largest change of a time-averaged loss on a probe point (the swapped samples and the held-out points) between a replica and the control (averaged over replicas).",
    "sas_mean": "Mean change of the time-averaged loss on held-out points (held-out sensitivity).",
    "sas_replaced": "Change of the time-averaged loss on the replaced sample itself.",
    "stability_gap": "The replace-one estimate of the generalization gap from both sides of every swap: the loss rise on the samples a replica lost and the loss drop on the held-out samples it gained (mean over a replica's 2m values, then over replicas).",
    "stability_gap_removed": "The removed side alone: loss of the replica minus the control on the samples the replica no longer trains on.",
    "stability_gap_added": "The added side alone: loss of the control minus the replica on the held-out samples the replica trains on.",
    "swaps": "m, the training samples each replica swaps for held-out ones (disjoint across replicas).",
    "replicas": "K, the perturbed replicas (plus one control).",
    "sas_resolved": "Whether sas_max exceeds its noise level by t standard errors (Student's t with K - 1 degrees of freedom, sas_critical_t).",
    "sas_critical_t": "Critical value used for the replica statistics: they average over K random replaced samples, so their uncertainty is that of a K-sample mean.",
    "sas_mean_critical_t": "Critical value of sas_mean's interval: Student's t with the Satterthwaite degrees of freedom of its SE, which averages over the replicas and over the held-out points.",
    "stability_gap_max_share": "Share of the largest replica in the sum of its |per-replica stability gap|: near 1, one replica carries stability_gap and its SE from K samples is not to be trusted (raise K or swaps).",
    "sas_converged": "Whether the last two doublings of the averaging window agree.",
    "paper_coefficient": "The authors' statistic: mean |difference| of time-averaged mean test losses over neighbouring runs.",
    "mean_pairwise_abs_difference": "Mean over neighbouring pairs and held-out points of |difference of time-averaged probe losses|.",
    "heldout_max_abs_difference": "Mean over neighbouring pairs of the largest |difference of time-averaged probe losses| on the held-out points (not sas_max, whose max also covers the swapped samples).",
}


def html_page(
    title: str,
    rows: Mapping[str, Any],
    figures: Mapping[str, bytes],
    notes: list[str] | None = None,
    status: Mapping[str, Any] | None = None,
) -> str:
    """One HTML page: the run's status (from the summary ``status``, when given; see
    :func:`~lightning_sas.loggers.status.status_lines`), a table of ``rows`` with explanations,
    then each PNG figure inline."""
    lines = [
        "<!doctype html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse}td,th{border-bottom:1px solid #ddd;padding:4px 10px;text-align:left;vertical-align:top}"
        "td.v{font-family:monospace;white-space:nowrap}img{max-width:100%;margin:1em 0}.note{color:#a33}"
        "ul.status{background:#f6f6f6;padding:0.8em 2em;border-left:4px solid #f57c00}ul.status li{margin:0.2em 0}</style>",
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if status is not None:
        lines += ["<h2>Status</h2>", status_html(status)]
    for note in notes or []:
        lines.append(f"<p class='note'>{html.escape(note)}</p>")
    if status is not None:
        lines.append("<h2>Diagnostics</h2>")
    lines.append("<table><tr><th>quantity</th><th>value</th><th>what it means</th></tr>")
    for key, value in rows.items():
        explanation = EXPLANATIONS.get(key, EXPLANATIONS.get(key.removesuffix("_se"), ""))
        lines.append(
            f"<tr><td>{html.escape(key)}</td><td class='v'>{html.escape(format_value(value))}</td><td>{html.escape(explanation)}</td></tr>"
        )
    lines.append("</table>")
    for name, png in figures.items():
        data = base64.b64encode(png).decode("ascii")
        lines.append(f"<h2>{html.escape(name)}</h2><img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>")
    lines.append("</body></html>")
    return "\n".join(lines)
