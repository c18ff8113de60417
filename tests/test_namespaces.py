"""The callbacks work with the Trainer, loggers and checkpoints of both Lightning namespaces:
``pytorch_lightning`` and ``lightning.pytorch`` (the optional ``lightning`` extra; skipped when
it is not installed)."""

from __future__ import annotations

import math
import os
import warnings
from importlib import import_module
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader

from conftest import make_classification
from lightning_sas import LossStream, ProbeLosses, SASMonitor, SASReplicas, SASWarning, WeightSnapshots
from lightning_sas.loggers.export import tensorboard_writers
from lightning_sas.store import read_run


@pytest.fixture(params=["pytorch_lightning", "lightning.pytorch"])
def ns(request: pytest.FixtureRequest) -> ModuleType:
    """One Lightning namespace (the test is skipped when it is not installed)."""
    return pytest.importorskip(request.param)


def classifier(ns: ModuleType, **kwargs: Any) -> Any:
    """A small MLP on (x, y) batches, built on ``ns.LightningModule``."""

    class Classifier(ns.LightningModule):
        def __init__(self, d: int = 10, classes: int = 3, lr: float = 0.1) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(d, 16), torch.nn.ReLU(), torch.nn.Linear(16, classes))
            self.lr = lr

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return torch.nn.functional.cross_entropy(self(x), y)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            pass

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=self.lr)

    return Classifier(**kwargs)


def _cross_entropy(module: Any, batch: Any) -> torch.Tensor:
    x, y = batch
    return torch.nn.functional.cross_entropy(module(x), y, reduction="none")


def _trainer(ns: ModuleType, root: Path, callbacks: list[Any], max_steps: int, **kw: Any) -> Any:
    kwargs: dict[str, Any] = dict(
        default_root_dir=str(root), enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
        devices=1, num_sanity_val_steps=0, limit_val_batches=0, max_steps=max_steps,
        logger=ns.loggers.TensorBoardLogger(str(root), name="tb", version=0),
    )
    kwargs.update(kw)
    return ns.Trainer(callbacks=callbacks, **kwargs)


def _scalar_tags(log_dir: str) -> set[str]:
    acc = EventAccumulator(log_dir, size_guidance={"scalars": 0})
    acc.Reload()
    return set(acc.Tags()["scalars"])


def _assert_finite(summary: dict[str, Any], keys: tuple[str, ...]) -> None:
    for key in keys:
        assert key in summary, key
        assert isinstance(summary[key], (int, float)) and math.isfinite(summary[key]), (key, summary[key])


def test_callbacks_are_callbacks_of_the_namespace(ns: ModuleType, tmp_path: Path) -> None:
    for callback in (SASMonitor(), LossStream(), WeightSnapshots(), ProbeLosses(), SASReplicas(replicas=2)):
        assert isinstance(callback, ns.Callback)
    # the namespace's own TensorBoardLogger (and a subclass of it) receives our export
    class MyLogger(ns.loggers.TensorBoardLogger):
        pass

    trainer = ns.Trainer(logger=[ns.loggers.TensorBoardLogger(str(tmp_path)), MyLogger(str(tmp_path)),
                                 ns.loggers.CSVLogger(str(tmp_path))], default_root_dir=str(tmp_path))
    assert len(tensorboard_writers(trainer)) == 2
    # a single callback (not in a list) and the namespace's own override check
    monitor = SASMonitor()
    assert ns.Trainer(callbacks=monitor, logger=False, default_root_dir=str(tmp_path)).callbacks[0] is monitor
    model_helpers = import_module(f"{ns.__name__}.utilities.model_helpers")
    assert model_helpers.is_overridden("state_dict", instance=monitor)


def test_lightning_cli_accepts_the_callbacks(ns: ModuleType, tmp_path: Path) -> None:
    pytest.importorskip("jsonargparse")
    BoringModel = import_module(f"{ns.__name__}.demos.boring_classes").BoringModel
    cli = import_module(f"{ns.__name__}.cli").LightningCLI(
        BoringModel, run=False, save_config_callback=None,
        args=["--trainer.callbacks+=lightning_sas.SASMonitor", "--trainer.callbacks.flush_every=7",
              "--trainer.callbacks+=lightning_sas.LossStream", "--trainer.logger=false",
              f"--trainer.default_root_dir={tmp_path}"],
    )
    monitor = next(cb for cb in cli.trainer.callbacks if isinstance(cb, SASMonitor))
    assert monitor.flush_every == 7
    assert any(isinstance(cb, LossStream) for cb in cli.trainer.callbacks)


def test_monitor_fit_tensorboard_and_resume(ns: ModuleType, tmp_path: Path) -> None:
    ns.seed_everything(0)
    train = DataLoader(make_classification(320), batch_size=32, shuffle=False)
    val = DataLoader(make_classification(64, seed=5), batch_size=32)
    ckpt_dir = tmp_path / "ckpt"
    first = SASMonitor(flush_every=20, probe_every=10, num_train_probes=32, num_test_probes=32, figure_every=0)
    checkpoint = ns.callbacks.ModelCheckpoint(dirpath=str(ckpt_dir), every_n_epochs=1, save_top_k=-1)
    trainer = _trainer(ns, tmp_path, [first, checkpoint], max_steps=100, limit_val_batches=1.0)
    trainer.fit(classifier(ns), train, val)
    _assert_finite(first.summary(), ("loss_mean", "loss_se", "weight_norm", "distance_from_init", "ergodic_gap"))
    assert first.summary()["steps"] == 100
    assert first.summary()["ergodic_gap_source"] == "validation"

    path = ckpt_dir / "epoch=9-step=100.ckpt"
    state = torch.load(path, weights_only=True)["callbacks"]
    assert first.state_key in state and state[first.state_key]["flushes"] == 5

    second = SASMonitor(flush_every=20, probe_every=10, num_train_probes=32, num_test_probes=32, figure_every=0)
    checkpoint = ns.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ckpt2"))
    trainer = _trainer(ns, tmp_path, [second, checkpoint], max_steps=200, limit_val_batches=1.0)
    trainer.fit(classifier(ns), train, val, ckpt_path=str(path))
    summary = second.summary()
    assert summary["steps"] == 200
    _assert_finite(summary, ("loss_mean", "loss_se", "iat", "weight_norm", "ergodic_gap"))
    # the restored state continued the stream: every step once in the store
    log_dir = trainer.logger.log_dir
    np.testing.assert_array_equal(read_run(Path(log_dir)).streams["loss"]["step"], np.arange(200))
    tags = _scalar_tags(log_dir)
    for tag in ("sas/loss/time_average", "sas/oscillation/iat", "sas/weights/norm", "sas/sas/ergodic_gap"):
        assert tag in tags, tag


def test_monitor_with_replicas(ns: ModuleType, tmp_path: Path) -> None:
    ns.seed_everything(0)
    train = DataLoader(make_classification(320), batch_size=32, shuffle=False)
    replicas = SASReplicas(replicas=2, loss_fn=_cross_entropy, probe_every=5, num_train_probes=16,
                           num_heldout_probes=16, flush_every=20)
    monitor = SASMonitor(flush_every=20, figure_every=0, num_train_probes=0, replicas=replicas)
    trainer = _trainer(ns, tmp_path, [monitor], max_steps=100, enable_checkpointing=False)
    trainer.fit(classifier(ns), train)
    summary = monitor.summary()
    _assert_finite(summary, ("loss_mean", "sas_max", "sas_mean", "sas_replaced", "stability_gap", "control_heldout_gap"))
    assert summary["replicas"] == 2
    tags = _scalar_tags(trainer.logger.log_dir)
    for tag in ("sas/sas/sas_max", "sas/sas/stability_gap", "sas/sas/control_heldout_gap"):
        assert tag in tags, tag
    path = tmp_path / "replicas.ckpt"
    trainer.save_checkpoint(str(path))
    state = torch.load(path, weights_only=True)["callbacks"][monitor.state_key]
    assert state["replicas"] is not None


def test_demo_boring_model(ns: ModuleType, tmp_path: Path) -> None:
    """The namespace's own demo module (bare tensor batches) runs with one warning."""
    BoringModel = import_module(f"{ns.__name__}.demos.boring_classes").BoringModel
    monitor = SASMonitor(flush_every=10, figure_every=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = _trainer(ns, tmp_path, [monitor], max_steps=30, enable_checkpointing=False)
        trainer.fit(BoringModel())
    assert sum(issubclass(w.category, SASWarning) for w in caught) >= 1
    summary = monitor.summary()
    assert summary["steps"] == 30
    _assert_finite(summary, ("loss_mean", "weight_norm"))
    assert "sas/loss/time_average" in _scalar_tags(trainer.logger.log_dir)


FLOOR = Path(__file__).resolve().parent / "constraints-floor.txt"


def _floor_pins() -> dict[str, str]:
    """``tests/constraints-floor.txt`` as {package: pinned version}."""
    pins = {}
    for line in FLOOR.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.strip()] = version.strip()
    return pins


def test_floor_constraints_pin_the_declared_minimums() -> None:
    """CI's floor job tests what pyproject.toml declares: one pin per dependency (and the
    ``lightning`` extra), each equal to its ``>=`` bound."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.version import Version

    project = tomllib.loads((FLOOR.parent.parent / "pyproject.toml").read_text())["project"]
    declared = {}
    for line in project["dependencies"] + project["optional-dependencies"]["lightning"]:
        requirement = Requirement(line)
        (minimum,) = [spec.version for spec in requirement.specifier if spec.operator == ">="]
        declared[requirement.name] = Version(minimum)
    # a yanked release is pinned as its post-release (torchmetrics 1.3.0 -> 1.3.0.post0)
    assert declared == {name: Version(Version(version).base_version) for name, version in _floor_pins().items()}


@pytest.mark.skipif(not os.environ.get("LIGHTNING_SAS_EXPECT_FLOOR"),
                    reason="only in CI's floor job, which sets LIGHTNING_SAS_EXPECT_FLOOR")
def test_the_floor_job_runs_on_the_floor() -> None:
    """The floor job's venv holds exactly the pinned minimum versions (nothing upgraded them)."""
    from importlib.metadata import version

    from packaging.version import Version

    installed = {name: Version(version(name)).release for name in _floor_pins()}
    assert installed == {name: Version(pin).release for name, pin in _floor_pins().items()}
