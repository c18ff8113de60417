"""One window for every statistic: the loss statistics, the probes, ``ergodic_gap`` and the SAS
estimate all average over the late phase when it is found, else over the second half of the
stream, and never over the probe of the untrained model (entry 0); the status names the window."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from conftest import TinyClassifier, loaders, trainer_kwargs
from lightning_sas import SASMonitor, SASReplicas
from lightning_sas.diagnostics import probe_window_start, statistics_window_start, summarize_run
from lightning_sas.loggers.status import status_text
from lightning_sas.stats.sas import heldout_gap, sas_statistics
from lightning_sas.store import read_run


def _cross_entropy(module: Any, batch: Any) -> torch.Tensor:
    x, y = batch
    return torch.nn.functional.cross_entropy(module(x), y, reduction="none")


def _fit(tmp_path: Any, monkeypatch: pytest.MonkeyPatch, found: bool, replicas: bool = False) -> SASMonitor:
    """A 400-step run probed every 50 steps (entries 0, 50, ..., 350). ``found=False``: MSER is
    made to find no late phase (a run still trending); ``found=True``: the late phase is fixed at
    step 130 (``late_phase_start``)."""
    if not found:
        import lightning_sas.diagnostics as diagnostics

        monkeypatch.setattr(diagnostics, "late_phase_from_blocks", lambda arrays: None)
    pl.seed_everything(0, verbose=False)
    kwargs: dict[str, Any] = {}
    if replicas:
        kwargs["replicas"] = SASReplicas(replicas=2, swaps=2, loss_fn=_cross_entropy, probe_every=10, num_train_probes=16,
                                         num_heldout_probes=16, batch_size=32)
    monitor = SASMonitor(flush_every=100, probe_every=50, num_train_probes=32, num_test_probes=32, figure_every=0,
                         store=str(tmp_path / "run"), late_phase_start=130 if found else None, **kwargs)
    train, val = loaders(shuffle=True)
    pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_steps=400, limit_val_batches=1.0)).fit(
        TinyClassifier(), train, val)
    return monitor


def _probe_figures(tmp_path: Any, from_step: int) -> tuple[float, float]:
    """``(probe_train_loss, ergodic_gap)`` by hand from the stored probe rows at or after ``from_step``."""
    run = read_run(tmp_path / "run")
    probes = run.streams["probes"]
    n_train, n_test = int(run.meta["probe_num_train"]), int(run.meta["probe_num_test"])
    rows = probes["losses"][probes["step"] >= from_step]
    train = rows[:, :n_train].mean()
    test = rows[:, n_train : n_train + n_test].mean()
    return float(train), float(test - train)


@pytest.mark.parametrize("found", [False, True], ids=["no late phase: second half", "late phase found"])
def test_probes_and_ergodic_gap_use_the_loss_window(tmp_path: Any, monkeypatch: pytest.MonkeyPatch, found: bool) -> None:
    monitor = _fit(tmp_path, monkeypatch, found)
    summary = monitor.summary()
    assert summary["late_phase_found"] is found
    start = summary["window_start"]
    if found:
        assert summary["window"] == "late phase" and start == 130
    else:
        assert summary["window"] == "second half" and summary["late_phase_start"] is None
        assert 150 <= start <= 250  # the block that opens the second half of 400 steps
    # the probes at entries 0, 50, ... : only those inside the window count, never entry 0
    train, gap = _probe_figures(tmp_path, from_step=start)
    assert summary["probe_train_loss"] == pytest.approx(train, rel=1e-9)
    assert summary["ergodic_gap"] == pytest.approx(gap, rel=1e-9)
    with_untrained = _probe_figures(tmp_path, from_step=0)
    assert summary["probe_train_loss"] != pytest.approx(with_untrained[0], rel=1e-3)  # the old code's figure
    # the report rebuilds the same window from the stored streams
    rebuilt = summarize_run(read_run(tmp_path / "run"))
    assert rebuilt["window_start"] == start and rebuilt["window"] == summary["window"]
    assert rebuilt["ergodic_gap"] == pytest.approx(summary["ergodic_gap"], rel=1e-9)
    # the status names the window
    status = status_text(summary)
    assert ("window: the late phase" if found else f"window: the second half of the stream, from step {start}") in status
    assert "over the " + summary["window"] in status


@pytest.mark.parametrize("found", [False, True], ids=["no late phase: second half", "late phase found"])
def test_sas_estimate_uses_the_loss_window(tmp_path: Any, monkeypatch: pytest.MonkeyPatch, found: bool) -> None:
    """The replicas fork at the start (step 0) and probe every 10 steps: the estimate and the
    control's held-out gap average over the same window as the loss, never the step-0 probe."""
    monitor = _fit(tmp_path, monkeypatch, found, replicas=True)
    summary = monitor.summary()
    start = summary["window_start"]
    metric = monitor.replicas.metric
    layout = metric.layout
    blocks = metric.replica_block_means(None)
    assert blocks["starts"][0] == 0  # the untrained replicas were probed ...
    keep = blocks["starts"] >= start  # ... but only the window counts
    assert 0 < keep.sum() < len(keep)
    expected = sas_statistics(blocks["perturbed"][:, keep], blocks["control"][:, keep], blocks["counts"][keep],
                              layout.removed_columns, layout.added_columns, layout.heldout_columns)
    for key in ("sas_max", "sas_mean", "stability_gap", "stability_gap_se"):
        assert summary[key] == pytest.approx(expected[key], rel=1e-9), key
    everything = sas_statistics(blocks["perturbed"], blocks["control"], blocks["counts"], layout.removed_columns,
                                layout.added_columns, layout.heldout_columns)
    assert summary["sas_mean"] != pytest.approx(everything["sas_mean"], rel=1e-6)  # the old code's figure
    gap = heldout_gap(blocks["control_full"][keep], blocks["counts"][keep], layout.control_train_columns(),
                      layout.heldout_columns)
    assert summary["control_heldout_gap"] == pytest.approx(gap["gap"], rel=1e-9)
    # one meaning per key: ergodic_gap stays the main model's (validation probes)
    assert summary["ergodic_gap_source"].startswith("validation")
    assert summary["ergodic_gap"] == pytest.approx(_probe_figures(tmp_path, from_step=start)[1], rel=1e-9)
    assert summary["ergodic_gap"] != pytest.approx(summary["control_heldout_gap"], rel=1e-6)


def test_window_start_helpers() -> None:
    starts = np.asarray([0, 10, 20, 30, 40, 50])
    assert statistics_window_start(starts, 25) == 25
    assert statistics_window_start(starts, None) == 30  # the block that opens the second half
    assert statistics_window_start(starts[:0], None) is None
    assert probe_window_start(0, starts) == 1  # never the probe at entry 0
    assert probe_window_start(None, [0, 50]) == 50  # a probe part on its own: its own second half
    assert probe_window_start(None, [0]) == 1


def test_a_run_shorter_than_the_probe_cadence_reports_no_gap(tmp_path: Any) -> None:
    """50 steps, probes every 200 (replicas every 100): the only probes are those of the untrained
    model at step 0, so no gap is reported, with the reason, instead of a gap of the untrained model
    that the status called "measured"."""
    pl.seed_everything(0, verbose=False)
    replicas = SASReplicas(replicas=2, swaps=2, loss_fn=_cross_entropy, probe_every=100, num_train_probes=8,
                           num_heldout_probes=8, batch_size=32)
    monitor = SASMonitor(flush_every=50, probe_every=200, figure_every=0, store=False, replicas=replicas)
    train, val = loaders()
    pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_steps=50, limit_val_batches=1.0)).fit(
        TinyClassifier(), train, val)
    summary = monitor.summary()
    for key in ("ergodic_gap", "probe_train_loss", "sas_max", "stability_gap", "control_heldout_gap"):
        assert summary[key] is None, key
        assert "no " in summary["unavailable"][key] and "inside the statistics window" in summary["unavailable"][key]
    status = status_text(summary)
    assert "(main model, measured" not in status
    assert "not measured: no probe evaluation inside the statistics window" in status
