"""The observer contract on the zoo of module shapes (``tests/zoo.py``).

For every shape, a run with ``SASMonitor(replicas=2)`` ends with exactly what the same run without
the monitor ends with: the user's weights and buffers, the optimizer state, every module's
train/eval mode, the batches the user's loader yielded (in order), and the torch, numpy and
Python global random states; the summary has the shape's keys and a reason for every missing
one. Shapes a replica cannot serve fail at setup with one clear error.
"""

from __future__ import annotations

import random
import warnings
from typing import Any

import numpy as np
import pytest
import torch

import zoo
from lightning_sas import SASMonitor, SASReplicas, SASWarning
from lightning_sas.isolation import GlobalRNGState

STEPS = 30


def _namespace(name: str) -> Any:
    if name == "lightning.pytorch":
        import lightning.pytorch as ns
    else:
        import pytorch_lightning as ns
    return ns


def _leaves(batch: Any) -> list[torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        return [batch]
    if isinstance(batch, dict):
        return [t for k in sorted(batch) for t in _leaves(batch[k])]
    if isinstance(batch, (list, tuple)):
        return [t for item in batch for t in _leaves(item)]
    return []


def make_recorder(ns: Any) -> Any:
    class Recorder(ns.Callback):
        """Records every batch the user's loader yields (a copy of its tensors, in order)."""

        def __init__(self) -> None:
            self.batches: list[list[torch.Tensor]] = []

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            self.batches.append([t.detach().clone() for t in _leaves(batch)])

    return Recorder()


def run_shape(shape: zoo.Shape, tmp_path: Any, monitor: SASMonitor | None, seed: int = 7) -> dict[str, Any]:
    """Fit ``shape`` (with ``monitor`` or without) and return everything the contract compares."""
    ns = _namespace(shape.namespace)
    ns.seed_everything(seed)
    # the user's other generators too: the monitor must leave them where the run left them
    np.random.seed(seed)
    random.seed(seed)
    module, fit_kwargs = shape.build()
    recorder = make_recorder(ns)
    callbacks = [recorder] + ([monitor] if monitor is not None else [])
    kwargs: dict[str, Any] = dict(default_root_dir=str(tmp_path), enable_progress_bar=False, enable_model_summary=False,
                                  enable_checkpointing=False, logger=False, accelerator="cpu", devices=1,
                                  num_sanity_val_steps=0, max_steps=STEPS)
    kwargs.update(shape.trainer)
    trainer = ns.Trainer(callbacks=callbacks, **kwargs)
    trainer.fit(module, **fit_kwargs)
    rng = GlobalRNGState()
    return {
        "state": {k: v.detach().clone() for k, v in module.state_dict().items()},
        "optimizers": [o.state_dict() for o in trainer.optimizers],
        "modes": [m.training for m in module.modules()],
        "batches": recorder.batches,
        "rng": (rng.torch_cpu, rng.numpy, rng.python),
        "trainer": trainer,
    }


def assert_same_tree(a: Any, b: Any, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_tree(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=where)
    else:
        assert a == b or (a != a and b != b), where


def assert_observer(plain: dict[str, Any], monitored: dict[str, Any]) -> None:
    """The contract: the monitored run is the plain run, bitwise."""
    assert len(plain["batches"]) == len(monitored["batches"]) > 0
    assert_same_tree(plain["batches"], monitored["batches"], "batches")
    assert_same_tree(plain["state"], monitored["state"], "state")
    assert_same_tree(plain["optimizers"], monitored["optimizers"], "optimizers")
    assert plain["modes"] == monitored["modes"]
    assert torch.equal(plain["rng"][0], monitored["rng"][0]), "torch CPU RNG"
    assert_same_tree(plain["rng"][1], monitored["rng"][1], "numpy RNG")
    assert plain["rng"][2] == monitored["rng"][2], "python RNG"


def assert_keys_and_reasons(summary: dict[str, Any], expect: tuple[str, ...]) -> None:
    for key in expect:
        assert summary.get(key) is not None, (key, summary.get("unavailable", {}).get(key))
    reasons = summary["unavailable"]
    missing = [k for k, v in summary.items() if v is None]
    assert sorted(reasons) == sorted(missing), set(missing) ^ set(reasons)
    assert all(isinstance(r, str) and r for r in reasons.values())


def monitor_for(shape: zoo.Shape, **replica_kwargs: Any) -> SASMonitor:
    replicas = SASReplicas(replicas=2, probe_every=5, num_train_probes=16, num_heldout_probes=16, flush_every=10,
                           **replica_kwargs)
    return SASMonitor(flush_every=10, snapshot_every=5, sketch_every=10, probe_every=5, num_train_probes=16,
                      num_test_probes=16, figure_every=1, figure_budget=0, replicas=replicas)


@pytest.mark.parametrize("shape", [s for s in zoo.SHAPES if s.replicas is not None], ids=lambda s: s.name)
def test_zoo_shape_is_observed_not_changed(shape: zoo.Shape, tmp_path: Any) -> None:
    plain = run_shape(shape, tmp_path / "plain", None)
    monitor = monitor_for(shape, **shape.replicas)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SASWarning)  # no diagnostic of these shapes is lost with a warning
        monitored = run_shape(shape, tmp_path / "monitored", monitor)
    assert_observer(plain, monitored)
    summary = monitor.summary()
    trainer = monitored["trainer"]
    # one stream entry per optimizer step (automatic optimization), per batch (manual)
    entries = trainer.global_step if trainer.lightning_module.automatic_optimization else len(monitored["batches"])
    assert summary["steps"] == entries, (summary["steps"], entries)
    # with replicas the gap stability_gap estimates is control_heldout_gap; ergodic_gap stays the
    # main model's and needs validation data, which not every shape has
    expect = tuple("control_heldout_gap" if key == "ergodic_gap" else key for key in shape.expect)
    assert_keys_and_reasons(summary, expect + ("sas_max", "stability_gap", "fork_step"))
    assert monitor.replicas is not None and monitor.replicas.enabled


@pytest.mark.parametrize("shape", [s for s in zoo.SHAPES if s.replicas is None], ids=lambda s: s.name)
def test_zoo_shape_replicas_refused_once_monitor_still_observes(shape: zoo.Shape, tmp_path: Any) -> None:
    with pytest.raises(ValueError, match=shape.refusal or ""):
        run_shape(shape, tmp_path / "refused", monitor_for(shape))
    plain = run_shape(shape, tmp_path / "plain", None)
    monitor = SASMonitor(flush_every=10, snapshot_every=5, probe_every=5, figure_every=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        monitored = run_shape(shape, tmp_path / "monitored", monitor)
    assert_observer(plain, monitored)
    ours = [w for w in caught if issubclass(w.category, SASWarning)]
    assert len(ours) == 1, [str(w.message) for w in ours]
    assert_keys_and_reasons(monitor.summary(), shape.expect)


@pytest.mark.parametrize("path", ["fast", "generic"])
def test_observer_contract_on_both_replica_paths(path: str, tmp_path: Any) -> None:
    """Dropout draws, a shuffled loader ordered by the global generator, numpy and random seeded:
    both replica paths leave the run bitwise as it was."""
    shape = zoo.SHAPES[0]
    plain = run_shape(shape, tmp_path / "plain", None)
    monitor = monitor_for(shape, path=path, loss_fn=zoo.cross_entropy)
    monitored = run_shape(shape, tmp_path / path, monitor)
    assert_observer(plain, monitored)
    assert monitor.summary()["replica_path"] == path


def test_observer_contract_without_replicas(tmp_path: Any) -> None:
    """The first symptom: probes (their dry run included) used to consume the global generator."""
    shape = zoo.SHAPES[0]
    plain = run_shape(shape, tmp_path / "plain", None)
    monitor = SASMonitor(flush_every=10, snapshot_every=5, probe_every=5, num_train_probes=16, num_test_probes=16,
                         figure_every=1, figure_budget=0)
    assert_observer(plain, run_shape(shape, tmp_path / "monitored", monitor))
    assert monitor.summary()["ergodic_gap"] is not None


DDP_SCRIPT = """
import os, random, sys
sys.path.insert(0, {tests!r})
import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader
import zoo
from lightning_sas import SASMonitor, SASReplicas

out, mode = sys.argv[1], sys.argv[2]
pl.seed_everything(3)
np.random.seed(3)
random.seed(3)
batches = []

class Recorder(pl.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        batches.append([t.clone() for t in batch])

callbacks = [Recorder()]
if mode != "plain":
    replicas = SASReplicas(replicas=3, probe_every=5, num_train_probes=16, num_heldout_probes=16, flush_every=10,
                           path=mode, loss_fn=zoo.cross_entropy)
    callbacks.append(SASMonitor(flush_every=10, probe_every=5, num_train_probes=16, num_test_probes=16,
                                figure_every=0, store=False, replicas=replicas))
trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=30, callbacks=callbacks, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     num_sanity_val_steps=0, default_root_dir=out)
module = zoo.DropoutMLP()
trainer.fit(module, DataLoader(zoo.classification_data(256), batch_size=16, shuffle=True),
            DataLoader(zoo.classification_data(64, seed=1), batch_size=32))
torch.save({{"state": module.state_dict(), "optim": trainer.optimizers[0].state_dict(), "batches": batches,
            "torch": torch.get_rng_state(), "numpy": np.random.get_state()[1].copy(), "python": random.getstate()}},
           os.path.join(out, f"{{mode}}-rank{{trainer.global_rank}}.pt"))
"""


@pytest.mark.parametrize("path", ["fast", "generic"])
def test_observer_contract_under_ddp(path: str, tmp_path: Any) -> None:
    """Two gloo ranks with dropout and Lightning's shuffled DistributedSampler: per rank, the
    monitored run (replicas spread over the ranks) ends bitwise where the plain run ends."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "ddp_observer.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for mode in ("plain", path):
        proc = subprocess.run([sys.executable, str(script), str(tmp_path), mode], capture_output=True, text=True,
                              timeout=600, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        plain = torch.load(tmp_path / f"plain-rank{rank}.pt", weights_only=False)
        monitored = torch.load(tmp_path / f"{path}-rank{rank}.pt", weights_only=False)
        assert len(plain["batches"]) == 30
        for key in ("batches", "state", "optim", "torch", "numpy", "python"):
            assert_same_tree(plain[key], monitored[key], f"rank{rank}.{key}")


@pytest.mark.parametrize("path", ["fast", "generic"])
@pytest.mark.parametrize("name", zoo.FAST_RECIPES)
def test_recipe_shapes_run_replicas_on_both_paths(name: str, path: str, tmp_path: Any) -> None:
    """``configure_optimizers`` on ``self.trainer.model.parameters()`` (the project-template recipe)
    and on the run's settings (devices, accumulation, precision, strategy, stepping batches): the
    replicas' trainer view serves them on both paths, and the run is observed, not changed."""
    shape = zoo.shape(name)
    plain = run_shape(shape, tmp_path / "plain", None)
    monitor = monitor_for(shape, path=path, **({"loss_fn": zoo.cross_entropy} if path == "fast" else {}))
    monitored = run_shape(shape, tmp_path / path, monitor)
    assert_observer(plain, monitored)
    summary = monitor.summary()
    assert summary["replica_path"] == path and summary["sas_max"] is not None
    engine = monitor.replicas.engine
    # the replicas' optimizers hold the replicas' own parameters (trainer.model is the replica)
    if path == "generic":
        for module, optim in zip(engine.modules, engine.optim):
            assert {id(p) for g in optim.optimizers[0].param_groups for p in g["params"]} == {id(p) for p in module.parameters()}
    else:
        assert {id(p) for g in engine.optim.optimizers[0].param_groups for p in g["params"]} == {id(p) for p in engine.params.values()}


@pytest.mark.parametrize("refusal", zoo.REFUSALS, ids=lambda r: r.name)
def test_every_refusal_names_a_way_out_that_works(refusal: zoo.Refusal, tmp_path: Any) -> None:
    """Each refusal in the zoo names one way out; following it (and nothing else) makes the run
    work with replicas: the advice never points at a path that refuses the module too."""
    base = zoo.shape(refusal.shape)

    def with_module(module_factory: Any) -> zoo.Shape:
        return zoo.Shape(base.name, lambda: (module_factory(), base.build()[1]), trainer=base.trainer)

    with pytest.raises(ValueError, match=refusal.advice) as caught:
        run_shape(with_module(refusal.module), tmp_path / "refused", monitor_for(base, **refusal.replicas))
    assert "path='auto'" not in str(caught.value)  # 'auto' tries the same paths: never a way out
    module, replicas = refusal.follow(refusal.module(), dict(refusal.replicas))
    monitor = monitor_for(base, **replicas)
    run_shape(with_module(lambda: module), tmp_path / "followed", monitor)
    summary = monitor.summary()
    assert monitor.replicas.enabled and summary["sas_max"] is not None, summary["unavailable"].get("sas_max")


@pytest.mark.parametrize("name", zoo.COMPILED_WITH_VALIDATION)
def test_compiled_module_probes_find_the_validation_data(name: str, tmp_path: Any) -> None:
    """``fit(torch.compile(module), ...)`` with validation data (passed to ``fit``, validated every
    3 epochs, or from the module's own hooks): the probes find it and the monitor reports the
    ergodic gap on it, observing the run without changing it."""
    shape = zoo.shape(name)
    plain = run_shape(shape, tmp_path / "plain", None)
    monitor = SASMonitor(flush_every=10, snapshot_every=5, probe_every=5, num_train_probes=16, num_test_probes=16,
                         figure_every=0)
    assert_observer(plain, run_shape(shape, tmp_path / "monitored", monitor))
    summary = monitor.summary()
    assert summary["ergodic_gap"] is not None, summary["unavailable"].get("ergodic_gap")
    assert summary["ergodic_gap_source"] == "validation"


def test_validation_source_unwraps_a_wrapped_module_in_the_data_source(tmp_path: Any) -> None:
    """The fit loop's data source may hold the module as given (compiled, or inside a strategy's
    wrapper): its ``val_dataloader`` hook is asked on the module inside."""
    from types import SimpleNamespace

    from pytorch_lightning.trainer.connectors.data_connector import _DataLoaderSource

    from lightning_sas._private import unwrap_module
    from lightning_sas.data.loaders import validation_source

    module = zoo.OwnLoadersMLP()
    compiled = torch.compile(module, backend="eager")
    wrapped = torch.nn.DataParallel(compiled)
    assert unwrap_module(wrapped) is module and unwrap_module(module) is module and unwrap_module(None) is None
    for instance in (compiled, wrapped):
        loop = SimpleNamespace(_data_source=_DataLoaderSource(instance, "val_dataloader"))
        trainer = SimpleNamespace(val_dataloaders=None, lightning_module=instance, limit_val_batches=1.0,
                                  fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(val_loop=loop)))
        source, where = validation_source(trainer)
        assert source is not None and len(source) == 64 and where == "validation", where
    source, where = validation_source(SimpleNamespace(val_dataloaders=None, lightning_module=module, limit_val_batches=1.0))
    assert source is None and "fit_loop.epoch_loop.val_loop._data_source" in where  # named, not a traceback
