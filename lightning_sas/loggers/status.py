"""The run's status in words: the flags of a summary (late phase found, stationary, learning rate
constant, SAS resolved and converged) and the diagnostics that are missing, with their reasons.

Flags are 0/1 values: drawn as smoothed line charts they read as noise, so TensorBoard gets them
as this text (``sas/status``, rewritten at every flush) instead, and the offline reports open with
it. :func:`status_lines` builds the status from a summary (pure: no I/O, no state); the renderers
below only lay it out, so TensorBoard, ``lightning-sas report`` and ``report --html`` say the same.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from lightning_sas.formatting import format_value

__all__ = ["StatusLine", "STATUS_TAG", "status_lines", "status_markdown", "status_text", "status_html"]

#: the TensorBoard text tag the status is written under (``SummaryWriter.add_text`` stores it as
#: ``sas/status/text_summary``)
STATUS_TAG = "sas/status"

#: summary keys whose absence is explained on a status line of its own (not repeated under "Not computed")
_REPLICA_KEYS = ("sas_max", "sas_resolved", "stability_gap", "sas_converged", "replicas")


@dataclass(frozen=True)
class StatusLine:
    """One line of the status: a label, a sentence and optional sub-points. Summary keys in the
    text are written in backticks (code in markdown and HTML, plain in text)."""

    label: str
    text: str
    details: tuple[str, ...] = field(default_factory=tuple)


def _num(summary: Mapping[str, Any], key: str) -> float | None:
    """``summary[key]`` as a finite float, else None (booleans are not numbers here)."""
    value = summary.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _f(value: float | None) -> str:
    """Numbers in sentences: 3 significant digits (the tables keep 4)."""
    return format_value(value, digits=3)


def _pm(summary: Mapping[str, Any], key: str) -> str:
    """``value ± SE`` (or the value alone when its SE is missing)."""
    value, se = _num(summary, key), _num(summary, f"{key}_se")
    return f"{_f(value)} ± {_f(se)}" if se is not None else _f(value)


def _reason(unavailable: Mapping[str, str], used: set[str], *keys: str) -> str | None:
    """The first reason ``unavailable`` gives for one of ``keys`` (marking those keys as told)."""
    for key in keys:
        if key in unavailable:
            used.update(k for k in keys if k in unavailable)
            return str(unavailable[key])
    return None


def _late_phase(s: Mapping[str, Any], unavailable: Mapping[str, str], used: set[str]) -> StatusLine:
    """The late phase and the window every statistic averages over (``window``, ``window_start``)."""
    found = s.get("late_phase_found")
    window_start = s.get("window_start")
    every = "every statistic (loss, probes, `ergodic_gap`, SAS estimate) averages over it"
    if found is True:
        steps = _num(s, "late_phase_steps")
        tail = f" ({int(steps)} steps in it)" if steps is not None else ""
        return StatusLine("Late phase", f"since step {format_value(s.get('late_phase_start'))}{tail}; window: the late "
                                        f"phase, {every}.")
    if found is False:
        since = f", from step {format_value(window_start)}" if window_start is not None else ""
        return StatusLine(
            "Late phase",
            "not found yet: the loss is still trending (MSER finds no end of the transient); window: the "
            f"second half of the stream{since}, {every}; provisional.",
        )
    reason = _reason(unavailable, used, "late_phase_start", "late_phase_found", "loss_mean")
    return StatusLine("Late phase", f"unknown: {reason or 'no loss recorded yet'}.")


def _stationarity(s: Mapping[str, Any], unavailable: Mapping[str, str], used: set[str]) -> StatusLine:
    stationary, z = s.get("stationary"), _num(s, "geweke_z")
    if stationary is True:
        return StatusLine("Stationarity", f"stationary (Geweke z = {_f(z)}, |z| < 2).")
    if stationary is False:
        return StatusLine(
            "Stationarity",
            f"not stationary (Geweke z = {_f(z)}, |z| ≥ 2): the loss still drifts inside the late "
            "phase, so its time averages are provisional.",
        )
    reason = _reason(unavailable, used, "stationary", "geweke_z")
    return StatusLine("Stationarity", f"not tested: {reason or 'needs at least 20 finite late-phase losses'}.")


def _learning_rate(s: Mapping[str, Any], unavailable: Mapping[str, str], used: set[str]) -> StatusLine:
    constant, lr = s.get("lr_constant_in_late_phase"), _num(s, "lr")
    if constant is True:
        return StatusLine("Learning rate", f"constant in the late phase (lr = {_f(lr)}).")
    if constant is False:
        return StatusLine(
            "Learning rate",
            f"changes in the late phase (now {_f(lr)}): a changing learning rate leaves no "
            "invariant measure, so the time averages describe no stationary state.",
        )
    reason = _reason(unavailable, used, "lr_constant_in_late_phase", "lr")
    return StatusLine("Learning rate", f"not known: {reason or 'no learning rate recorded'}.")


def _replicas_on(s: Mapping[str, Any]) -> bool:
    """The monitor reports the SAS keys only with replicas (``None`` until the first estimate)."""
    return any(key in s for key in ("sas_max", "stability_gap", "sas_resolved"))


def _window_words(s: Mapping[str, Any]) -> str:
    """``" over the late phase"`` / ``" over the second half"``: the window a measured gap used."""
    window = s.get("window")
    return f" over the {window}" if isinstance(window, str) and window else ""


def _gaps(s: Mapping[str, Any], unavailable: Mapping[str, str], used: set[str]) -> StatusLine:
    """``ergodic_gap`` (the main model's), and with replicas ``stability_gap`` against the gap it
    estimates, ``control_heldout_gap`` (the control replica on the held-out split)."""
    ergodic = _num(s, "ergodic_gap")
    source = s.get("ergodic_gap_source")
    where = f", source: {source}" if isinstance(source, str) and source else ""
    if ergodic is None:
        reason = _reason(unavailable, used, "ergodic_gap", "ergodic_gap_se", "probe_test_loss")
        measured = f"`ergodic_gap` (main model) not measured: {reason or 'no probe losses yet'}"
    else:
        measured = f"`ergodic_gap` {_pm(s, 'ergodic_gap')} (main model, measured{_window_words(s)}{where})"
    if not _replicas_on(s):
        return StatusLine("Generalization gap", measured + ".")
    stability = _num(s, "stability_gap")
    if stability is None:
        return StatusLine("Generalization gap", f"`stability_gap` not estimated yet; {measured}.")
    m, k = _num(s, "swaps"), _num(s, "replicas")
    design = f" over K = {int(k)} replicas × m = {int(m)} swaps" if m is not None and k is not None else ""
    control = _num(s, "control_heldout_gap")
    if control is None:
        reason = _reason(unavailable, used, "control_heldout_gap", "control_heldout_gap_se")
        target = f"`control_heldout_gap` not measured: {reason or 'no control probe losses yet'}"
    else:
        target = (f"`control_heldout_gap` {_pm(s, 'control_heldout_gap')} (the gap it estimates: the control replica "
                  f"on the held-out split, measured{_window_words(s)})")
    text = f"`stability_gap` {_pm(s, 'stability_gap')} (replace-one estimate{design}) vs {target}"
    se_a, se_b = _num(s, "stability_gap_se"), _num(s, "control_heldout_gap_se")
    if control is not None and se_a is not None and se_b is not None:
        diff, width = stability - control, 2.0 * math.hypot(se_a, se_b)
        verdict = "agree within" if abs(diff) <= width else "differ by more than"
        text += f": they {verdict} 2 combined SE ({_f(diff)} vs {_f(width)})"
    return StatusLine("Generalization gap", text + f"; {measured}.")


def _sas(s: Mapping[str, Any], unavailable: Mapping[str, str], used: set[str]) -> StatusLine:
    if not _replicas_on(s):
        reason = _reason(unavailable, used, *_REPLICA_KEYS)
        return StatusLine("SAS estimate", f"replicas off: {reason or 'no in-run estimate (SASMonitor(replicas=K) turns it on)'}.")
    sas_max = _num(s, "sas_max")
    if sas_max is None:
        reason = _reason(unavailable, used, *_REPLICA_KEYS)
        return StatusLine("SAS estimate", f"not estimated yet: {reason or 'no replica probe losses in the late phase yet'}.")
    t = _num(s, "sas_critical_t") or 2.0
    k = _num(s, "replicas")
    details = []
    se, null = _num(s, "sas_max_se"), _num(s, "sas_max_null")
    head = f"`sas_max` {_pm(s, 'sas_max')}"
    if se is None or null is None:
        details.append(f"{head}: not resolved: no standard error or null level yet (too few blocks).")
    else:
        bar = null + t * se
        verdict = "resolved: above" if s.get("sas_max_resolved", s.get("sas_resolved")) else "not resolved: below"
        details.append(f"{head}: {verdict} null + t·SE = {_f(null)} + {_f(t)} × {_f(se)} = {_f(bar)}.")
    gap, gap_se = _num(s, "stability_gap"), _num(s, "stability_gap_se")
    if gap is not None:
        head = f"`stability_gap` {_pm(s, 'stability_gap')}"
        if gap_se is None:
            details.append(f"{head}: not resolved: no standard error yet.")
        else:
            lower, upper = _num(s, "stability_gap_lower"), _num(s, "stability_gap_upper")
            resolved = s.get("stability_gap_resolved")
            if lower is not None and upper is not None:  # the skewness-corrected 95 % interval
                verdict = "resolved: its 95 % interval" if resolved else "not resolved: its 95 % interval"
                details.append(f"{head}: {verdict} [{_f(lower)}, {_f(upper)}] {'excludes' if resolved else 'holds'} 0.")
            else:
                verdict = "resolved: |gap| above" if resolved else "not resolved: |gap| below"
                details.append(f"{head}: {verdict} t·SE = {_f(t)} × {_f(gap_se)} = {_f(t * gap_se)}.")
    removed, added = _num(s, "stability_gap_removed"), _num(s, "stability_gap_added")
    if removed is not None and added is not None:
        details.append(f"its two sides: removed samples {_pm(s, 'stability_gap_removed')}, added samples "
                       f"{_pm(s, 'stability_gap_added')} (each side alone is biased; their mean is the estimate).")
    share = _num(s, "stability_gap_max_share")
    if share is not None and k is not None and k > 1 and share > 0.5:
        details.append(f"one replica carries {share:.0%} of `stability_gap`: its SE from K = {int(k)} samples is fragile; raise K.")
    converged = s.get("sas_converged")
    if converged is True:
        details.append("converged: the last two doublings of the averaging window agree.")
    elif converged is False:
        details.append("not converged: the estimate still moves as the averaging window doubles.")
    verdicts = [f"`sas_max` {'resolved' if s.get('sas_max_resolved', s.get('sas_resolved')) else 'not resolved'}"]
    if gap is not None:
        verdicts.append(f"`stability_gap` {'resolved' if s.get('stability_gap_resolved') else 'not resolved'}")
    dof = f", Student's t for K − 1 = {int(k) - 1} dof" if k is not None and k > 1 else ""
    return StatusLine("SAS estimate", f"{', '.join(verdicts)} (± is one SE; t = {_f(t)}{dof}).", tuple(details))


def _nonfinite(s: Mapping[str, Any]) -> StatusLine | None:
    parts = []
    for key, what in (("nonfinite_losses", "training loss"), ("nonfinite_probe_losses", "probe loss")):
        count = _num(s, key)
        if count:
            parts.append(f"{int(count)} {what}{'es' if count != 1 else ''}")
    if not parts:
        return None
    return StatusLine("Non-finite values", " and ".join(parts) + " NaN/Inf, left out of every statistic.")


def _figures(s: Mapping[str, Any]) -> StatusLine | None:
    """Live figures that waited for ``figure_budget`` (the monitor adds these keys to the status)."""
    skipped, budget = _num(s, "figure_sets_skipped_for_budget"), _num(s, "figure_budget")
    if not skipped or budget is None:
        return None
    drawn = _num(s, "figure_sets_drawn") or 0
    return StatusLine(
        "Figures",
        f"live figures skipped at {int(skipped)} flush{'es' if skipped != 1 else ''} to stay within figure_budget = "
        f"{budget:.3g} of the wall time ({int(drawn)} set{'s' if drawn != 1 else ''} drawn so far); the final set is "
        "drawn at the end of the fit. Raise figure_budget (0: the cadence alone) for more live figures; "
        "`lightning-sas report` draws them offline.",
    )


def _missing(unavailable: Mapping[str, str], used: set[str]) -> StatusLine | None:
    """The diagnostics ``unavailable`` names that no line above explained, grouped by reason."""
    by_reason: dict[str, list[str]] = {}
    for key, reason in unavailable.items():
        if key not in used:
            by_reason.setdefault(str(reason), []).append(str(key))
    if not by_reason:
        return None
    details = tuple(", ".join(f"`{k}`" for k in keys) + f": {reason}" for reason, keys in by_reason.items())
    n = sum(len(keys) for keys in by_reason.values())
    return StatusLine("Not computed", f"{n} diagnostic{'s' if n != 1 else ''}.", details)


def status_lines(summary: Mapping[str, Any]) -> list[StatusLine]:
    """The status of a run from its summary (``SASMonitor.summary()``, ``summary.json`` or
    :func:`~lightning_sas.diagnostics.summarize_run`): is the run in its late phase, is it
    stationary, is the learning rate constant there, the stability gap against the measured gap,
    is the SAS estimate resolved (or why not), and the diagnostics listed in
    ``summary["unavailable"]`` (``{key: reason}``, optional) with their reasons. Missing keys are
    read as "not computed"; nothing is raised."""
    s = summary or {}
    raw = s.get("unavailable")
    unavailable: Mapping[str, str] = raw if isinstance(raw, Mapping) else {}
    used: set[str] = set()
    lines = [
        _late_phase(s, unavailable, used),
        _stationarity(s, unavailable, used),
        _learning_rate(s, unavailable, used),
        _gaps(s, unavailable, used),
        _sas(s, unavailable, used),
    ]
    lines += [line for line in (_nonfinite(s), _figures(s), _missing(unavailable, used)) if line is not None]
    return lines


def status_markdown(summary: Mapping[str, Any]) -> str:
    """The status as a markdown list (TensorBoard's text plugin renders it)."""
    out = []
    for line in status_lines(summary):
        out.append(f"- **{line.label}:** {line.text}")
        out += [f"    - {detail}" for detail in line.details]
    return "\n".join(out)


def _plain(text: str) -> str:
    return text.replace("`", "")


def status_text(summary: Mapping[str, Any]) -> str:
    """The status as plain text (the head of ``lightning-sas report``)."""
    lines = status_lines(summary)
    width = max(len(line.label) for line in lines)
    out = []
    for line in lines:
        out.append(f"{line.label.ljust(width)}  {_plain(line.text)}")
        out += [f"{'':{width}}    - {_plain(detail)}" for detail in line.details]
    return "\n".join(out)


def _html_inline(text: str) -> str:
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text))


def status_html(summary: Mapping[str, Any]) -> str:
    """The status as an HTML list (the head of ``report --html``)."""
    out = ["<ul class='status'>"]
    for line in status_lines(summary):
        item = f"<li><b>{html.escape(line.label)}:</b> {_html_inline(line.text)}"
        if line.details:
            item += "<ul>" + "".join(f"<li>{_html_inline(d)}</li>" for d in line.details) + "</ul>"
        out.append(item + "</li>")
    out.append("</ul>")
    return "\n".join(out)
