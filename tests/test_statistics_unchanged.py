"""Statistics do not change unnoticed: three runs (plain, gradient accumulation, manual
optimization) give the recorded summaries (``tests/data/monitor_before_cost_work.json``, first
recorded before the monitor's cost work, commit db98ff9, to show that it changed no statistic).
Rerecorded with ``python tests/data/make_goldens.py`` when a statistic changes on purpose: the
last time when every statistic moved to one window (the late phase, else the second half; never
the probe at step 0), which changed the probe figures of runs without a late phase."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
from pytorch_lightning.demos.boring_classes import ManualOptimBoringModel

from conftest import TinyClassifier, loaders
from lightning_sas import SASMonitor

BEFORE = json.loads((Path(__file__).parent / "data" / "monitor_before_cost_work.json").read_text())


def summary_of(name: str, tmp_path: Any) -> dict[str, Any]:
    """The summary of run ``name`` (plain, gradient accumulation or manual optimization)."""
    pl.seed_everything(0, verbose=False)
    kw: dict[str, Any] = dict(accelerator="cpu", max_steps=300, logger=False, enable_checkpointing=False,
                              enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                              limit_val_batches=1.0, default_root_dir=str(tmp_path))
    monitor = SASMonitor(flush_every=50, snapshot_every=10, sketch_every=20, probe_every=10, num_train_probes=64,
                         num_test_probes=64, figure_every=0, store=False)
    train, val = loaders(shuffle=False)
    if name == "accumulate":
        kw["accumulate_grad_batches"] = 2
    if name == "manual":
        pl.Trainer(callbacks=[monitor], **kw).fit(ManualOptimBoringModel())
    else:
        pl.Trainer(callbacks=[monitor], **kw).fit(TinyClassifier(), train, val)
    return monitor.summary()


@pytest.mark.parametrize("name", ["plain", "accumulate", "manual"])
def test_summaries_equal_the_recorded_ones(name: str, tmp_path: Any) -> None:
    """Recorded by ``python tests/data/make_goldens.py``. Float32 training is not bit-identical
    across CPUs (their SIMD kernels sum in other orders) or dependency versions: on an AMD EPYC
    machine every value differed from the recording by up to 6e-7 relative, so floats (also inside
    the per-layer norms) compare at 1e-5 relative, far below any change of a statistic's
    definition. Keys added since the recording are not compared; a recorded reason in
    ``unavailable`` must still be given."""
    summary = summary_of(name, tmp_path)
    for key, before in BEFORE[name].items():
        if isinstance(before, float):
            assert summary[key] == pytest.approx(before, rel=1e-5, abs=1e-12), key
        elif key == "unavailable":
            assert {k: summary[key].get(k) for k in before} == before, key
        elif isinstance(before, dict):
            assert summary[key] == pytest.approx(before, rel=1e-5, abs=1e-12), key
        else:
            assert summary[key] == before, key


def test_flush_every_is_a_cost_knob_only(tmp_path: Any) -> None:
    """The default ``flush_every`` went from 200 to 400 to halve the flushes' cost: what a run
    ends with does not depend on it, except the weights' ergodic mean, whose start is decided at a
    flush (the first late-phase start that held over two flushes)."""
    from lightning_sas.diagnostics import LOSS_KEYS, PROBE_KEYS, WEIGHT_KEYS

    summaries = []
    for flush_every in (40, 100):
        pl.seed_everything(0, verbose=False)
        monitor = SASMonitor(flush_every=flush_every, snapshot_every=10, probe_every=10, num_train_probes=64,
                             num_test_probes=64, figure_every=0, store=False)
        train, val = loaders(shuffle=False)
        pl.Trainer(accelerator="cpu", max_steps=400, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                   callbacks=[monitor], default_root_dir=str(tmp_path)).fit(TinyClassifier(), train, val)
        summaries.append(monitor.summary())
    frozen = ("distance_to_ergodic_mean", "ergodic_mean_start")
    keys = [k for k in LOSS_KEYS + WEIGHT_KEYS + PROBE_KEYS if k not in frozen]
    assert summaries[0]["loss_mean"] is not None and summaries[0]["ergodic_gap"] is not None
    for key in keys:
        assert summaries[0][key] == summaries[1][key], key
