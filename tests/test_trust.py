"""Trust: the three symptoms a new user hit, and the defects Lightning's own test suite found with
the monitor injected into every Trainer (one regression test each)."""

from __future__ import annotations

import os
import pickle
import time
import warnings
from typing import Any
from unittest import mock

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.demos.boring_classes import BoringModel, RandomDataset
from pytorch_lightning.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, default_collate

import zoo
from conftest import TinyClassifier, loaders, trainer_kwargs
from lightning_sas import SASMonitor, SASReplicas, SASWarning
from lightning_sas.replicas.trainer_view import ReplicaTrainerError, ReplicaTrainerView



def _assert_replicas_estimated(summary: dict[str, Any], steps: int) -> None:
    """The replicas stepped with the main run for all ``steps`` and the estimate is a finite,
    positive number (a switched-off or never-forked estimate fails here)."""
    assert summary.get("steps_since_fork") == steps, summary.get("steps_since_fork")
    assert summary.get("sas_max") is not None and np.isfinite(summary["sas_max"]) and summary["sas_max"] > 0, summary.get("sas_max")
    assert "sas_max" not in (summary.get("unavailable") or {}), summary["unavailable"]["sas_max"]

def _weights_after(tmp_path: Any, monitor: SASMonitor | None, steps: int = 300) -> dict[str, torch.Tensor]:
    pl.seed_everything(0)
    module = zoo.DropoutMLP()
    data = DataLoader(zoo.classification_data(512), batch_size=32, shuffle=True)
    trainer = pl.Trainer(callbacks=[monitor] if monitor else [], **trainer_kwargs(tmp_path, max_steps=steps))
    trainer.fit(module, data, DataLoader(zoo.classification_data(64, seed=1), batch_size=32))
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("replicas", [0, 2])
def test_symptom_1_dropout_run_is_unchanged_by_the_monitor(tmp_path: Any, replicas: int) -> None:
    """A dropout MLP, SGD, shuffled loader, seed_everything: 300 steps end with the same weights
    with and without ``SASMonitor()`` (the probe dry run used to draw from the global RNG)."""
    plain = _weights_after(tmp_path / "plain", None)
    monitored = _weights_after(tmp_path / "monitored", SASMonitor(figure_every=0, replicas=replicas,
                                                                  replica_path="generic" if replicas else "auto"))
    for key in plain:
        assert torch.equal(plain[key], monitored[key]), key


@pytest.mark.parametrize("schedule", [
    {"check_val_every_n_epoch": 2},
    {"check_val_every_n_epoch": 3},
    {"val_check_interval": 25, "check_val_every_n_epoch": None, "two_loaders": True},
])
def test_symptom_2_ergodic_gap_from_any_validation_schedule(tmp_path: Any, schedule: dict[str, Any]) -> None:
    """Validation set up late (every N epochs, every K steps with several loaders) still gives
    held-out probes at the start: the summary has ``ergodic_gap`` from validation."""
    schedule = dict(schedule)
    two = schedule.pop("two_loaders", False)
    train = DataLoader(zoo.classification_data(256), batch_size=16, shuffle=True)
    val = DataLoader(zoo.classification_data(64, seed=1), batch_size=32)
    vals = [val, DataLoader(zoo.classification_data(32, seed=4), batch_size=16)] if two else val
    module = zoo.FrozenBackbone() if two else zoo.DropoutMLP()  # validation_step(batch, batch_idx, dataloader_idx)
    monitor = SASMonitor(flush_every=20, probe_every=5, figure_every=0, store=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SASWarning)
        pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_steps=40, limit_val_batches=1.0, **schedule)).fit(
            module, train, vals)
    summary = monitor.summary()
    assert summary["ergodic_gap"] is not None
    assert summary["ergodic_gap_source"].startswith("validation")
    assert "ergodic_gap" not in summary["unavailable"]


def test_symptom_2_datamodule_built_in_setup_with_sparse_validation(tmp_path: Any) -> None:
    monitor = SASMonitor(flush_every=20, probe_every=5, figure_every=0, store=False)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_steps=30, limit_val_batches=1.0,
                                                                 check_val_every_n_epoch=5))
    trainer.fit(zoo.DropoutMLP(), datamodule=zoo.SetupDataModule())
    assert monitor.summary()["ergodic_gap"] is not None


def test_symptom_2_without_held_out_data_one_warning_and_a_reason(tmp_path: Any) -> None:
    train, _ = loaders()
    # probes every 10 steps: with the default 200, a 40-step run's only probe is the untrained
    # model's at step 0, which no statistic uses (tests/test_window.py)
    monitor = SASMonitor(flush_every=20, probe_every=10, figure_every=0, store=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_steps=40)).fit(TinyClassifier(), train)
    ours = [str(w.message) for w in caught if issubclass(w.category, SASWarning)]
    assert len(ours) == 1 and "val_dataloaders" in ours[0] and "holdout_fraction" in ours[0], ours
    summary = monitor.summary()
    assert summary["ergodic_gap"] is None
    assert "held-out" in summary["unavailable"]["ergodic_gap"]
    assert summary["probe_train_loss"] is not None


def test_symptom_3_onecycle_from_trainer_max_steps_on_generic_replicas(tmp_path: Any) -> None:
    """The standard recipe: ``OneCycleLR(total_steps=self.trainer.max_steps)`` in
    ``configure_optimizers``, ``self.logger`` in ``training_step``: generic replicas run it."""
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    monitor = SASMonitor(flush_every=20, figure_every=0, replicas=SASReplicas(replicas=2, probe_every=5))
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_steps=40, logger=logger))
    trainer.fit(zoo.ResidualNet(), DataLoader(zoo.classification_data(256), batch_size=16, shuffle=True))
    summary = monitor.summary()
    assert summary["replica_path"] == "generic"
    _assert_replicas_estimated(summary, 40)
    engine = monitor.replicas.engine
    # each replica stepped its own OneCycleLR built from the real trainer's max_steps
    sched = engine.optim[0].schedulers[0][0]
    assert sched.total_steps == 40 and sched.last_epoch == 40


def test_replica_trainer_view_is_read_only_and_names_what_it_cannot_serve(tmp_path: Any) -> None:
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_steps=7))
    module = zoo.DropoutMLP()
    view = ReplicaTrainerView(trainer, module)
    assert view.max_steps == 7 and view.lightning_module is module and view.callback_metrics == {}
    with pytest.raises(ReplicaTrainerError, match="max_steps"):
        view.max_steps = 3
    with pytest.raises(ReplicaTrainerError, match=r"trainer\.fit_loop"):
        view.fit_loop  # noqa: B018
    # what a configure_optimizers reads: the replica itself as model, the run's settings and placement
    assert view.model is module and view.strategy.model is module and view.strategy.lightning_module is module
    assert view.strategy.root_device == trainer.strategy.root_device and view.strategy.world_size == 1
    assert (view.num_devices, view.world_size, view.accumulate_grad_batches) == (1, 1, 1)
    assert view.estimated_stepping_batches == 7 and view.precision == trainer.precision
    with pytest.raises(ReplicaTrainerError, match=r"trainer\.strategy\.barrier"):
        view.strategy.barrier  # noqa: B018 (collectives: replicas live on some ranks only)
    with view.running("configure_optimizers"), pytest.raises(ReplicaTrainerError, match="sas_configure_optimizers"):
        view.fit_loop  # noqa: B018
    with view.running("training_step"), pytest.raises(ReplicaTrainerError, match=r"loss_fn=\(module, batch\)"):
        view.fit_loop  # noqa: B018
    assert getattr(view, "fit_loop", None) is None  # an AttributeError: getattr defaults still work


class NeedsFitLoop(zoo.DropoutMLP):
    def configure_optimizers(self) -> Any:
        _ = self.trainer.fit_loop.epoch_loop  # something a replica cannot have
        return super().configure_optimizers()


def test_unservable_trainer_attribute_is_one_setup_error(tmp_path: Any) -> None:
    monitor = SASMonitor(figure_every=0, store=False, replicas=2)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_steps=5))
    with pytest.raises(ValueError, match=r"trainer\.fit_loop"):
        trainer.fit(NeedsFitLoop(), DataLoader(zoo.classification_data(), batch_size=16))


class OwnReplicaOptimizers(NeedsFitLoop):
    def sas_configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_sas_configure_optimizers_is_the_way_out(tmp_path: Any) -> None:
    monitor = SASMonitor(flush_every=10, figure_every=0, store=False, replicas=2)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_steps=20))
    trainer.fit(OwnReplicaOptimizers(), DataLoader(zoo.classification_data(), batch_size=16))
    _assert_replicas_estimated(monitor.summary(), 20)


# -- defects found by Lightning's own test suite with the monitor injected ----------------------
def test_trainer_and_logger_pickle_after_fit(tmp_path: Any) -> None:
    """(checkpointing/test_torch_saving.py::test_model_torch_save) the hparams merge used to leave
    a closure on the logger instance."""
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    trainer = pl.Trainer(callbacks=[SASMonitor(figure_every=0)], **trainer_kwargs(tmp_path, max_steps=5, logger=logger))
    trainer.fit(BoringModel())
    assert "log_hyperparams" not in vars(logger)
    pickle.dumps(logger)
    torch.save(trainer, tmp_path / "trainer.pt")


@pytest.mark.parametrize("settings", [{"fast_dev_run": True, "logger": True}, {"logger": False, "enable_checkpointing": False}])
def test_no_files_where_lightning_writes_none(tmp_path: Any, monkeypatch: pytest.MonkeyPatch, settings: dict[str, Any]) -> None:
    """(Lightning's "test left artifacts behind" check, 25 tests) no logger directory, no store."""
    monkeypatch.chdir(tmp_path)
    monitor = SASMonitor(flush_every=2, figure_every=0)
    kwargs = {k: v for k, v in trainer_kwargs(tmp_path, max_steps=6).items() if k not in ("default_root_dir", "logger")}
    kwargs.update(settings)
    pl.Trainer(callbacks=[monitor], **kwargs).fit(BoringModel())
    monitored = sorted(os.listdir(tmp_path))
    plain_dir = tmp_path.parent / f"{tmp_path.name}_plain"
    plain_dir.mkdir()
    monkeypatch.chdir(plain_dir)
    pl.Trainer(**kwargs).fit(BoringModel())
    assert monitored == sorted(os.listdir(plain_dir)), "the monitor wrote files where the plain run writes none"
    assert not (tmp_path / "sas").exists() and not (tmp_path / "lightning_logs" / "version_0" / "sas").exists()
    assert monitor.summary()["steps"] == (1 if settings.get("fast_dev_run") else 6)  # the summary lives in memory


def test_store_to_an_explicit_directory_without_a_logger(tmp_path: Any) -> None:
    monitor = SASMonitor(flush_every=5, figure_every=0, store=str(tmp_path / "mine"))
    pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_steps=10)).fit(BoringModel())
    assert (tmp_path / "mine" / "summary.json").exists()


def test_stateful_collate_fn_is_not_called_by_the_monitor(tmp_path: Any) -> None:
    """(loops/test_training_loop_flow_scalar.py::test_training_step_none_batches) the probe set-up
    called the loader's collate_fn once more, shifting a stateful collate."""
    calls = []

    def counting_collate(samples: list[Any]) -> Any:
        calls.append(len(samples))
        return default_collate(samples)

    def run(monitor: SASMonitor | None) -> int:
        calls.clear()
        data = DataLoader(zoo.classification_data(64), batch_size=8, collate_fn=counting_collate)
        pl.Trainer(callbacks=[monitor] if monitor else [], **trainer_kwargs(tmp_path, max_steps=8)).fit(zoo.DropoutMLP(), data)
        return len(calls)

    assert run(SASMonitor(figure_every=0, store=False, replicas=2)) == run(None)


def test_mock_logger_log_dir_is_not_a_directory_name(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    logger = mock.Mock()  # as Lightning's own tests pass one: every attribute, log_dir too, is a Mock
    monitor = SASMonitor(flush_every=2, figure_every=0)
    pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_steps=4, logger=logger)).fit(BoringModel())
    assert not any("Mock" in name for name in os.listdir(tmp_path))
    assert logger.log_metrics.called


def test_no_clock_read_without_figures(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """(callbacks/test_throughput_monitor.py patches time.perf_counter with a finite list) with
    figure_every=0 the monitor never reads the clock."""
    monitor = SASMonitor(flush_every=2, figure_every=0, store=False)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_steps=6))
    real = time.perf_counter
    reads: list[str] = []

    def counted() -> float:
        import traceback

        if any("lightning_sas" in (frame.filename or "") for frame in traceback.extract_stack()[:-1]):
            reads.append("ours")
        return real()

    monkeypatch.setattr(time, "perf_counter", counted)
    trainer.fit(BoringModel())
    assert reads == []


def test_replica_of_training_step_without_batch_idx(tmp_path: Any) -> None:
    """(loops/test_training_epoch_loop.py::test_no_batch_idx_gradient_accumulation) Lightning
    supports ``training_step(self, batch)``; generic replicas call it that way."""
    monitor = SASMonitor(flush_every=10, figure_every=0, store=False, replicas=2, replica_path="generic")
    pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_steps=20, accumulate_grad_batches=2)).fit(
        zoo.NoBatchIdxMLP(), DataLoader(zoo.classification_data(), batch_size=16))
    _assert_replicas_estimated(monitor.summary(), 20)


def test_small_dataset_is_served(tmp_path: Any) -> None:
    """Datasets smaller than holdout_fraction and the loader's batch size allow: the held-out
    split gets K + 1 samples and the replica batch shrinks to |S| (was a set-up error)."""
    monitor = SASMonitor(flush_every=10, figure_every=0, store=False, replicas=2, replica_path="generic")
    pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_steps=20)).fit(
        zoo.DropoutMLP(), DataLoader(zoo.classification_data(12), batch_size=16))
    assert monitor.replicas is not None and len(monitor.replicas.probe_set.heldout_indices) >= 1
    _assert_replicas_estimated(monitor.summary(), 20)


def test_checkpoint_without_replicas_resumes_with_the_estimate_off(tmp_path: Any) -> None:
    """checkpoint_replicas=False: after a resume the replicas cannot continue (forked again they
    would have seen the held-out split): the estimate is off with a reason, not silently None."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    data = DataLoader(zoo.classification_data(160), batch_size=16)
    monitor = SASMonitor(flush_every=10, figure_every=0, store=False,
                         replicas=SASReplicas(replicas=2, checkpoint_replicas=False))
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_epochs=1, save_top_k=-1)
    kwargs = trainer_kwargs(tmp_path, max_steps=10, enable_checkpointing=True)
    pl.Trainer(callbacks=[monitor, ckpt], **kwargs).fit(zoo.DropoutMLP(), data)
    second = SASMonitor(flush_every=10, figure_every=0, store=False,
                        replicas=SASReplicas(replicas=2, checkpoint_replicas=False))
    kwargs["max_steps"] = 20
    with pytest.warns(SASWarning, match="checkpoint_replicas=False"):
        pl.Trainer(callbacks=[second, ModelCheckpoint(dirpath=str(tmp_path / "c2"))], **kwargs).fit(
            zoo.DropoutMLP(), data, ckpt_path=str(tmp_path / "ckpt" / "epoch=0-step=10.ckpt"))
    assert "checkpoint_replicas=False" in second.summary()["unavailable"]["sas_max"]


def test_sas_replicas_on_its_own_flushes(tmp_path: Any) -> None:
    replicas = SASReplicas(replicas=2, probe_every=5, flush_every=10)
    pl.Trainer(callbacks=[replicas], **trainer_kwargs(tmp_path, max_steps=20)).fit(
        zoo.DropoutMLP(), DataLoader(zoo.classification_data(), batch_size=16))
    _assert_replicas_estimated(replicas.diagnostics, 20)


class OnceStream(torch.utils.data.IterableDataset):
    """A stream that can be read once (a queue, a generator): a second reader takes its items."""

    def __init__(self, n: int = 96) -> None:
        self.items = iter(list(zip(*zoo.classification_data(n).tensors)))

    def __iter__(self) -> Any:
        return self.items


def test_a_stream_is_not_read_by_the_monitor(tmp_path: Any) -> None:
    """(loops/test_double_iter_in_iterable_dataset.py) reading an IterableDataset a second time can
    take the run's own items: without replicas the monitor leaves it alone, with one warning."""
    seen = []

    class Counting(zoo.NoBatchIdxMLP):
        def training_step(self, batch: Any) -> torch.Tensor:
            seen.append(len(batch[0]))
            return super().training_step(batch)

    monitor = SASMonitor(flush_every=2, figure_every=0, store=False)
    with pytest.warns(SASWarning, match="IterableDataset"):
        pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=1)).fit(
            Counting(), DataLoader(OnceStream(96), batch_size=16))
    assert sum(seen) == 96  # every item went to training
    assert "IterableDataset" in monitor.summary()["unavailable"]["probe_train_loss"]


def test_the_module_train_method_is_never_called(tmp_path: Any) -> None:
    """(models/test_hooks.py) probes switch modes by the flags, not through ``module.train()``,
    which a user may override or record."""
    calls: list[bool] = []

    class Recording(zoo.DropoutMLP):
        def train(self, mode: bool = True) -> Any:
            calls.append(mode)
            return super().train(mode)

    def run(monitor: SASMonitor | None) -> list[bool]:
        calls.clear()
        pl.Trainer(callbacks=[monitor] if monitor else [], **trainer_kwargs(tmp_path, max_steps=20)).fit(
            Recording(), DataLoader(zoo.classification_data(), batch_size=16), DataLoader(zoo.classification_data(64, seed=1)))
        return list(calls)

    assert run(SASMonitor(flush_every=10, probe_every=5, figure_every=0, store=False)) == run(None)


def test_magicmock_logger_log_dir_is_not_a_path(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """(models/test_hparams.py) a MagicMock answers ``os.fspath``: still not a directory."""
    monkeypatch.chdir(tmp_path)
    logger = mock.MagicMock(spec=pl.loggers.Logger)
    logger.log_dir = mock.MagicMock()
    pl.Trainer(callbacks=[SASMonitor(flush_every=2, figure_every=0)], **trainer_kwargs(tmp_path, max_steps=4, logger=logger)).fit(
        BoringModel())
    assert not any("Mock" in name for name in os.listdir(tmp_path))
    # and the user's mocked log_hyperparams receives the user's hparams only
    for call in logger.log_hyperparams.call_args_list:
        assert not any(str(k).startswith("sas/") for k in dict(call.args[0] if call.args else {}))
