"""A monitor's identity and settings: ``state_key`` tells two monitors of one Trainer apart (and an
old checkpoint's constant key still loads); a part the user configured is never silently changed;
one rule for "this batch completed a stream entry"."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from lightning_sas import SASMonitor
from lightning_sas.callbacks import LossStream, ProbeLosses, SASReplicas, WeightSnapshots
from lightning_sas.callbacks._common import entry_completed
from lightning_sas.callbacks.monitor import LEGACY_STATE_KEY
from tests.conftest import TinyClassifier, loaders, trainer_kwargs


def _monitor(seed: int, flush_every: int) -> SASMonitor:
    return SASMonitor(flush_every=flush_every, seed=seed, store=False, figure_every=0, probe_every=5,
                      num_train_probes=16, num_test_probes=16)


def _loaded_flushes(monitor: SASMonitor) -> list[int]:
    """Record the ``flushes`` of every state the monitor is given to load."""
    seen: list[int] = []
    original = monitor.load_state_dict

    def load(state: dict[str, Any]) -> None:
        seen.append(int(state["flushes"]))
        original(state)

    monitor.load_state_dict = load  # type: ignore[method-assign]
    return seen


def _fit(tmp_path: Path, callbacks: list[Any], max_steps: int, ckpt_path: Path | None = None) -> None:
    kwargs = trainer_kwargs(tmp_path, max_steps=max_steps, enable_checkpointing=True)
    train, _ = loaders(160, batch_size=16)
    pl.Trainer(callbacks=callbacks, **kwargs).fit(TinyClassifier(), train, ckpt_path=str(ckpt_path) if ckpt_path else None)


def test_two_monitors_keep_separate_state_through_a_checkpoint(tmp_path: Path) -> None:
    first, second = _monitor(0, 2), _monitor(1, 5)
    assert first.state_key != second.state_key
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_epochs=1, save_top_k=-1)
    _fit(tmp_path, [first, second, ckpt], 10)
    path = tmp_path / "ckpt" / "epoch=0-step=10.ckpt"
    states = torch.load(path, weights_only=True)["callbacks"]
    saved_first, saved_second = states[first.state_key]["flushes"], states[second.state_key]["flushes"]
    assert saved_first > saved_second > 0  # flushes every 2 and every 5 steps

    again_first, again_second = _monitor(0, 2), _monitor(1, 5)
    seen_first, seen_second = _loaded_flushes(again_first), _loaded_flushes(again_second)
    _fit(tmp_path, [again_second, again_first, ModelCheckpoint(dirpath=str(tmp_path / "c2"))], 12, path)
    assert seen_first == [saved_first] and seen_second == [saved_second]


def test_a_checkpoint_saved_under_the_old_constant_key_loads(tmp_path: Path) -> None:
    first = _monitor(0, 2)
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_epochs=1, save_top_k=-1)
    _fit(tmp_path, [first, ckpt], 10)
    path = tmp_path / "ckpt" / "epoch=0-step=10.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    saved = checkpoint["callbacks"][first.state_key]["flushes"]
    checkpoint["callbacks"] = {LEGACY_STATE_KEY: checkpoint["callbacks"].pop(first.state_key),
                               **checkpoint["callbacks"]}
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)

    resumed = _monitor(0, 2)
    seen = _loaded_flushes(resumed)
    _fit(tmp_path, [resumed, ModelCheckpoint(dirpath=str(tmp_path / "c2"))], 12, old)
    assert seen == [saved] and saved > 0


@pytest.mark.parametrize(
    "part_arg, make_part, setting",
    [
        ("weights", lambda **kw: WeightSnapshots(**kw), "flush_every"),
        ("weights", lambda **kw: WeightSnapshots(**kw), "seed"),
        ("probes", lambda **kw: ProbeLosses(**kw), "seed"),
        ("loss_stream", lambda **kw: LossStream(**kw), "flush_every"),
        ("replicas", lambda **kw: SASReplicas(replicas=2, **kw), "seed"),
        ("replicas", lambda **kw: SASReplicas(replicas=2, **kw), "flush_every"),
    ],
)
def test_a_configured_part_setting_is_never_silently_changed(part_arg: str, make_part: Any, setting: str) -> None:
    part = make_part(**{setting: 100})
    with pytest.raises(ValueError, match=rf"{part_arg}=\w+\({setting}=100\) and SASMonitor\({setting}=7\)"):
        SASMonitor(**{part_arg: part, setting: 7})
    # the same value on both is fine; a part left at its own default takes the monitor's
    assert getattr(SASMonitor(**{part_arg: make_part(**{setting: 7}), setting: 7}), part_arg).__dict__[setting] == 7
    adopted = getattr(SASMonitor(**{part_arg: make_part(), setting: 7}), part_arg)
    assert getattr(adopted, setting) == 7


def test_an_adopted_seed_reseeds_the_sketch() -> None:
    monitor = SASMonitor(weights=WeightSnapshots(sketch_dim=8), seed=3)
    assert monitor.weights.seed == 3 and monitor.weights._projection.seed == 3


def test_entry_completed_in_automatic_and_manual_optimization() -> None:
    trainer = SimpleNamespace(global_step=3)
    assert entry_completed(trainer, automatic=True, index=2)  # the optimizer stepped past entry 2
    assert not entry_completed(trainer, automatic=True, index=3)  # accumulating, or the step was skipped
    assert entry_completed(trainer, automatic=False, index=3)  # manual: every batch is an entry
