"""Project templates: SASMonitor wired by a Hydra config (lightning-hydra-template's layout), by
LightningCLI and in a plain script, each from the exact snippet of docs/existing-project.md; and
``lightning-sas report DIR`` finding the run(s) below DIR."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl

from conftest import TinyClassifier, loaders
from lightning_sas import SASMonitor
from lightning_sas.cli import find_runs
from lightning_sas.cli import main as cli_main

DOCS = Path(__file__).resolve().parent.parent / "docs" / "existing-project.md"
STEPS = 40


def snippet(title: str) -> str:
    """The code block of docs/existing-project.md with ``title="..."``, verbatim."""
    match = re.search(rf'```\w+ title="{re.escape(title)}"\n(.*?)```', DOCS.read_text(), re.S)
    assert match, f"no snippet titled {title} in {DOCS}"
    return match.group(1)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder holding the docs' ``src/models/losses.py``, importable, as cwd."""
    losses = tmp_path / "src" / "models" / "losses.py"
    losses.parent.mkdir(parents=True)
    for folder in (tmp_path / "src", losses.parent):
        (folder / "__init__.py").write_text("")
    losses.write_text(snippet("src/models/losses.py"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    for name in [m for m in sys.modules if m == "src" or m.startswith("src.")]:
        del sys.modules[name]


class HparamsClassifier(TinyClassifier):
    """As the template's modules: hyperparameters saved, logged by the template itself."""

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__(lr=lr)
        self.save_hyperparameters(logger=False)


# -- Hydra ------------------------------------------------------------------------------------------
#: the parts of lightning-hydra-template's configs that wire callbacks and loggers
TRAIN_YAML = f"""\
defaults:
  - callbacks: default
  - logger: null
  - _self_
paths:
  output_dir: ???
trainer:
  _target_: pytorch_lightning.Trainer
  default_root_dir: ${{paths.output_dir}}
  max_steps: {STEPS}
  accelerator: cpu
  devices: 1
  enable_progress_bar: false
  enable_model_summary: false
  enable_checkpointing: false
  num_sanity_val_steps: 0
"""
DEFAULT_CALLBACKS_YAML = "defaults:\n  - _self_\n"
TENSORBOARD_YAML = """\
tensorboard:
  _target_: pytorch_lightning.loggers.TensorBoardLogger
  save_dir: ${paths.output_dir}/tensorboard/
  name: null
  log_graph: false
  default_hp_metric: true
  prefix: ""
"""


def hydra_fit(project: Path, overrides: list[str], template_logs_hparams: bool = False) -> tuple[SASMonitor, Path]:
    """Compose ``train`` as the template does, instantiate callbacks, loggers and trainer with
    ``hydra.utils.instantiate`` and fit. Returns the monitor and the run's output folder."""
    hydra = pytest.importorskip("hydra", reason="hydra-core is not installed (pip install -e '.[dev]')")
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    configs = project / "configs"
    for path, text in {"train.yaml": TRAIN_YAML, "callbacks/default.yaml": DEFAULT_CALLBACKS_YAML,
                       "callbacks/sas.yaml": snippet("configs/callbacks/sas.yaml"),
                       "logger/tensorboard.yaml": TENSORBOARD_YAML}.items():
        (configs / path).parent.mkdir(parents=True, exist_ok=True)
        (configs / path).write_text(text)
    output = project / "logs" / "train" / "runs" / "2026-12-05_08-00-00"
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.output_dir={output}", "+callbacks.sas.flush_every=20",
                                          "+callbacks.sas.probe_every=5"] + overrides)
    # the template's instantiate_callbacks / instantiate_loggers
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if "_target_" in c]
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values() if "_target_" in c]
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    model = HparamsClassifier()
    if template_logs_hparams:  # the template's log_hyperparameters, before fit
        hparams = {"model": {"lr": model.hparams.lr}, "callbacks": OmegaConf.to_container(cfg.callbacks, resolve=True)}
        for logger in trainer.loggers:
            logger.log_hyperparams(hparams)
    train, val = loaders()
    trainer.fit(model, train, val)
    (monitor,) = [c for c in callbacks if isinstance(c, SASMonitor)]
    return monitor, output


def test_hydra_template_callbacks_yaml(project: Path, capsys: pytest.CaptureFixture) -> None:
    """``replicas``, ``loss_fn`` as an import path and ``store`` from the callbacks YAML; the
    template's ``logger: null``; the store in the output folder, which ``report`` reads."""
    monitor, output = hydra_fit(project, ["callbacks=[default,sas]"])
    from src.models.losses import per_sample_cross_entropy

    assert monitor.replicas is not None and monitor.replicas.replicas == 4
    assert monitor.probes.loss_fn is per_sample_cross_entropy
    summary = monitor.summary()
    assert summary["steps"] == STEPS and summary["replicas"] == 4
    assert (output / "sas" / "summary.json").is_file()
    capsys.readouterr()
    assert cli_main(["report", str(output), "--out", str(project / "report")]) == 0
    assert f"lightning-sas report: {output / 'sas'}" in capsys.readouterr().out


def test_hydra_template_tensorboard_run_two_levels_down(project: Path, capsys: pytest.CaptureFixture) -> None:
    """``logger=tensorboard`` without ``store``: the store is ``tensorboard/version_0/sas`` below
    the output folder, and ``report <output folder>`` finds it. The template logs its own
    hyperparameters before fit: TensorBoard keeps that one session, with the callbacks config."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    monitor, output = hydra_fit(project, ["callbacks=[default,sas]", "logger=tensorboard", "~callbacks.sas.store",
                                          "callbacks.sas.replicas=0"], template_logs_hparams=True)
    store = output / "tensorboard" / "version_0" / "sas"
    assert (store / "meta.json").is_file()
    assert find_runs(output) == [store]
    capsys.readouterr()
    assert cli_main(["report", str(output), "--json", "--out", str(project / "report")]) == 0
    sessions = [v.metadata.plugin_data.content for f in (store.parent).glob("events*") for e in EventFileLoader(str(f)).Load()
                for v in e.summary.value if v.tag == "_hparams_/session_start_info"]
    assert len(sessions) == 1 and b"callbacks/sas/flush_every" in sessions[0]


def test_hydra_template_no_logger_no_store_says_so(project: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The bare callback from the command line (``+callbacks.sas._target_=...``) with the
    template's ``logger: null``: nothing is written, and one line says so and how to get it."""
    with caplog.at_level(logging.WARNING, logger="lightning_sas"):
        monitor, output = hydra_fit(project, ["+callbacks.sas._target_=lightning_sas.SASMonitor"])
    assert monitor.summary()["steps"] == STEPS
    said = [r.getMessage() for r in caplog.records if r.name == "lightning_sas"]
    assert len(said) == 1 and "nothing is written" in said[0] and "store=" in said[0] and "logger" in said[0]
    assert find_runs(project) == []


# -- LightningCLI and a plain script ----------------------------------------------------------------
class TinyData(pl.LightningDataModule):
    def train_dataloader(self) -> Any:
        return loaders()[0]

    def val_dataloader(self) -> Any:
        return loaders()[1]


def test_lightning_cli_config(project: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("jsonargparse")
    from pytorch_lightning.cli import LightningCLI

    (project / "config.yaml").write_text(snippet("config.yaml"))
    cli = LightningCLI(TinyClassifier, TinyData, save_config_callback=None,
                       args=["fit", "--config", "config.yaml", f"--trainer.max_steps={STEPS}",
                             "--trainer.enable_progress_bar=false", "--trainer.enable_checkpointing=false",
                             "--trainer.enable_model_summary=false", "--trainer.num_sanity_val_steps=0"])
    monitor = next(c for c in cli.trainer.callbacks if isinstance(c, SASMonitor))
    from src.models.losses import per_sample_cross_entropy

    assert monitor.replicas is not None and monitor.replicas.replicas == 4
    assert monitor.probes.loss_fn is per_sample_cross_entropy
    store = project / "runs" / "lightning_logs" / "version_0" / "sas"
    assert find_runs(project / "runs") == [store]
    capsys.readouterr()
    assert cli_main(["report", "runs", "--json", "--out", str(project / "report")]) == 0


def test_plain_script(project: Path, capsys: pytest.CaptureFixture) -> None:
    train_loader, val_loader = loaders()
    namespace = {"model": TinyClassifier(), "train_loader": train_loader, "val_loader": val_loader}
    exec(compile(snippet("train.py"), "train.py", "exec"), namespace)
    store = project / "runs" / "lightning_logs" / "version_0" / "sas"
    assert (store / "summary.json").is_file()
    assert cli_main(["report", "runs", "--json", "--out", str(project / "report")]) == 0


# -- report DIR -------------------------------------------------------------------------------------
def test_report_lists_several_runs_and_asks_to_pick_one(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from lightning_sas.store import RunWriter

    runs = [tmp_path / "tensorboard" / f"version_{i}" / "sas" for i in range(2)] + [tmp_path / "lightning_sas" / "abc"]
    for run in runs:
        RunWriter(run, config={}).close()
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("a: 1\n")
    assert find_runs(tmp_path) == sorted(runs)
    assert find_runs(runs[0].parent) == [runs[0]]  # a version directory is its run
    assert cli_main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "3 runs below" in err and "pick one" in err
    for run in runs:
        assert f"lightning-sas report {run}" in err
    assert cli_main(["report", str(tmp_path / "nothing-here")]) == 2
    assert "not a lightning-sas run directory" in capsys.readouterr().err
