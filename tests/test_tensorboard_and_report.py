"""TensorBoard events (scalars, status text, histograms, figures, layout, hparams) and the offline report."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import TinyClassifier, loaders, trainer_kwargs
from lightning_sas import SASMonitor
from lightning_sas.cli import main as cli_main
from lightning_sas.loggers.status import STATUS_TAG
from lightning_sas.loggers.tags import FLAG_KEYS, OVERVIEW, custom_scalars_layout, tag_for
from lightning_sas.store import read_run


class HparamsClassifier(TinyClassifier):
    def __init__(self, lr: float = 0.1) -> None:
        super().__init__(lr=lr)
        self.save_hyperparameters()


@pytest.fixture(scope="module")
def tb_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, SASMonitor]:
    tmp = tmp_path_factory.mktemp("tb")
    train, val = loaders()
    monitor = SASMonitor(flush_every=50, figure_every=2, figure_budget=0)
    logger = TensorBoardLogger(str(tmp), name="run")
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp, max_steps=400, logger=logger, limit_val_batches=1.0))
    trainer.fit(HparamsClassifier(), train, val)
    return logger.log_dir, monitor


def _events(log_dir: str) -> EventAccumulator:
    acc = EventAccumulator(log_dir, size_guidance={"scalars": 0, "histograms": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_scalars_histograms_and_figures_in_events(tb_run: tuple[str, SASMonitor]) -> None:
    log_dir, monitor = tb_run
    tags = _events(log_dir).Tags()
    for tag in ("sas/loss/time_average", "sas/loss/time_average_lower", "sas/oscillation/iat",
                "sas/oscillation/ess", "sas/weights/norm", "sas/weights/distance_from_init", "sas/sas/ergodic_gap"):
        assert tag in tags["scalars"], tag
    assert "sas/probes/time_avg_loss_test" in tags["histograms"]
    assert "sas/weights/update_size_per_layer" in tags["histograms"]
    for tag in ("sas/figures/loss_stream", "sas/figures/acf", "sas/figures/periodogram", "sas/figures/sketch_trajectory"):
        assert tag in tags["images"], tag
    values = [e.value for e in _events(log_dir).Scalars("sas/loss/time_average")]
    assert len(values) == 8  # one per flush
    assert values[-1] == pytest.approx(monitor.summary()["loss_mean"])


def test_flags_are_status_text_not_scalars(tb_run: tuple[str, SASMonitor]) -> None:
    """0/1 flags never reach TensorBoard as scalars; the markdown status (text plugin) says them,
    rewritten at every flush."""
    log_dir, monitor = tb_run
    acc = _events(log_dir)
    scalars = acc.Tags()["scalars"]
    for key in FLAG_KEYS:
        assert tag_for(key) not in scalars, key
    assert not [t for t in scalars if "resolved" in t or "converged" in t]
    text_tag = f"{STATUS_TAG}/text_summary"  # SummaryWriter.add_text's name for it
    assert text_tag in acc.Tags()["tensors"]
    events = acc.Tensors(text_tag)
    assert len(events) == 8  # one per flush
    status = events[-1].tensor_proto.string_val[0].decode()
    summary = monitor.summary()
    assert status.startswith("- **Late phase:**")
    if summary["late_phase_found"]:
        assert f"since step {summary['late_phase_start']}" in status
    assert "**Stationarity:**" in status and "**Learning rate:** constant in the late phase" in status
    assert "`ergodic_gap`" in status and "replicas off" in status


def test_custom_scalars_layout_and_hparams_merged(tb_run: tuple[str, SASMonitor]) -> None:
    from tensorboard.plugins.custom_scalar import metadata as cs_metadata
    from tensorboard.plugins.hparams import plugin_data_pb2

    log_dir, _ = tb_run
    acc = _events(log_dir)
    tensors = acc.Tags()["tensors"]
    assert cs_metadata.CONFIG_SUMMARY_TAG in tensors
    layout = custom_scalars_layout()
    assert list(layout) == [OVERVIEW, "Loss dynamics", "Oscillation", "Weights", "SAS"]
    from tensorboard.plugins.custom_scalar import layout_pb2

    stored = layout_pb2.Layout.FromString(acc.Tensors(cs_metadata.CONFIG_SUMMARY_TAG)[0].tensor_proto.string_val[0])
    assert [c.title for c in stored.category] == list(layout)
    assert [c.closed for c in stored.category] == [False, True, True, True, True]  # details one click away
    assert max(len(c.margin.series) for c in stored.category[0].chart) == 3  # the gaps, band against band
    margins = [chart for group in layout.values() for chart in group.values() if chart[0] == "Margin"]
    scalar_tags = set(acc.Tags()["scalars"])
    for _kind, tags in margins[:2]:
        assert set(tags) <= scalar_tags
    # one hparams session, holding the user's and our hparams
    from pathlib import Path

    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    sessions = [
        v.metadata.plugin_data.content
        for f in Path(log_dir).glob("events*")
        for e in EventFileLoader(str(f)).Load()
        for v in e.summary.value
        if v.tag == "_hparams_/session_start_info"
    ]
    assert len(sessions) == 1
    info = plugin_data_pb2.HParamsPluginData.FromString(sessions[0]).session_start_info
    assert "lr" in info.hparams and "sas/flush_every" in info.hparams
    # ours are in the TensorBoard session only, not in the hparams.yaml that reloads the model
    saved = (Path(log_dir) / "hparams.yaml").read_text()
    assert "lr" in saved and "sas/" not in saved


def test_report_reproduces_live_summary(tb_run: tuple[str, SASMonitor], tmp_path: Any, capsys: pytest.CaptureFixture) -> None:
    log_dir, monitor = tb_run
    assert cli_main(["report", log_dir, "--json", "--out", str(tmp_path)]) == 0
    offline = json.loads(capsys.readouterr().out)
    stored = json.loads((read_run(log_dir).root / "summary.json").read_text())
    assert offline == stored
    for name in ("loss_stream.png", "acf.png", "periodogram.png", "sketch_trajectory.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli_main(["report", log_dir, "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "late_phase_start" in text
    # the status heads the report, before the table
    assert text.index("Status") < text.index("Late phase") < text.index("replicas off") < text.index("Diagnostics")
    assert text.index("Diagnostics") < text.index("late_phase_start")


def test_report_on_missing_directory_is_a_clean_error(tmp_path: Any, capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["report", str(tmp_path / "nope")]) == 2
    assert "not a lightning-sas run directory" in capsys.readouterr().err


def test_csv_logger_gets_the_scalars(tmp_path: Any) -> None:
    train, val = loaders()
    logger = CSVLogger(str(tmp_path), name="csv")
    monitor = SASMonitor(flush_every=40, figure_every=1)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_steps=120, logger=logger, limit_val_batches=1.0))
    trainer.fit(TinyClassifier(), train, val)
    header = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    assert "sas/loss/time_average" in header and "sas/weights/norm" in header
    # loggers without a text panel keep the flags as 0/1 numbers
    assert "sas/loss/late_phase_found" in header and "sas/oscillation/stationary" in header


def test_validate_and_test_do_nothing(tmp_path: Any) -> None:
    train, val = loaders()
    monitor = SASMonitor(flush_every=10, store=False)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_steps=5, limit_val_batches=1.0))
    module = TinyClassifier()
    trainer.validate(module, val)
    assert monitor.summary()["steps"] is None
    assert not (tmp_path / "sas").exists()


def test_histograms_are_finite_numbers(tb_run: tuple[str, SASMonitor]) -> None:
    log_dir, _ = tb_run
    hist = _events(log_dir).Histograms("sas/probes/time_avg_loss_test")[-1].histogram_value
    assert hist.num > 0 and np.isfinite(hist.sum)


def test_progress_bar_shows_iat_and_gap(tmp_path: Any) -> None:
    train, val = loaders()
    monitor = SASMonitor(flush_every=20, store=False, figure_every=0, progress_bar=True, probe_every=5)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_steps=60, limit_val_batches=1.0))
    trainer.fit(TinyClassifier(), train, val)
    shown = trainer.progress_bar_metrics
    assert "sas_iat" in shown and "sas_gap" in shown
    assert shown["sas_gap"] == pytest.approx(monitor.summary()["ergodic_gap"], rel=1e-5)


def test_html_report_is_self_contained(tb_run: tuple[str, SASMonitor], tmp_path: Any) -> None:
    log_dir, _ = tb_run
    page = tmp_path / "out.html"
    assert cli_main(["report", log_dir, "--out", str(tmp_path), "--html", str(page)]) == 0
    text = page.read_text()
    assert text.count("data:image/png;base64,") == 4
    assert "Integrated autocorrelation time" in text and "src='http" not in text
    assert text.index("<h2>Status</h2>") < text.index("<b>Late phase:</b>") < text.index("<h2>Diagnostics</h2>")
    assert "replicas off" in text


def test_hparams_are_merged_once_per_logger() -> None:
    """Hooking the same logger twice merges once; every new logger is hooked (no id-keyed memory)."""
    received: list[dict[str, Any]] = []

    class TensorBoardLogger:  # the merge is for TensorBoard loggers (by class name, either namespace)
        def log_hyperparams(self, params: Any) -> None:
            received.append(dict(params))

    class CSVLogger(TensorBoardLogger.__base__):  # type: ignore[misc]
        def log_hyperparams(self, params: Any) -> None:
            received.append(dict(params))

    class FakeTrainer:
        def __init__(self) -> None:
            self.loggers = [TensorBoardLogger()]

    monitor = SASMonitor(flush_every=7)
    for _ in range(3):
        trainer = FakeTrainer()
        monitor._hook_hparams(trainer)
        monitor._hook_hparams(trainer)
        trainer.loggers[0].log_hyperparams({"lr": 0.1})
        del trainer
    assert len(received) == 3
    assert all(r["lr"] == 0.1 and r["sas/flush_every"] == 7 for r in received)
    # other loggers keep the user's hparams as they are
    other = FakeTrainer()
    other.loggers = [CSVLogger()]
    monitor._hook_hparams(other)
    other.loggers[0].log_hyperparams({"lr": 0.2})
    assert received[-1] == {"lr": 0.2}
