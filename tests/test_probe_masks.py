"""Probe points without a finite loss are left out of the probe averages, never counted as 0."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from conftest import TinyClassifier, make_classification, trainer_kwargs
from lightning_sas import SASMonitor


class InfOnClassZero(TinyClassifier):
    """Per-sample losses that are infinite for every sample of class 0: those probe points never
    have a finite value."""

    def sas_per_sample_loss(self, batch: Any) -> torch.Tensor:
        x, y = batch
        losses = torch.nn.functional.cross_entropy(self(x), y, reduction="none")
        return torch.where(y == 0, torch.full_like(losses, float("inf")), losses)


def test_train_probe_loss_leaves_out_points_without_a_finite_value(tmp_path: Any) -> None:
    """Without held-out data (no ergodic gap) ``probe_train_loss`` is the mean time average of the
    training probe points that have one: brute force from the metric's blocks."""
    pl.seed_everything(0)
    monitor = SASMonitor(flush_every=20, probe_every=5, figure_every=0, num_train_probes=40, store=False)
    pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_steps=60)).fit(
        InfOnClassZero(), DataLoader(make_classification(320), batch_size=32))
    summary = monitor.summary()
    metric = monitor.probes.metric
    arrays = metric.block_arrays(metric.start_step)
    counts, sums = arrays["counts"].sum(axis=0), arrays["sums"].sum(axis=0)
    seen = counts > 0
    assert 0 < seen.sum() < metric.num_points  # some points of class 0, some of the others
    assert summary["nonfinite_probe_losses"] > 0
    assert summary["probe_train_loss"] == pytest.approx(float((sums[seen] / counts[seen]).mean()), rel=1e-12)
