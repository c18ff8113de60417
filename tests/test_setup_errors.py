"""Every wrong argument raises one clear error naming it (README "Setup errors")."""

from __future__ import annotations

from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from conftest import TinyClassifier, loaders, trainer_kwargs
from lightning_sas import LossStream, ProbeLosses, SASMonitor, SASReplicas, WeightSnapshots


@pytest.mark.parametrize(
    "factory, match",
    [
        (lambda: SASMonitor(flush_every=0), "flush_every must be a positive integer"),
        (lambda: LossStream(window=4), "window must be an integer >= 16"),
        (lambda: SASMonitor(max_blocks=7), "max_blocks must be an even integer"),
        (lambda: WeightSnapshots(snapshot_every=0), "snapshot_every must be a positive integer"),
        (lambda: WeightSnapshots(layer_filter="(["), "layer_filter"),
        (lambda: ProbeLosses(probe_every=-1), "probe_every must be a positive integer"),
        (lambda: SASMonitor(loss_fn=3), "loss_fn must be a callable or an import path"),
        (lambda: SASMonitor(loss_fn="no_such_package.fn"), "could not be imported"),
        (lambda: SASMonitor(replicas=-1), "replicas must be"),
        (lambda: SASMonitor(figure_every=-1), "figure_every"),
        (lambda: SASReplicas(path="turbo"), "path must be"),
        (lambda: SASReplicas(holdout_fraction=1.5), "holdout_fraction"),
    ],
)
def test_bad_arguments(factory: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        factory()


def test_loss_fn_import_path_resolves() -> None:
    probes = ProbeLosses(loss_fn="torch.nn.functional.cross_entropy")
    assert probes.loss_fn is torch.nn.functional.cross_entropy


def test_fast_path_refusal_names_the_reason(tmp_path: Any) -> None:
    class WithBatchNorm(TinyClassifier):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.BatchNorm1d(32), torch.nn.Linear(32, 3))

    train, _ = loaders()
    monitor = SASMonitor(store=False, figure_every=0, replicas=SASReplicas(2, path="fast"))
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_steps=3))
    with pytest.raises(ValueError, match="cannot run this module"):
        trainer.fit(WithBatchNorm(), train)
