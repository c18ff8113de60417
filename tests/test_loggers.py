"""Every logger a project may have: MLflow (SQLite), W&B offline, CSV, TensorBoard + CSV.

Each is fitted for real and read back from the backend: every ``sas/...`` scalar arrives under
the name we sent (a name the logger accepts unchanged), the status text and the figures reach the
loggers that hold them, the monitor's settings reach each logger's hyperparameters once, and the
run store goes to the documented place (one line says where when the logger has no log directory).
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

from conftest import TinyClassifier, loaders, trainer_kwargs
from lightning_sas import SASMonitor
from lightning_sas.cli import main as cli_main
from lightning_sas.loggers import FigureSchedule
from lightning_sas.loggers.tags import LAYER_NORM_PREFIX, layer_tags, scalars_from_summary
from lightning_sas.store import read_run

#: the figures of a run with a validation set and no replicas
FIGURES = ("loss_stream", "acf", "periodogram", "sketch_trajectory")
#: parameter names that need cleaning, two of them to the same name as a third that needs none
ODD_NAMES = ("a:b", "a;b", "a_b")
ODD_TAGS = {f"extra.{n}": LAYER_NORM_PREFIX + t for n, t in zip(ODD_NAMES, ("extra.a_b_2", "extra.a_b_3", "extra.a_b"))}
STEPS, FLUSH = 60, 20


class OddNames(TinyClassifier):
    """``TinyClassifier`` with parameters named ``extra.a:b``, ``extra.a;b`` and ``extra.a_b``;
    ``log_hparams=False`` saves the hyperparameters without logging them."""

    def __init__(self, lr: float = 0.1, log_hparams: bool = True) -> None:
        super().__init__(lr=lr)
        self.save_hyperparameters(logger=log_hparams)
        self.extra = torch.nn.ParameterDict({n: torch.nn.Parameter(torch.full((3,), 0.5)) for n in ODD_NAMES})

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        penalty = sum(p.pow(2).sum() for p in self.extra.values())
        return torch.nn.functional.cross_entropy(self(x), y) + 1e-3 * penalty


def frozen_clock_monitor(**kwargs: Any) -> SASMonitor:
    """A monitor whose figure budget never allows a live set (its clock stands still): the only
    figures are the final set at the end of the fit, deterministically."""
    monitor = SASMonitor(flush_every=FLUSH, probe_every=10, sketch_every=10, snapshot_every=10, **kwargs)
    monitor.figure_schedule = FigureSchedule(1, 0.005, clock=lambda: 0.0)
    return monitor


def fit(tmp_path: Path, logger: Any, module: pl.LightningModule | None = None, monitor: SASMonitor | None = None) -> SASMonitor:
    monitor = monitor or frozen_clock_monitor()
    train, val = loaders()
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_steps=STEPS, logger=logger,
                                                               limit_val_batches=1.0))
    trainer.fit(module or OddNames(), train, val)
    return monitor


def sent_scalars(monitor: SASMonitor, flags: bool = True) -> dict[str, float]:
    """The scalars of the monitor's last flush, as it sends them."""
    return scalars_from_summary(monitor.summary(), flags=flags)


# -- tag names ------------------------------------------------------------------------------------
def test_layer_tags_are_clean_and_distinct() -> None:
    names = ["net.0.weight", "a:b", "a;b", "a_b", "a b", "x/y", "..", "ü"]
    tags = layer_tags(names)
    assert tags["net.0.weight"] == "sas/layers/norm/net.0.weight"  # clean names keep their tag
    assert tags["a_b"] == "sas/layers/norm/a_b"
    assert len(set(tags.values())) == len(names)
    for tag in tags.values():
        name = tag.removeprefix(LAYER_NORM_PREFIX)
        assert name and set(name) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-"), tag
        assert name.strip(".")  # MLflow refuses a path segment of dots
    # the mapping depends on the set of names, not their order: a layer keeps its tag at every flush
    assert layer_tags(list(reversed(names))) == tags


def test_summary_layer_names_that_sanitize_alike_get_distinct_tags() -> None:
    scalars = scalars_from_summary({"layers": {"extra.a:b": 1.0, "extra.a;b": 2.0, "extra.a_b": 3.0}})
    assert {scalars[t] for t in ODD_TAGS.values()} == {1.0, 2.0, 3.0}


def test_margin_bands_are_the_summary_intervals() -> None:
    """A key with ``<key>_lower``/``<key>_upper`` in the summary gets them as its band (under the
    value's tag, never ``sas/other/``); without them the band is value ± t SE."""
    summary = {"stability_gap": 0.4, "stability_gap_se": 0.1, "stability_gap_lower": 0.15, "stability_gap_upper": 0.9,
               "sas_critical_t": 3.18, "sas_max": 2.0, "sas_max_se": 0.5, "sas_replaced": 1.0, "sas_replaced_se": 0.1,
               "sas_replaced_lower": 0.7, "sas_replaced_upper": 1.4}
    scalars = scalars_from_summary(summary)
    assert scalars["sas/sas/stability_gap_lower"] == 0.15 and scalars["sas/sas/stability_gap_upper"] == 0.9
    assert scalars["sas/sas/sas_max_lower"] == pytest.approx(2.0 - 3.18 * 0.5)  # no interval: ± t SE
    assert scalars["sas/sas/sas_replaced_lower"] == 0.7 and scalars["sas/sas/sas_replaced_upper"] == 1.4
    assert not [tag for tag in scalars if tag.startswith("sas/other/") and tag.endswith(("_lower", "_upper"))]
    # a damaged end (None, NaN) falls back to ± t SE
    scalars = scalars_from_summary({**summary, "stability_gap_lower": float("nan")})
    assert scalars["sas/sas/stability_gap_lower"] == pytest.approx(0.4 - 3.18 * 0.1)


# -- MLflow ---------------------------------------------------------------------------------------
class CountingHparams:
    """Logger mixin: records every ``log_hyperparams`` call."""

    def log_hyperparams(self, params: Any) -> None:
        self.hparams_calls = getattr(self, "hparams_calls", []) + [dict(params)]
        super().log_hyperparams(params)  # type: ignore[misc]


def test_mlflow_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                       capsys: pytest.CaptureFixture) -> None:
    mlflow = pytest.importorskip("mlflow", reason="mlflow is not installed (pip install -e '.[loggers]')")
    from pytorch_lightning.loggers import MLFlowLogger

    monkeypatch.chdir(tmp_path)  # anything MLflow writes by default lands here
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logger = type("CountingMLFlowLogger", (CountingHparams, MLFlowLogger), {})(
        experiment_name="sas", tracking_uri=uri, artifact_location=str(tmp_path / "artifacts"))
    with caplog.at_level(logging.WARNING, logger="lightning_sas"):
        monitor = fit(tmp_path, logger)
    run_id = logger.run_id
    run = mlflow.tracking.MlflowClient(uri).get_run(run_id)
    # every scalar under the name we sent (Lightning's MLFlowLogger strips other characters)
    sent = sent_scalars(monitor)
    assert set(sent) <= set(run.data.metrics), set(sent) - set(run.data.metrics)
    assert set(ODD_TAGS.values()) <= set(run.data.metrics)
    assert run.data.metrics["sas/loss/time_average"] == pytest.approx(sent["sas/loss/time_average"])
    # the settings and the module's hyperparameters, in one call
    assert run.data.params["sas/flush_every"] == str(FLUSH) and run.data.params["lr"] == "0.1"
    ours = [call for call in logger.hparams_calls if any(k.startswith("sas/") for k in call)]
    assert len(ours) == 1 and "lr" in ours[0]
    # the status text and the final figure set as artifacts
    client = mlflow.tracking.MlflowClient(uri)
    status = Path(client.download_artifacts(run_id, "sas/status.md", str(tmp_path / "dl"))).read_text()
    assert status.startswith("- **Late phase:**") and "**Figures:** live figures skipped" in status
    folders = [a.path for a in client.list_artifacts(run_id, "sas/figures")]
    assert folders == [f"sas/figures/step_{STEPS:08d}"]  # one set: the final one
    pngs = {Path(a.path).name for a in client.list_artifacts(run_id, folders[0])}
    assert pngs == {f"{name}.png" for name in FIGURES}
    # no log directory: the store goes to default_root_dir/lightning_sas/<run id>, and one line says so
    store = tmp_path / "lightning_sas" / run_id
    assert (store / "meta.json").is_file()
    said = [r.getMessage() for r in caplog.records if r.name == "lightning_sas"]
    assert len(said) == 1 and str(store) in said[0] and "store=" in said[0]
    assert read_run(store).meta["config"]["flush_every"] == FLUSH
    capsys.readouterr()
    assert cli_main(["report", str(tmp_path), "--json", "--out", str(tmp_path / "report")]) == 0  # found below
    assert json.loads(capsys.readouterr().out)["steps"] == STEPS


# -- W&B ------------------------------------------------------------------------------------------
def test_wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    wandb = pytest.importorskip("wandb", reason="wandb is not installed (pip install -e '.[loggers]')")
    from pytorch_lightning.loggers import WandbLogger

    for key, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true",
                       "WANDB_CONSOLE": "off", "WANDB_CONFIG_DIR": str(tmp_path / "config"),
                       "WANDB_CACHE_DIR": str(tmp_path / "cache")}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    logger = type("CountingWandbLogger", (CountingHparams, WandbLogger), {})(project="sas", offline=True,
                                                                             save_dir=str(tmp_path))
    run = logger.experiment
    logged: list[dict[str, Any]] = []
    real_log = run.log
    # a spy that passes everything on to the real (offline) run
    monkeypatch.setattr(run, "log", lambda data, *a, **k: (logged.append(dict(data)), real_log(data, *a, **k))[1])
    try:
        with caplog.at_level(logging.WARNING, logger="lightning_sas"):
            # the module saves its hyperparameters without logging them: ours go on their own, once
            monitor = fit(tmp_path, logger, module=OddNames(log_hparams=False))
        run_dir = Path(run.dir).parent
        run_id = run.id
        config = dict(run.config)
    finally:
        wandb.finish()
    keys = {k for entry in logged for k in entry}
    assert set(sent_scalars(monitor)) <= keys
    assert set(ODD_TAGS.values()) <= keys
    last = [e for e in logged if "sas/loss/time_average" in e][-1]
    assert last["sas/loss/time_average"] == pytest.approx(sent_scalars(monitor)["sas/loss/time_average"])
    assert config["sas/flush_every"] == FLUSH
    ours = [call for call in logger.hparams_calls if any(k.startswith("sas/") for k in call)]
    assert len(ours) == 1 and "lr" not in ours[0]  # Lightning logged none: ours alone, once
    # the status as a text table at every flush, the figures as images: read back from the run's files
    tables = sorted((run_dir / "files" / "media" / "table" / "sas").glob("status_*.table.json"))
    assert len(tables) == STEPS // FLUSH
    data = json.loads(tables[-1].read_text())
    assert data["columns"] == ["step", "status"] and data["data"][0][1].startswith("- **Late phase:**")
    images = {p.name.rsplit("_", 2)[0] for p in (run_dir / "files" / "media" / "images" / "sas" / "figures").glob("*.png")}
    assert images == set(FIGURES)
    store = tmp_path / "lightning_sas" / run_id
    assert (store / "meta.json").is_file()
    said = [r.getMessage() for r in caplog.records if r.name == "lightning_sas"]
    assert len(said) == 1 and str(store) in said[0]


# -- CSV and TensorBoard + CSV ----------------------------------------------------------------------
def _csv_columns(path: Path) -> set[str]:
    with path.open() as fh:
        return set(next(csv.reader(fh)))


def test_csv(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """CSV holds numbers only: every scalar (flags as 0/1); no status, no figures (the docs say
    so); our settings are in the store's meta.json beside metrics.csv, not in the hparams.yaml
    that reloads the model."""
    logger = CSVLogger(str(tmp_path), name="csv")
    with caplog.at_level(logging.WARNING, logger="lightning_sas"):
        monitor = fit(tmp_path, logger)
    log_dir = Path(logger.log_dir)
    columns = _csv_columns(log_dir / "metrics.csv")
    assert set(sent_scalars(monitor)) <= columns
    assert set(ODD_TAGS.values()) <= columns and "sas/loss/late_phase_found" in columns
    hparams = (log_dir / "hparams.yaml").read_text()
    assert "lr" in hparams and "sas/" not in hparams
    assert read_run(log_dir / "sas").meta["config"]["flush_every"] == FLUSH
    assert not [r for r in caplog.records if r.name == "lightning_sas"]  # the store is where expected: nothing to say


def test_tensorboard_and_csv_at_once(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = TensorBoardLogger(str(tmp_path), name="tb")
    csv_logger = CSVLogger(str(tmp_path), name="csv")
    monitor = fit(tmp_path, [tb, csv_logger])
    events = EventAccumulator(tb.log_dir, size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    assert set(sent_scalars(monitor, flags=False)) <= set(tags["scalars"])
    assert set(ODD_TAGS.values()) <= set(tags["scalars"])
    assert "sas/loss/late_phase_found" not in tags["scalars"]  # a flag: in the status text
    assert set(sent_scalars(monitor)) <= _csv_columns(Path(csv_logger.log_dir) / "metrics.csv")
    for name in FIGURES:  # the final set, at the last step (the trainer's global_step)
        assert [e.step for e in events.Images(f"sas/figures/{name}")] == [STEPS]
    # the store goes to the first logger's log directory, the settings to TensorBoard's hparams once
    assert (Path(tb.log_dir) / "sas" / "meta.json").is_file()
    assert not (Path(csv_logger.log_dir) / "sas").exists()
    assert "sas/" not in (Path(csv_logger.log_dir) / "hparams.yaml").read_text()
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    sessions = [v for f in Path(tb.log_dir).glob("events*") for e in EventFileLoader(str(f)).Load()
                for v in e.summary.value if v.tag == "_hparams_/session_start_info"]
    assert len(sessions) == 1 and b"sas/flush_every" in sessions[0].metadata.plugin_data.content


# -- the final figure set ----------------------------------------------------------------------
@pytest.mark.parametrize("steps", [60, 50], ids=["last-flush-regular", "last-flush-final"])
def test_short_run_has_the_final_figures(tmp_path: Path, steps: int) -> None:
    """With a budget that never lets a live set through, the fit still ends with one figure set
    (at the last step) and the status says that live figures were skipped for the budget."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(str(tmp_path), name="tb")
    monitor = frozen_clock_monitor()
    train, val = loaders()
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_steps=steps, logger=logger, limit_val_batches=1.0))
    trainer.fit(TinyClassifier(), train, val)
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    for name in FIGURES:
        assert [e.step for e in events.Images(f"sas/figures/{name}")] == [steps], name
    status = events.Tensors("sas/status/text_summary")[-1].tensor_proto.string_val[0].decode()
    flushes = -(-steps // FLUSH)
    assert f"live figures skipped at {flushes - (steps % FLUSH != 0)} flushes" in status
    assert monitor.figure_schedule.sets_drawn == 1


def test_figure_every_zero_draws_no_final_set(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(str(tmp_path), name="tb")
    monitor = SASMonitor(flush_every=FLUSH, figure_every=0)
    train, val = loaders()
    pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_steps=40, logger=logger, limit_val_batches=1.0)).fit(
        TinyClassifier(), train, val)
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert events.Tags()["images"] == []


def test_no_logger_and_no_store_says_nothing_is_written(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    monitor = SASMonitor(flush_every=FLUSH, figure_every=0)
    with caplog.at_level(logging.WARNING, logger="lightning_sas"):
        pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_steps=40)).fit(TinyClassifier(), loaders()[0])
    said = [r.getMessage() for r in caplog.records if r.name == "lightning_sas"]
    assert len(said) == 1 and "nothing is written" in said[0] and 'store="DIR"' in said[0], said
    assert monitor.summary()["steps"] == 40
    assert not any(p.name in ("sas", "lightning_sas") for p in tmp_path.rglob("*"))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lightning_sas"):  # store=False: the user chose, nothing to say
        pl.Trainer(callbacks=[SASMonitor(flush_every=FLUSH, figure_every=0, store=False)],
                   **trainer_kwargs(tmp_path, max_steps=20)).fit(TinyClassifier(), loaders()[0])
    assert not [r for r in caplog.records if r.name == "lightning_sas"]



def test_store_location_by_kind_of_logger(tmp_path: Path) -> None:
    """Where ``store=True`` puts the run for each kind of logger, and which get a line."""
    from types import SimpleNamespace

    from lightning_sas.callbacks._common import store_location

    class DummyLogger:  # what fast_dev_run puts in place of the loggers
        pass

    class CometLogger:  # a logger with neither a log directory nor a default of ours
        version = "7"

    class MLFlowLogger:
        version = "ab/../c d"  # cleaned into one path component

    def where(*loggers: Any) -> tuple[Any, Any]:
        return store_location(SimpleNamespace(loggers=list(loggers), default_root_dir=str(tmp_path)))

    assert where(DummyLogger()) == (None, None)
    assert where(CometLogger())[0] is None and "nothing is written: CometLogger has no log directory" in where(CometLogger())[1]
    directory, note = where(CometLogger(), MLFlowLogger())
    assert directory == str(tmp_path / "lightning_sas" / "ab_.._c_d") and directory in note
    assert store_location(SimpleNamespace(loggers=[MLFlowLogger()]), store=False) == (None, None)
    assert store_location(SimpleNamespace(loggers=[]), store=str(tmp_path / "x")) == (str(tmp_path / "x"), None)
