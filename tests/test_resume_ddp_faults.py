"""Resume gives the statistics of an uninterrupted run; 2-process DDP equals 1 process; a killed
run leaves a readable directory; NaN probe losses are excluded and counted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from conftest import TinyClassifier, make_classification, trainer_kwargs
from lightning_sas import SASMonitor, SASWarning
from lightning_sas.store import read_run

COMPARED = ("late_phase_start", "loss_mean", "loss_se", "loss_std", "iat", "ess", "dominant_period",
            "power_fraction", "geweke_z", "weight_norm", "distance_from_init", "distance_to_ergodic_mean",
            "grad_norm", "ergodic_gap", "ergodic_gap_se", "steps")


def _assert_same(a: dict[str, Any], b: dict[str, Any], keys: tuple[str, ...] = COMPARED, rel: float = 1e-6) -> None:
    for key in keys:
        if a.get(key) is None or b.get(key) is None:
            assert a.get(key) == b.get(key), key
        else:
            assert a[key] == pytest.approx(b[key], rel=rel, abs=1e-9), key


def _loaders() -> tuple[DataLoader, DataLoader]:
    return (DataLoader(make_classification(320), batch_size=32, shuffle=False),
            DataLoader(make_classification(64, seed=5), batch_size=32))


def _monitor(store: Any = True) -> SASMonitor:
    return SASMonitor(flush_every=20, snapshot_every=10, sketch_every=20, probe_every=10, figure_every=0,
                      num_train_probes=64, num_test_probes=64, store=store)


def test_resume_matches_uninterrupted_run(tmp_path: Any) -> None:
    pl.seed_everything(0)
    train, val = _loaders()
    full = _monitor()
    pl.Trainer(callbacks=[full], **trainer_kwargs(tmp_path / "full", max_steps=200, limit_val_batches=1.0)).fit(
        TinyClassifier(), train, val)

    pl.seed_everything(0)
    first = _monitor(store=str(tmp_path / "resumed" / "sas"))
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_epochs=1, save_top_k=-1)
    kwargs = trainer_kwargs(tmp_path / "resumed", max_steps=100, limit_val_batches=1.0, enable_checkpointing=True)
    pl.Trainer(callbacks=[first, ckpt], **kwargs).fit(TinyClassifier(), train, val)
    path = tmp_path / "ckpt" / "epoch=9-step=100.ckpt"
    assert path.exists()
    second = _monitor(store=str(tmp_path / "resumed" / "sas"))
    kwargs["max_steps"] = 200
    pl.Trainer(callbacks=[second, ModelCheckpoint(dirpath=str(tmp_path / "ckpt2"))], **kwargs).fit(
        TinyClassifier(), train, val, ckpt_path=str(path))
    _assert_same(second.summary(), full.summary())
    # the store of the resumed run holds every step once
    steps = read_run(tmp_path / "resumed").streams["loss"]["step"]
    np.testing.assert_array_equal(steps, np.arange(200))


def test_old_checkpoint_without_our_state_warns(tmp_path: Any) -> None:
    train, val = _loaders()
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_epochs=1, save_top_k=-1)
    kwargs = trainer_kwargs(tmp_path, max_steps=20, limit_val_batches=1.0, enable_checkpointing=True)
    pl.Trainer(callbacks=[ckpt], **kwargs).fit(TinyClassifier(), train, val)
    kwargs["max_steps"] = 40
    with pytest.warns(SASWarning, match="no SASMonitor state"):
        pl.Trainer(callbacks=[_monitor()], **kwargs).fit(TinyClassifier(), train, val,
                                                         ckpt_path=str(tmp_path / "ckpt" / "epoch=1-step=20.ckpt"))


class NaNProbeClassifier(TinyClassifier):
    """Per-sample losses with NaN for the first probe points every other evaluation."""

    calls = 0

    def sas_per_sample_loss(self, batch: Any) -> torch.Tensor:
        x, y = batch
        losses = torch.nn.functional.cross_entropy(self(x), y, reduction="none")
        NaNProbeClassifier.calls += 1
        if NaNProbeClassifier.calls % 2 == 0:
            losses = losses.clone()
            losses[:3] = float("nan")
            losses[3] = float("inf")
        return losses


def test_nan_probe_losses_are_excluded_and_counted(tmp_path: Any) -> None:
    train, val = _loaders()
    monitor = _monitor()
    pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_steps=100, limit_val_batches=1.0)).fit(
        NaNProbeClassifier(), train, val)
    summary = monitor.summary()
    assert summary["nonfinite_probe_losses"] > 0
    assert summary["ergodic_gap"] is not None and np.isfinite(summary["ergodic_gap"])


DDP_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    sys.path.insert(0, {tests!r})
    from torch.utils.data.distributed import DistributedSampler
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader
    from conftest import TinyClassifier, make_classification
    from lightning_sas import SASMonitor

    devices, batch, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    pl.seed_everything(0)
    data = make_classification(320)
    # the same global batches in both runs: rank r takes samples r, r + 2, ... in order
    sampler = DistributedSampler(data, num_replicas=devices, rank=int(os.environ.get("LOCAL_RANK", 0)), shuffle=False)
    train = DataLoader(data, batch_size=batch, sampler=sampler)
    val = DataLoader(make_classification(64, seed=5), batch_size=32)
    monitor = SASMonitor(flush_every=20, snapshot_every=10, sketch_every=20, probe_every=10, figure_every=0,
                         num_train_probes=64, num_test_probes=64, store=os.path.join(out, "sas"))
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                         use_distributed_sampler=False,
                         precision="64-true", max_steps=120, callbacks=[monitor], logger=False,
                         default_root_dir=out, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(TinyClassifier(), train, val)
    """
)


def test_ddp_two_processes_equal_one_process(tmp_path: Any) -> None:
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for devices, batch in ((1, 16), (2, 8)):
        out = tmp_path / f"run{devices}"
        proc = subprocess.run([sys.executable, str(script), str(devices), str(batch), str(out)],
                              capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    one = json.loads((tmp_path / "run1" / "sas" / "summary.json").read_text())
    two = json.loads((tmp_path / "run2" / "sas" / "summary.json").read_text())
    _assert_same(two, one)
    # only rank 0 wrote: one store, complete
    run = read_run(tmp_path / "run2")
    np.testing.assert_array_equal(run.streams["loss"]["step"], np.arange(120))
    assert not run.problems


CRASH_SCRIPT = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader
    from conftest import TinyClassifier, make_classification
    from lightning_sas import SASMonitor

    class Slow(pl.Callback):
        def on_train_batch_end(self, *args):
            time.sleep(0.01)

    train = DataLoader(make_classification(320), batch_size=32)
    val = DataLoader(make_classification(64, seed=5), batch_size=32)
    monitor = SASMonitor(flush_every=10, snapshot_every=5, sketch_every=5, probe_every=5, figure_every=0,
                         store=sys.argv[1] + "/sas")
    trainer = pl.Trainer(accelerator="cpu", max_steps=100000, callbacks=[monitor, Slow()], logger=False,
                         default_root_dir=sys.argv[1], enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(TinyClassifier(), train, val)
    """
)


def test_killed_run_leaves_a_readable_directory(tmp_path: Any) -> None:
    from lightning_sas.cli import main as cli_main

    script = tmp_path / "crash_run.py"
    script.write_text(CRASH_SCRIPT.format(tests=str(Path(__file__).parent)))
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "run")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    chunks = tmp_path / "run" / "sas" / "streams" / "loss"
    while time.time() < deadline and (not chunks.exists() or len(list(chunks.glob("*.chunk"))) < 5):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    # tear the last chunk by hand too: it must be reported, never read
    last = sorted(chunks.glob("*.chunk"))[-1]
    last.write_bytes(last.read_bytes()[:-7])
    run = read_run(tmp_path / "run")
    kinds = {p.kind for p in run.problems}
    assert "torn" in kinds and kinds <= {"torn", "orphan_tmp"}
    steps = run.streams["loss"]["step"]
    assert len(steps) >= 40 and np.all(np.diff(steps) == 1)
    assert cli_main(["report", str(tmp_path / "run"), "--json", "--out", str(tmp_path / "report")]) == 0


def _cross_entropy(module: Any, batch: Any) -> torch.Tensor:
    x, y = batch
    return torch.nn.functional.cross_entropy(module(x), y, reduction="none")


@pytest.mark.parametrize("path", ["fast", "generic"])
def test_replicas_resume_matches_uninterrupted_run(tmp_path: Any, path: str) -> None:
    from lightning_sas import SASReplicas

    def monitor() -> SASMonitor:
        replicas = SASReplicas(replicas=2, path=path, loss_fn=_cross_entropy, probe_every=5, num_train_probes=16,
                               num_heldout_probes=16, flush_every=20)
        return SASMonitor(flush_every=20, figure_every=0, num_train_probes=0, replicas=replicas)

    train = DataLoader(make_classification(320), batch_size=32, shuffle=False)
    pl.seed_everything(0)
    full = monitor()
    pl.Trainer(callbacks=[full], **trainer_kwargs(tmp_path / "full", max_steps=200)).fit(TinyClassifier(), train)
    pl.seed_everything(0)
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_epochs=1, save_top_k=-1)
    kwargs = trainer_kwargs(tmp_path / "resumed", max_steps=100, enable_checkpointing=True)
    first = monitor()
    pl.Trainer(callbacks=[first, ckpt], **kwargs).fit(TinyClassifier(), train)
    kwargs["max_steps"] = 200
    second = monitor()
    pl.Trainer(callbacks=[second, ModelCheckpoint(dirpath=str(tmp_path / "ckpt2"))], **kwargs).fit(
        TinyClassifier(), train, ckpt_path=str(tmp_path / "ckpt" / "epoch=9-step=100.ckpt"))
    assert second.summary()["replica_checkpoint_bytes"] is None or second.summary()["replica_checkpoint_bytes"] > 0
    _assert_same(second.summary(), full.summary(),
                 keys=("sas_max", "sas_mean", "sas_replaced", "stability_gap", "control_heldout_gap", "paper_coefficient"))


def test_a_failing_store_never_stops_training(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store writes in a worker thread; a write that fails (a full disk) is reported once and
    the store stops, while training, the summary and the loggers go on."""
    import lightning_sas.store.writer as writer
    from lightning_sas import SASWarning

    real = writer.atomic_write
    calls = {"n": 0}

    def failing(path: Any, data: bytes, durable: bool = True) -> None:
        calls["n"] += 1
        if calls["n"] > 4:
            raise OSError(28, "No space left on device")
        real(path, data, durable)

    monkeypatch.setattr(writer, "atomic_write", failing)
    monitor = SASMonitor(flush_every=10, figure_every=0, store=str(tmp_path / "sas"))
    with pytest.warns(SASWarning, match="No space left"):
        pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_steps=60)).fit(
            TinyClassifier(), DataLoader(make_classification(320), batch_size=32))
    assert monitor.summary()["steps"] == 60


# -- resume at a step that is not a flush boundary, on 1 and 2 processes ---------------------------
# 320 samples in global batches of 16: 20 steps per epoch; flush_every=30, so the checkpoint at the
# end of epoch 1 (step 40) holds 10 unflushed loss entries and an unflushed probe row (step 30)
RESUME_FLUSH_EVERY, RESUME_STEPS, RESUME_CKPT = 30, 100, "epoch=1-step=40.ckpt"


def _resume_monitor(store: Any) -> SASMonitor:
    return SASMonitor(flush_every=RESUME_FLUSH_EVERY, snapshot_every=10, sketch_every=20, probe_every=10,
                      figure_every=0, num_train_probes=64, num_test_probes=64, store=store)


def _assert_every_value_same(got: Any, want: Any, where: str = "summary") -> None:
    """Every value of the summary (numbers within 1e-6, nested dicts such as ``layers`` and
    ``unavailable`` key by key, flags and strings exactly)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), where
        for key in want:
            _assert_every_value_same(got[key], want[key], f"{where}[{key!r}]")
    elif isinstance(want, float) and not isinstance(want, bool) and want is not None:
        assert got == pytest.approx(want, rel=1e-6, abs=1e-9), where
    else:
        assert got == want, where


def _json_summary(monitor: SASMonitor) -> dict[str, Any]:
    return json.loads(json.dumps(monitor._json_summary()))


RESUME_DDP_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    sys.path.insert(0, {tests!r})
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler
    from conftest import TinyClassifier, make_classification
    from test_resume_ddp_faults import _resume_monitor, RESUME_STEPS, RESUME_CKPT

    out = sys.argv[1]
    rank = int(os.environ.get("LOCAL_RANK", 0))
    data = make_classification(320)
    # the same global batches as one process with batch 16: rank r takes samples r, r + 2, ... in order
    train = DataLoader(data, batch_size=8, sampler=DistributedSampler(data, num_replicas=2, rank=rank, shuffle=False))
    val = DataLoader(make_classification(64, seed=5), batch_size=32)
    for name, resume in (("full", None), ("resumed", os.path.join(out, "ckpt", RESUME_CKPT))):
        pl.seed_everything(0)
        monitor = _resume_monitor(os.path.join(out, name, "sas"))
        callbacks = [monitor] + ([ModelCheckpoint(dirpath=os.path.join(out, "ckpt"), every_n_epochs=1, save_top_k=-1)]
                                 if resume is None else [])
        trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", use_distributed_sampler=False,
                             precision="64-true", max_steps=RESUME_STEPS, callbacks=callbacks, logger=False,
                             default_root_dir=out, enable_checkpointing=resume is None, enable_progress_bar=False,
                             enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=1)
        trainer.fit(TinyClassifier(), train, val, ckpt_path=resume)
        with open(os.path.join(out, name, f"summary{{trainer.global_rank}}.json"), "w") as f:
            json.dump(monitor._json_summary(), f)
    """
)


def _one_process_resume_kwargs(root: Any, max_steps: int, checkpointing: bool) -> dict[str, Any]:
    return trainer_kwargs(root, max_steps=max_steps, precision="64-true", limit_val_batches=1,
                          enable_checkpointing=checkpointing)


def _resume_loaders() -> tuple[DataLoader, DataLoader]:
    return (DataLoader(make_classification(320), batch_size=16, shuffle=False),
            DataLoader(make_classification(64, seed=5), batch_size=32))


def test_one_process_resume_between_flushes_matches_uninterrupted_run(tmp_path: Any) -> None:
    """A checkpoint at step 40 (flush_every=30: 10 unflushed entries, one unflushed probe row)
    resumed to step 100 gives every summary value of the uninterrupted run."""
    train, val = _resume_loaders()
    pl.seed_everything(0)
    full = _resume_monitor(str(tmp_path / "full" / "sas"))
    pl.Trainer(callbacks=[full], **_one_process_resume_kwargs(tmp_path / "full", RESUME_STEPS, False)).fit(
        TinyClassifier(), train, val)
    pl.seed_everything(0)
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_epochs=1, save_top_k=-1)
    first = _resume_monitor(str(tmp_path / "resumed" / "sas"))
    pl.Trainer(callbacks=[first, ckpt], **_one_process_resume_kwargs(tmp_path / "resumed", 40, True)).fit(
        TinyClassifier(), train, val)
    saved = torch.load(tmp_path / "ckpt" / RESUME_CKPT, weights_only=True)["callbacks"][first.state_key]
    assert len(saved["loss_stream"]["pending_steps"]) == 10 and saved["probes"]["pending_steps"] == [30]
    second = _resume_monitor(str(tmp_path / "resumed" / "sas"))
    pl.Trainer(callbacks=[second], **_one_process_resume_kwargs(tmp_path / "resumed", RESUME_STEPS, False)).fit(
        TinyClassifier(), train, val, ckpt_path=str(tmp_path / "ckpt" / RESUME_CKPT))
    assert full.summary()["ergodic_gap"] is not None
    _assert_every_value_same(_json_summary(second), _json_summary(full))


@pytest.fixture(scope="module")
def two_process_resume(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 2-process launch (gloo): an uninterrupted 100-step run that checkpoints every epoch,
    then a run resumed from its step-40 checkpoint (not a flush boundary)."""
    from conftest import run_script

    out = tmp_path_factory.mktemp("resume_ddp")
    script = out / "resume_ddp.py"
    script.write_text(RESUME_DDP_SCRIPT.format(tests=str(Path(__file__).parent)))
    proc = run_script([sys.executable, str(script), str(out)], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_two_process_resume_between_flushes_matches_uninterrupted_run(two_process_resume: Path) -> None:
    """DDP, 2 ranks: the checkpoint holds the unflushed losses and probe rows summed over ranks,
    and the probe time averages every rank shares; the resumed run's summary equals the
    uninterrupted run's in every value, on both ranks."""
    out = two_process_resume
    (saved,) = [v for k, v in torch.load(out / "ckpt" / RESUME_CKPT, weights_only=True)["callbacks"].items()
                if k.startswith("SASMonitor")]
    assert len(saved["loss_stream"]["pending_steps"]) == 10 and saved["probes"]["pending_steps"] == [30]
    full = [json.loads((out / "full" / f"summary{r}.json").read_text()) for r in range(2)]
    resumed = [json.loads((out / "resumed" / f"summary{r}.json").read_text()) for r in range(2)]
    assert full[0]["ergodic_gap"] is not None and full[0]["probe_test_loss"] is not None
    _assert_every_value_same(full[1], full[0], "rank 1 vs rank 0")
    for rank in range(2):
        _assert_every_value_same(resumed[rank], full[0], f"resumed rank {rank}")
    # the resumed run's store starts at the first unflushed entry of the checkpoint, each step once
    np.testing.assert_array_equal(read_run(out / "resumed").streams["loss"]["step"], np.arange(30, RESUME_STEPS))


def test_two_process_checkpoint_resumes_on_one_process(two_process_resume: Path, tmp_path: Any) -> None:
    """The 2-process checkpoint at step 40 resumed on one process (global batch 16) gives the
    2-process uninterrupted run's summary: the state is the global one, not rank 0's share."""
    out = two_process_resume
    train, val = _resume_loaders()
    monitor = _resume_monitor(str(tmp_path / "sas"))
    pl.Trainer(callbacks=[monitor], **_one_process_resume_kwargs(tmp_path, RESUME_STEPS, False)).fit(
        TinyClassifier(), train, val, ckpt_path=str(out / "ckpt" / RESUME_CKPT))
    _assert_every_value_same(_json_summary(monitor), json.loads((out / "full" / "summary0.json").read_text()))
