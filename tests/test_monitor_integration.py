"""SASMonitor on real Trainer runs: demo modules we did not write, accumulation, dict outputs,
manual optimization, NaN losses, no side effects on the run, bounded memory, no hot-path syncs."""

from __future__ import annotations

import gc
import weakref
import warnings
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.demos.boring_classes import BoringModel, DemoModel, ManualOptimBoringModel, RandomDataset
from torch.utils.data import DataLoader

from conftest import TinyClassifier, loaders, trainer_kwargs
from lightning_sas import SASMonitor, SASWarning

REQUIRED_KEYS = (
    "late_phase_start", "loss_mean", "loss_se", "iat", "ess", "dominant_period", "power_fraction",
    "geweke_z", "weight_norm", "distance_to_ergodic_mean", "ergodic_gap",
)


def fit(module: pl.LightningModule, tmp_path: Any, monitor: SASMonitor | None, train=None, val=None, **kw: Any) -> pl.Trainer:
    callbacks = [monitor] if monitor is not None else []
    trainer = pl.Trainer(callbacks=callbacks, **trainer_kwargs(tmp_path, **kw))
    trainer.fit(module, train, val)
    return trainer


def test_summary_has_documented_keys_and_values(tmp_path: Any) -> None:
    train, val = loaders()
    monitor = SASMonitor(flush_every=40, store=False, figure_every=0)
    fit(TinyClassifier(), tmp_path, monitor, train, val, max_steps=400, limit_val_batches=1.0)
    summary = monitor.summary()
    for key in REQUIRED_KEYS:
        assert key in summary
    assert summary["steps"] == 400
    assert summary["loss_mean"] is not None and 0 < summary["loss_mean"] < 2
    assert summary["iat"] is not None and summary["iat"] >= 0.5
    assert summary["weight_norm"] > 0
    assert summary["ergodic_gap"] is not None
    assert summary["ergodic_gap_source"] == "validation"


def test_stream_matches_what_training_step_returned(tmp_path: Any) -> None:
    train, _ = loaders()
    module = TinyClassifier()
    monitor = SASMonitor(flush_every=16, store=False, figure_every=0, num_train_probes=0)
    fit(module, tmp_path, monitor, train, max_steps=64)
    stream = monitor.loss_stream
    np.testing.assert_allclose(stream._window_values, np.asarray(module.seen_losses), rtol=1e-6)
    np.testing.assert_array_equal(stream._window_steps, np.arange(64))


def test_accumulate_grad_batches_records_mean_of_micro_batches(tmp_path: Any) -> None:
    train, _ = loaders()
    module = TinyClassifier()
    monitor = SASMonitor(flush_every=8, store=False, figure_every=0, num_train_probes=0)
    fit(module, tmp_path, monitor, train, max_steps=32, accumulate_grad_batches=2)
    seen = np.asarray(module.seen_losses)
    expected = seen.reshape(-1, 2).mean(1)
    np.testing.assert_allclose(monitor.loss_stream._window_values, expected, rtol=1e-6)
    np.testing.assert_array_equal(monitor.loss_stream._window_steps, np.arange(32))


def test_training_step_returning_dict(tmp_path: Any) -> None:
    train, val = loaders()
    module = TinyClassifier(return_dict=True)
    monitor = SASMonitor(flush_every=20, store=False, figure_every=0)
    fit(module, tmp_path, monitor, train, val, max_steps=80, limit_val_batches=1.0)
    np.testing.assert_allclose(monitor.loss_stream._window_values, module.seen_losses, rtol=1e-6)


@pytest.mark.parametrize("module_cls", [BoringModel, ManualOptimBoringModel, DemoModel])
def test_demo_modules_run_with_one_warning(module_cls: type, tmp_path: Any) -> None:
    monitor = SASMonitor(flush_every=10, store=False, figure_every=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # DemoModel brings no data: feed it Lightning's RandomDataset of 32-dim vectors
        train = DataLoader(RandomDataset(32, 64), batch_size=4) if module_cls is DemoModel else None
        trainer = fit(module_cls(), tmp_path, monitor, train, max_steps=60, limit_val_batches=0)
    ours = [w for w in caught if issubclass(w.category, SASWarning)]
    # bare-tensor batches have no per-sample loss: exactly one warning, the rest keeps working
    assert len(ours) == 1, [str(w.message) for w in ours]
    assert "per-sample loss" in str(ours[0].message)
    summary = monitor.summary()
    assert summary["steps"] == 60
    assert summary["weight_norm"] is not None
    assert trainer.global_step >= 60


def test_manual_optimization_indexes_by_batch(tmp_path: Any) -> None:
    module = ManualOptimBoringModel()
    monitor = SASMonitor(flush_every=10, store=False, figure_every=0)
    fit(module, tmp_path, monitor, max_steps=40, limit_val_batches=0)
    assert monitor.summary()["steps"] == 40
    np.testing.assert_array_equal(monitor.loss_stream._window_steps, np.arange(40))
    assert monitor.summary()["grad_norm"] is not None


def test_nan_losses_are_excluded_and_counted(tmp_path: Any) -> None:
    train, val = loaders()
    module = TinyClassifier(nan_at=(5, 17, 30))
    monitor = SASMonitor(flush_every=20, store=False, figure_every=0)
    fit(module, tmp_path, monitor, train, val, max_steps=60, limit_val_batches=1.0)
    summary = monitor.summary()
    assert summary["nonfinite_losses"] == 3
    assert summary["loss_mean"] is not None and np.isfinite(summary["loss_mean"])


def test_monitor_does_not_change_the_run(tmp_path: Any) -> None:
    def run(with_monitor: bool) -> dict[str, torch.Tensor]:
        pl.seed_everything(7)
        train, val = loaders(seed=3)
        module = TinyClassifier()
        monitor = SASMonitor(flush_every=25, figure_every=1) if with_monitor else None
        fit(module, tmp_path / str(with_monitor), monitor, train, val, max_steps=120, limit_val_batches=1.0)
        return {k: v.clone() for k, v in module.state_dict().items()}

    plain, monitored = run(False), run(True)
    assert plain.keys() == monitored.keys()
    for key in plain:
        assert torch.equal(plain[key], monitored[key]), key


def _state_bytes(monitor: SASMonitor) -> int:
    total = 0
    seen: set[int] = set()

    def visit(obj: Any) -> None:
        nonlocal total
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            total += obj.numel() * obj.element_size()
        elif isinstance(obj, np.ndarray):
            total += obj.nbytes
        elif isinstance(obj, dict):
            for v in obj.values():
                visit(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                visit(v)
        elif hasattr(obj, "__dict__") and type(obj).__module__.startswith("lightning_sas"):
            visit(vars(obj))
        elif isinstance(obj, torch.nn.Module):
            for v in obj.state_dict().values():
                visit(v)

    visit(monitor)
    return total


def test_memory_does_not_grow_with_run_length(tmp_path: Any) -> None:
    sizes = []
    for steps in (1600, 4000):
        train, val = loaders()
        monitor = SASMonitor(flush_every=50, window=256, max_blocks=32, store=False, figure_every=0,
                             snapshot_every=5, sketch_every=5, probe_every=5)
        monitor.weights.sketch_history = 64
        fit(TinyClassifier(), tmp_path / str(steps), monitor, train, val, max_steps=steps, limit_val_batches=1.0)
        sizes.append(_state_bytes(monitor))
    assert sizes[0] == sizes[1], sizes


@pytest.mark.parametrize("distances", ["exact", "sketched"])
def test_no_host_reads_on_non_flush_steps(tmp_path: Any, monkeypatch: pytest.MonkeyPatch, distances: str) -> None:
    """No ``.item()``/``.cpu()``/``.tolist()``/``.numpy()``/bool() from lightning_sas code outside
    flushes, with exact and with sketched weight distances."""
    import inspect

    from lightning_sas.callbacks import WeightSnapshots

    if distances == "sketched":
        monkeypatch.setattr(WeightSnapshots, "EXACT_DISTANCE_MAX_PARAMETERS", 0)

    flush_every = 25
    calls: list[tuple[str, int]] = []
    state = {"step": -1}

    def wrap(name: str) -> None:
        original = getattr(torch.Tensor, name)

        def patched(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            frame = inspect.currentframe()
            caller = frame.f_back if frame is not None else None
            while caller is not None:
                module = caller.f_globals.get("__name__", "")
                if module.startswith("lightning_sas"):
                    calls.append((name, state["step"]))
                    break
                if module.startswith(("torch", "pytorch_lightning", "lightning")):
                    caller = caller.f_back
                    continue
                break
            return original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, patched)

    for name in ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__"):
        wrap(name)

    class StepTracker(pl.Callback):
        def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
            state["step"] = trainer.global_step

    train, val = loaders()
    monitor = SASMonitor(flush_every=flush_every, store=False, figure_every=0)
    trainer = pl.Trainer(callbacks=[StepTracker(), monitor], **trainer_kwargs(tmp_path, max_steps=150, limit_val_batches=1.0))
    trainer.fit(TinyClassifier(), train, val)
    assert monitor.weights.exact == (distances == "exact")
    outside = [(n, s) for n, s in calls if s >= 0 and (s + 1) % flush_every != 0]
    assert not outside, outside[:10]


def test_warn_once_forgets_collected_owners() -> None:
    """``warn_once`` keys on the live owner, not on its ``id``: a new owner at a collected one's
    memory address (CPython reuses addresses) still gets its warning. In CI an id-keyed registry
    silenced DemoModel's per-sample-loss warning after an earlier test's callback was collected."""
    from lightning_sas.callbacks._common import warn_once

    class Owner:
        pass

    def said(owner: object) -> int:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warn_once(owner, "cause", "something is off")
        return len(caught)

    first = Owner()
    assert said(first) == 1 and said(first) == 0
    address, alive = id(first), weakref.ref(first)
    del first
    gc.collect()
    assert alive() is None
    candidates = [Owner() for _ in range(200_000)]
    reused = [c for c in candidates if id(c) == address]
    if not reused:
        pytest.skip("this interpreter did not reuse the collected owner's address")
    assert said(reused[0]) == 1


def test_each_new_callback_warns_once(tmp_path: Any) -> None:
    """One warning per cause and callback: the same callback fitted twice says it once, a fresh
    callback says it again."""
    train = DataLoader(RandomDataset(32, 64), batch_size=4)

    def warnings_of_one_run(monitor: SASMonitor, name: str) -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit(DemoModel(), tmp_path / name, monitor, train, max_steps=12, limit_val_batches=0)
        return [str(w.message) for w in caught if issubclass(w.category, SASWarning)]

    first = SASMonitor(flush_every=6, store=False, figure_every=0)
    assert len(warnings_of_one_run(first, "a")) == 1
    assert warnings_of_one_run(first, "b") == []
    assert len(warnings_of_one_run(SASMonitor(flush_every=6, store=False, figure_every=0), "c")) == 1
