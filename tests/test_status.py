"""The status in words (``lightning_sas.loggers.status``), the flags kept off TensorBoard's charts
and scalars, the Overview layout, and the shared formatting."""

from __future__ import annotations

import re
from types import SimpleNamespace
from unittest import mock
from typing import Any

import pytest

from lightning_sas.loggers.export import layout_proto
from lightning_sas.loggers.status import status_html, status_lines, status_markdown, status_text
from lightning_sas.loggers.tags import (
    FLAG_KEYS,
    OPEN_CATEGORIES,
    OVERVIEW,
    OVERVIEW_CHARTS,
    custom_scalars_layout,
    is_flag,
    scalars_from_summary,
    tag_for,
)

LATE = {"late_phase_found": True, "late_phase_start": 120, "late_phase_steps": 380, "stationary": True,
        "geweke_z": 0.52, "lr": 0.1, "lr_constant_in_late_phase": True}

REPLICAS = {"replicas": 4, "sas_critical_t": 3.182, "sas_converged": True, "ergodic_gap_source": "validation"}


def _line(summary: dict[str, Any], label: str) -> str:
    line = next(line for line in status_lines(summary) if line.label == label)
    return " | ".join((line.text,) + line.details)


def test_late_phase_found_and_not_found() -> None:
    assert "since step 120 (380 steps in it)" in _line(LATE, "Late phase")
    assert "window: the late phase, every statistic (loss, probes, `ergodic_gap`, SAS estimate) averages over it" in _line(
        LATE, "Late phase")
    trending = _line({"late_phase_found": False, "late_phase_start": None, "window_start": 250, "window": "second half"},
                     "Late phase")
    assert trending.startswith("not found yet: the loss is still trending")
    assert "window: the second half of the stream, from step 250, every statistic" in trending
    assert "no loss recorded yet" in _line({}, "Late phase")


def test_stationarity_and_learning_rate() -> None:
    assert _line(LATE, "Stationarity") == "stationary (Geweke z = 0.52, |z| < 2)."
    drifting = _line({"stationary": False, "geweke_z": -3.4}, "Stationarity")
    assert drifting.startswith("not stationary (Geweke z = -3.4, |z| ≥ 2)")
    assert "not tested" in _line({}, "Stationarity")
    assert _line(LATE, "Learning rate") == "constant in the late phase (lr = 0.1)."
    assert _line({"lr": 0.01, "lr_constant_in_late_phase": False}, "Learning rate").startswith(
        "changes in the late phase (now 0.01)")


def test_sas_resolved_with_the_gaps_side_by_side() -> None:
    summary = {**LATE, **REPLICAS, "sas_max": 0.5, "sas_max_se": 0.05, "sas_max_null": 0.1, "sas_max_resolved": True,
               "sas_resolved": True, "stability_gap": 0.41, "stability_gap_se": 0.05, "stability_gap_resolved": True,
               "control_heldout_gap": 0.4, "control_heldout_gap_se": 0.02, "ergodic_gap": 0.9, "ergodic_gap_se": 0.03,
               "stability_gap_max_share": 0.3, "window": "late phase"}
    sas = _line(summary, "SAS estimate")
    assert sas.startswith("`sas_max` resolved, `stability_gap` resolved (± is one SE; t = 3.18, Student's t for K − 1 = 3 dof)")
    assert "`sas_max` 0.5 ± 0.05: resolved: above null + t·SE = 0.1 + 3.18 × 0.05 = 0.259" in sas
    assert "`stability_gap` 0.41 ± 0.05: resolved: |gap| above t·SE = 3.18 × 0.05 = 0.159" in sas
    assert "converged" in sas and "raise K" not in sas
    # with the summary's skewness-corrected interval, the verdict names it
    bounded = _line({**summary, "stability_gap_lower": 0.3, "stability_gap_upper": 0.6}, "SAS estimate")
    assert "`stability_gap` 0.41 ± 0.05: resolved: its 95 % interval [0.3, 0.6] excludes 0." in bounded
    gaps = _line(summary, "Generalization gap")
    assert ("`stability_gap` 0.41 ± 0.05 (replace-one estimate) vs `control_heldout_gap` 0.4 ± 0.02 (the gap it "
            "estimates: the control replica on the held-out split, measured over the late phase)") in gaps
    assert "they agree within 2 combined SE" in gaps
    # the main model's gap is named as such, and never compared with stability_gap
    assert "`ergodic_gap` 0.9 ± 0.03 (main model, measured over the late phase, source: validation)" in gaps


def test_sas_not_resolved_says_why() -> None:
    summary = {**LATE, **REPLICAS, "sas_max": 0.12, "sas_max_se": 0.05, "sas_max_null": 0.1, "sas_max_resolved": False,
               "sas_resolved": False, "sas_converged": False, "stability_gap": 0.41, "stability_gap_se": 0.30,
               "stability_gap_resolved": False, "control_heldout_gap": 1.5, "control_heldout_gap_se": 0.05,
               "ergodic_gap": 0.45, "ergodic_gap_se": 0.05, "stability_gap_max_share": 0.9}
    sas = _line(summary, "SAS estimate")
    assert sas.startswith("`sas_max` not resolved, `stability_gap` not resolved (")
    assert "not resolved: below null + t·SE = 0.1 + 3.18 × 0.05 = 0.259" in sas
    assert "`stability_gap` 0.41 ± 0.3: not resolved: |gap| below t·SE = 3.18 × 0.3 = 0.955" in sas
    assert "one replica carries 90% of `stability_gap`" in sas and "raise K" in sas
    bounded = _line({**summary, "stability_gap_lower": -0.4, "stability_gap_upper": 1.5}, "SAS estimate")
    assert "`stability_gap` 0.41 ± 0.3: not resolved: its 95 % interval [-0.4, 1.5] holds 0." in bounded
    assert "not converged" in sas
    assert "differ by more than 2 combined SE" in _line(summary, "Generalization gap")
    # no SE yet: not resolved, and why
    early = {**REPLICAS, "sas_max": 0.2, "sas_max_se": None, "sas_max_null": None, "sas_resolved": False}
    assert "no standard error or null level yet" in _line(early, "SAS estimate")


def test_replicas_off_and_not_estimated_yet() -> None:
    assert _line(LATE, "SAS estimate").startswith("replicas off")
    assert "ergodic_gap" in _line({**LATE, "ergodic_gap": 0.3, "ergodic_gap_se": 0.01}, "Generalization gap")
    pending = {**REPLICAS, "sas_max": None, "stability_gap": None, "sas_resolved": None}
    assert _line(pending, "SAS estimate").startswith("not estimated yet")
    failed = {**pending, "unavailable": {"sas_max": "a replica step failed (RuntimeError: boom)"}}
    assert "a replica step failed (RuntimeError: boom)" in _line(failed, "SAS estimate")
    assert all(line.label != "Not computed" for line in status_lines(failed))  # told once


def test_missing_diagnostics_are_listed_with_their_reasons() -> None:
    assert all(line.label != "Not computed" for line in status_lines(LATE))  # no "unavailable" key
    assert all(line.label != "Not computed" for line in status_lines({**LATE, "unavailable": {}}))
    reason = "no held-out data for the ergodic gap (num_test_probes=0)"
    summary = {**LATE, "unavailable": {"ergodic_gap": reason, "ergodic_gap_se": reason, "probe_test_loss": reason,
                                       "grad_norm": "manual optimization: no gradients at the snapshot steps",
                                       "update_size": "manual optimization: no gradients at the snapshot steps"}}
    assert f"`ergodic_gap` (main model) not measured: {reason}" in _line(summary, "Generalization gap")
    missing = _line(summary, "Not computed")
    assert missing.startswith("2 diagnostics.")
    assert "`grad_norm`, `update_size`: manual optimization: no gradients at the snapshot steps" in missing
    assert "probe_test_loss" not in missing  # explained on the gap line
    assert "grad_norm, update_size: manual optimization" in status_text(summary)


def test_nonfinite_counts_and_odd_input() -> None:
    assert "3 training losses and 1 probe loss NaN/Inf, left out" in _line(
        {"nonfinite_losses": 3, "nonfinite_probe_losses": 1}, "Non-finite values")
    assert all(line.label != "Non-finite values" for line in status_lines({"nonfinite_losses": 0}))
    for odd in ({}, {"unavailable": "not a dict", "geweke_z": float("nan"), "stationary": None, "sas_max": "x"}):
        assert status_markdown(odd) and status_text(odd) and status_html(odd)


def test_renderers_share_the_lines() -> None:
    summary = {**LATE, **REPLICAS, "sas_max": 0.12, "sas_max_se": 0.05, "sas_max_null": 0.1, "sas_resolved": False,
               "unavailable": {"grad_norm": "a <b> & c"}}
    md = status_markdown(summary).splitlines()
    labels = [line.label for line in status_lines(summary)]
    assert [re.match(r"- \*\*(.+?):\*\*", m).group(1) for m in md if m.startswith("- ")] == labels
    assert any(m.startswith("    - `sas_max` 0.12 ± 0.05") for m in md)
    text = status_text(summary)
    assert "`" not in text and "sas_max 0.12 ± 0.05" in text and text.splitlines()[0].startswith("Late phase")
    page = status_html(summary)
    assert "<code>sas_max</code>" in page and "a &lt;b&gt; &amp; c" in page and "<b>Late phase:</b>" in page


def test_flags_go_to_text_not_tensorboard_scalars() -> None:
    summary = {**LATE, "sas_resolved": False, "sas_max_resolved": True, "sas_converged": True, "loss_mean": 0.3,
               "loss_se": 0.01, "ergodic_gap_source": "validation", "layers": {"net.0": 2.0}}
    for key in ("late_phase_found", "stationary", "lr_constant_in_late_phase", "sas_resolved", "sas_max_resolved"):
        assert is_flag(key, summary[key])
    assert not is_flag("loss_mean", 0.3) and is_flag("anything", True)
    everything = scalars_from_summary(summary)  # other loggers: flags as 0/1, as before
    assert everything[tag_for("late_phase_found")] == 1.0 and everything[tag_for("sas_resolved")] == 0.0
    assert everything["sas/other/sas_max_resolved"] == 1.0
    tensorboard = scalars_from_summary(summary, flags=False)
    assert set(everything) - set(tensorboard) == {tag_for(k) for k in FLAG_KEYS | {"sas_max_resolved"} if k in summary}
    assert tensorboard["sas/loss/time_average"] == 0.3 and "sas/loss/time_average_lower" in tensorboard
    assert "sas/layers/norm/net.0" in tensorboard and not any("source" in t for t in tensorboard)


def test_overview_layout_first_and_no_flag_charted() -> None:
    layout = custom_scalars_layout()
    assert list(layout) == [OVERVIEW, "Loss dynamics", "Oscillation", "Weights", "SAS"]
    assert len(layout[OVERVIEW]) == len(OVERVIEW_CHARTS) <= 6
    # listed in reverse: TensorBoard shows a category's margin charts in reverse order
    assert list(layout[OVERVIEW]) == [title for title, _keys in reversed(OVERVIEW_CHARTS)]
    gaps = next(c for t, c in layout[OVERVIEW].items() if "stability gap" in t)
    assert gaps == ["Margin", ["sas/sas/stability_gap", "sas/sas/stability_gap_lower", "sas/sas/stability_gap_upper",
                               "sas/sas/control_heldout_gap", "sas/sas/control_heldout_gap_lower",
                               "sas/sas/control_heldout_gap_upper",
                               "sas/sas/ergodic_gap", "sas/sas/ergodic_gap_lower", "sas/sas/ergodic_gap_upper"]]
    flag_tags = [tag_for(k) for k in FLAG_KEYS] + ["sas/other/sas_max_resolved"]
    for group in layout.values():
        for title, (kind, tags) in group.items():
            for tag in tags:
                assert tag not in flag_tags, (title, tag)
                if kind == "Multiline":
                    assert tag.startswith("^") and tag.endswith("$")
                    assert not [f for f in flag_tags if re.search(tag, f)], (title, tag)
    proto = layout_proto(layout, opened=OPEN_CATEGORIES)
    assert [c.title for c in proto.category] == list(layout)
    assert [c.closed for c in proto.category] == [False, True, True, True, True]
    series = {c.title: len(c.margin.series) for c in proto.category[0].chart}
    assert series == {title: len(keys) for title, keys in OVERVIEW_CHARTS}  # margin charts only
    with pytest.raises(ValueError, match="triples"):
        layout_proto({"x": {"bad": ["Margin", ["a", "b"]]}})


def test_formatting_is_one_module() -> None:
    """``cli`` and ``html_report`` share ``lightning_sas.formatting``; ``cli.format_table`` stays."""
    import ast
    import inspect

    import lightning_sas.cli as cli
    import lightning_sas.html_report as html_report
    from lightning_sas.formatting import format_table, format_value

    assert cli.format_table is format_table
    assert format_value(None) == "n/a" and format_value(True) == "yes" and format_value(0.123456) == "0.1235"
    assert format_value(float("inf")) == "n/a" and format_value({"a": 1.0}) == "a=1"
    for module in (cli, html_report):
        tree = ast.parse(inspect.getsource(module))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lightning_sas"):
                assert node.module != "lightning_sas.cli" or module is cli, (module.__name__, node.module)
                assert not [a.name for a in node.names if a.name.startswith("_")], (module.__name__, node.module)


def test_report_status_merges_the_stored_summary() -> None:
    """``summarize_run`` rebuilds the streams' keys; the SAS keys and ``unavailable`` come from summary.json."""
    from lightning_sas.cli import report_summary

    stored = {"late_phase_found": False, "sas_max": 0.3, "sas_max_se": 0.01, "sas_max_null": 0.05, "sas_resolved": True,
              "replicas": 4, "unavailable": {"grad_norm": "manual optimization"}}
    run = SimpleNamespace(streams={}, meta={}, summary=stored, root=".")
    table, for_status = report_summary(run)
    assert "sas_max" not in table and for_status["sas_max"] == 0.3
    assert for_status["late_phase_found"] is False
    assert for_status["unavailable"]["grad_norm"] == "manual optimization"  # the live reason is kept
    assert "sas_max" not in for_status["unavailable"]  # filled from summary.json: not missing
    assert _line(for_status, "SAS estimate").startswith("`sas_max` resolved (")
    # with replicas, the status compares stability_gap with the live control_heldout_gap; ergodic_gap
    # is the main model's in the table and in the status alike
    live = {**stored, "stability_gap": 0.2, "stability_gap_se": 0.05, "control_heldout_gap": 0.25,
            "control_heldout_gap_se": 0.01, "ergodic_gap": 2.9, "ergodic_gap_se": 0.1, "ergodic_gap_source": "validation"}
    rebuilt = {"ergodic_gap": 3.0, "ergodic_gap_se": 0.1, "ergodic_gap_source": "validation"}
    with mock.patch("lightning_sas.diagnostics.summarize_run", return_value=rebuilt):
        table, for_status = report_summary(SimpleNamespace(streams={}, meta={}, summary=live, root="."))
    assert table["ergodic_gap"] == 3.0 and for_status["ergodic_gap"] == 3.0
    assert for_status["control_heldout_gap"] == 0.25
    gaps = _line(for_status, "Generalization gap")
    assert "vs `control_heldout_gap` 0.25 ± 0.01" in gaps and "they agree within 2 combined SE" in gaps
    table, for_status = report_summary(SimpleNamespace(streams={}, meta={}, summary=None, root="."))
    assert _line(for_status, "SAS estimate").startswith("replicas off")


def test_layout_falls_back_to_add_custom_scalars() -> None:
    """A writer without torch's event file (e.g. tensorboardX) gets the single-series layout, in a
    form ``add_custom_scalars`` accepts: a two-series margin chart becomes anchored multiline tags."""
    from torch.utils.tensorboard.summary import custom_scalars

    from lightning_sas.loggers.export import write_layout

    received: list[Any] = []

    class Writer:
        def add_custom_scalars(self, layout: Any) -> None:
            custom_scalars(layout)  # raises on a margin chart without exactly three tags
            received.append(layout)

    class TensorBoardLogger:
        experiment = Writer()

    write_layout(SimpleNamespace(loggers=[TensorBoardLogger()]))
    (layout,) = received
    assert list(layout) == list(custom_scalars_layout())
    gaps = next(c for t, c in layout[OVERVIEW].items() if "stability gap" in t)
    assert gaps[0] == "Multiline" and "^sas/sas/ergodic_gap_upper$" in gaps[1]
