"""SAS replicas: forking, agreement of the two paths, a least-squares known answer, setup errors."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.demos.boring_classes import ManualOptimBoringModel, RandomIterableDataset
from torch.utils.data import DataLoader, TensorDataset

from conftest import TinyClassifier, make_classification, trainer_kwargs
from lightning_sas import SASMonitor, SASReplicas
from lightning_sas.replicas.generic import GenericReplicas
from lightning_sas.replicas.stacked import StackedReplicas
from lightning_sas.stats.sas import least_squares_sas


def cross_entropy(module: Any, batch: Any) -> torch.Tensor:
    x, y = batch
    return torch.nn.functional.cross_entropy(module(x), y, reduction="none")


def test_control_replica_follows_main_model_exactly() -> None:
    """Generic fork from the main model; fed the main model's batches, it tracks it bitwise."""
    torch.manual_seed(0)
    main = TinyClassifier()
    replicas = GenericReplicas(main, 2, loss_fn=None, use_training_step=True)
    opt = torch.optim.SGD(main.parameters(), lr=main.lr)
    data = make_classification(256)
    loader = DataLoader(data, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(1))
    for step, batch in enumerate(loader):
        opt.zero_grad()
        main.training_step(batch, step).backward()
        opt.step()
        replicas.step([batch, batch], step, step)
    for r in range(2):
        for name, p in main.named_parameters():
            assert torch.equal(p.detach(), replicas.parameters_of(r)[name]), (r, name)


def test_fast_and_generic_paths_agree_in_float64() -> None:
    torch.manual_seed(0)
    main = TinyClassifier().double()
    data = make_classification(128)
    x, y = data.tensors
    fast = StackedReplicas(main, 3, loss_fn=cross_entropy)
    generic = GenericReplicas(main, 3, loss_fn=cross_entropy, use_training_step=False)
    g = torch.Generator().manual_seed(2)
    for step in range(30):
        batches = []
        for _r in range(3):
            idx = torch.randint(0, 128, (16,), generator=g)
            batches.append((x[idx].double(), y[idx]))
        fast.step(batches, step, step)
        generic.step(batches, step, step)
    shared = [(x[:40].double(), y[:40])]
    swaps = [[(x[40 + 4 * r : 44 + 4 * r].double(), y[40 + 4 * r : 44 + 4 * r]) for r in range(2)]]  # K = 2, m = 2
    for rows in ([0, 1, 2], [1, 2, 0]):  # the control first, or last (its segment is longer)
        np.testing.assert_allclose(fast.per_sample_losses(shared, swaps, rows).numpy(),
                                   generic.per_sample_losses(shared, swaps, rows).numpy(), rtol=1e-10, atol=1e-12)
    # the control's segment: shared points, then every replica's swapped points in replica order
    control = generic.per_sample_losses(shared, swaps, [0, 1, 2])[:48]
    assert control.shape == (40 + 8,)
    own = generic.per_sample_losses(shared, swaps, [0, 1, 2])[48 + 40 : 48 + 44]
    module = generic.modules[1]
    with torch.no_grad():
        direct = torch.nn.functional.cross_entropy(module.eval()(swaps[0][0][0]), swaps[0][0][1], reduction="none")
    np.testing.assert_allclose(own.numpy(), direct.numpy(), rtol=1e-12)
    for r in range(3):
        for name, value in generic.parameters_of(r).items():
            np.testing.assert_allclose(fast.parameters_of(r)[name].numpy(), value.numpy(), rtol=1e-10, atol=1e-12)


class MomentumClassifier(TinyClassifier):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=1e-3)


def test_fast_path_stores_gradients_in_their_own_layout() -> None:
    """After the first step the stacked parameters and their momentum buffers have the vmapped
    gradients' strides (autograd then stores each gradient without a copy); values are unchanged
    by the relayout: an engine rebuilt from a mid-run ``state_dict`` (contiguous) continues
    bitwise like the original, and the result matches the generic path."""
    torch.manual_seed(0)
    main = MomentumClassifier().double()
    main_opt = main.configure_optimizers()
    x, y = make_classification(128).tensors
    x = x.double()
    main_opt.zero_grad()
    main.training_step((x[:16], y[:16]), 0).backward()
    main_opt.step()  # a momentum buffer to fork
    state = [main_opt.state_dict()]
    fast = StackedReplicas(main, 3, loss_fn=cross_entropy, optimizer_state=state)
    generic = GenericReplicas(main, 3, loss_fn=cross_entropy, use_training_step=False, optimizer_state=state)
    g = torch.Generator().manual_seed(3)
    batches = [[(x[i], y[i]) for i in torch.randint(0, 128, (3, 16), generator=g)] for _ in range(12)]
    for step, b in enumerate(batches[:6]):
        fast.step(b, step, step)
        generic.step(b, step, step)
    transposed = 0
    momentum = fast.optim.optimizers[0].state
    for name, p in fast.params.items():
        assert p.grad is not None and p.grad.stride() == p.stride(), name
        assert momentum[p]["momentum_buffer"].stride() == p.stride(), name
        transposed += not p.is_contiguous()
    assert transposed == 2  # both linear weights took the vmapped gradient's transposed layout
    buffer = io.BytesIO()
    torch.save(fast.state_dict(), buffer)  # as in a checkpoint
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert all(v.is_contiguous() for v in saved["params"].values())
    resumed = StackedReplicas(main, 3, loss_fn=cross_entropy)
    resumed.load_state_dict(saved)
    for step, b in enumerate(batches[6:], start=6):
        fast.step(b, step, step)
        resumed.step(b, step, step)
        generic.step(b, step, step)
    for r in range(3):
        for name, value in generic.parameters_of(r).items():
            assert torch.equal(fast.parameters_of(r)[name], resumed.parameters_of(r)[name]), name
            np.testing.assert_allclose(fast.parameters_of(r)[name].numpy(), value.numpy(), rtol=1e-10, atol=1e-12)


def test_monitor_estimates_agree_between_paths(tmp_path: Any) -> None:
    results = {}
    for path in ("fast", "generic"):
        pl.seed_everything(0)
        loader = DataLoader(make_classification(400), batch_size=32, shuffle=True)
        replicas = SASReplicas(replicas=2, path=path, loss_fn=cross_entropy, probe_every=5,
                               num_train_probes=20, num_heldout_probes=20, flush_every=50)
        monitor = SASMonitor(flush_every=50, store=False, figure_every=0, num_train_probes=0, replicas=replicas)
        trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path / path, max_steps=200))
        trainer.fit(TinyClassifier(), loader)
        assert monitor.summary()["replica_path"] == path
        results[path] = monitor.summary()
    for key in ("sas_max", "sas_mean", "sas_replaced", "stability_gap", "control_heldout_gap"):
        assert results["fast"][key] == pytest.approx(results["generic"][key], rel=1e-4, abs=1e-6), key


class LinearRegression(pl.LightningModule):
    def __init__(self, d: int, lr: float) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(d, 1, bias=False, dtype=torch.float64)
        torch.nn.init.zeros_(self.linear.weight)
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).squeeze(-1)

    def sas_per_sample_loss(self, batch: Any) -> torch.Tensor:
        x, y = batch
        return 0.5 * (self(x) - y) ** 2

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.sas_per_sample_loss(batch).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


@pytest.mark.parametrize("swaps", [1, 4])
def test_least_squares_known_answer(tmp_path: Any, swaps: int) -> None:
    """Small-step SGD on least squares: time-averaged weights -> each dataset's LS solution, so
    d_k(z) has the closed form of ``least_squares_sas`` on every probe point (shared and swapped),
    and so have the stability gap's two sides; the replica estimate is within 20 %."""
    rng = np.random.default_rng(0)
    n, d = 120, 4
    x = rng.normal(size=(n, d))
    y = x @ rng.normal(size=d) + 0.3 * rng.normal(size=n)
    replicas = SASReplicas(replicas=3, swaps=swaps, fork_at="start", probe_every=5, num_train_probes=10,
                           num_heldout_probes=8, holdout_fraction=0.2, flush_every=400, batch_size=8, path="fast")
    # shift the held-out targets so a swap is a real change
    hold = replicas.holdout_indices(n)
    y[hold] += 3.0
    data = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    monitor = SASMonitor(flush_every=400, late_phase_start=400, store=False, figure_every=0, num_train_probes=0,
                         snapshot_every=100, sketch_every=400, replicas=replicas)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_steps=4000, precision="64-true"))
    trainer.fit(LinearRegression(d, lr=0.01), DataLoader(data, batch_size=8, shuffle=True))
    # closed form for each replica against the control, on its aligned probe points
    s_idx = replicas.data.s_indices
    probe = replicas.probe_set
    layout = probe.layout()
    metric = replicas.metric
    metric.start_step = 400
    perturbed, control, _ = layout.aligned(metric.per_point_average().numpy())
    measured, expected, gaps = [], [], []
    for k in range(1, replicas.replicas + 1):
        s_k = s_idx.copy()
        for i, z in probe.swaps[k - 1]:
            s_k[s_idx == i] = z
        points = np.concatenate([probe.shared_indices, probe.replica_swap_indices(k)])
        truth = least_squares_sas(x[s_idx], y[s_idx], x[s_k], y[s_k], x[points], y[points])
        measured.append(perturbed[k - 1] - control[k - 1])
        expected.append(truth)
        gaps.append(0.5 * (truth[layout.removed_columns].mean() - truth[layout.added_columns].mean()))
    measured, expected = np.stack(measured), np.stack(expected)
    assert np.abs(expected).mean() > 1e-3
    rel = np.abs(measured - expected).sum() / np.abs(expected).sum()
    assert rel < 0.2, rel
    summary = monitor.summary()
    assert summary["swaps"] == swaps
    cand = np.concatenate([layout.removed_columns, layout.added_columns, layout.heldout_columns])
    assert summary["sas_max"] == pytest.approx(np.abs(expected[:, cand]).max(axis=1).mean(), rel=0.2)
    assert summary["stability_gap"] == pytest.approx(np.mean(gaps), rel=0.2)
    assert summary["stability_gap_removed"] == pytest.approx(expected[:, layout.removed_columns].mean(), rel=0.2)
    assert summary["stability_gap_added"] == pytest.approx(-expected[:, layout.added_columns].mean(), rel=0.2)


def test_setup_errors(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="replicas must be"):
        SASReplicas(replicas=0)
    with pytest.raises(ValueError, match="fork_at"):
        SASReplicas(fork_at="middle")
    with pytest.raises(ValueError, match="sampler"):
        SASReplicas(sampler="shuffled")
    # bare-tensor batches (iterable or not, automatic or manual optimization) have no per-sample
    # loss: one error at setup that names the two ways out
    for module, data in ((TinyClassifier(d=32), DataLoader(RandomIterableDataset(32, 64), batch_size=4)),
                         (ManualOptimBoringModel(), None)):
        monitor = SASMonitor(store=False, figure_every=0, replicas=2)
        trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_steps=5))
        with pytest.raises(ValueError, match="per-sample loss.*sas_per_sample_loss.*loss_fn"):
            trainer.fit(module, data)
    monitor = SASMonitor(store=False, figure_every=0, replicas=2, fork_at="late_phase")
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_steps=5))
    with pytest.raises(ValueError, match="contaminated"):
        trainer.fit(TinyClassifier(), DataLoader(make_classification(200), batch_size=16))


# -- late forks on an explicit held-out set, resume without replica state ----------------------
class BatchRecorder(pl.Callback):
    """Every input row the main run trains on."""

    def __init__(self) -> None:
        self.rows: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.rows.append(batch[0].detach().clone())


def _rows_in(rows: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """For each row of ``rows``: is it (bitwise) a row of ``table``?"""
    return (rows[:, None, :] == table[None, :, :]).all(-1).any(1)


@pytest.mark.parametrize("kind", ["indices", "dataset"])
def test_late_fork_takes_the_holdout_the_main_run_never_trains_on(kind: str, tmp_path: Any) -> None:
    """End to end: the main run trains on a Subset; the held-out samples are passed as indices
    into its dataset (or as a Dataset). The main run never sees one of them, the replicas fork
    late (step 40, with the main optimizer's state), every replacement and every P_test point is
    a held-out sample, and every sample the replicas' S holds is one the main run trains on."""
    full = make_classification(300)
    held = np.sort(np.random.default_rng(5).choice(300, size=60, replace=False))
    kept = np.setdiff1d(np.arange(300), held)
    train = torch.utils.data.Subset(full, kept.tolist())
    holdout: Any = held if kind == "indices" else TensorDataset(*(t[torch.from_numpy(held)] for t in full.tensors))
    replicas = SASReplicas(replicas=2, swaps=4, fork_at=40, holdout=holdout, probe_every=5, num_train_probes=16,
                           num_heldout_probes=16, flush_every=40)
    recorder = BatchRecorder()
    monitor = SASMonitor(flush_every=40, store=False, figure_every=0, num_train_probes=0, replicas=replicas)
    pl.seed_everything(0)
    trainer = pl.Trainer(callbacks=[recorder, monitor], **trainer_kwargs(tmp_path, max_steps=120))
    trainer.fit(MomentumClassifier(), DataLoader(train, batch_size=16, shuffle=True))
    summary = monitor.summary()
    assert summary["fork_step"] == 40 and summary["sas_max"] is not None and summary["steps_since_fork"] == 80
    x_full = full.tensors[0]
    trained = torch.cat(recorder.rows)
    assert len(trained) == 120 * 16 > len(kept)  # several epochs over the Subset
    # no held-out sample is among the rows the main run trained on
    assert not _rows_in(trained, x_full[torch.from_numpy(held)]).any()
    assert _rows_in(trained, x_full[torch.from_numpy(kept)]).all()
    n = len(kept)
    data = replicas.data.samples
    added = [z for pairs in replicas.data.swaps for _, z in pairs]
    removed = [i for pairs in replicas.data.swaps for i, _ in pairs]
    assert min(added) >= n and max(removed) < n and set(replicas.data.s_indices) == set(range(n))
    heldout_probes = replicas.probe_set.shared_indices[replicas.probe_set.shared_indices >= n]
    assert len(heldout_probes) > 0
    points = torch.stack([data[int(z)][0] for z in list(added) + list(heldout_probes)])
    assert _rows_in(points, x_full[torch.from_numpy(held)]).all()  # held-out samples
    assert not _rows_in(points, x_full[torch.from_numpy(kept)]).any()  # none the main run trains on


def test_holdout_errors(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="holdout_excluded was removed.*holdout="):
        SASReplicas(holdout_excluded=True)
    with pytest.raises(ValueError, match="holdout must be"):
        SASReplicas(holdout=0.1)
    full = make_classification(200)
    cases = [
        (full, [1, 2, 3, 4, 5], "needs the training data to be a torch.utils.data.Subset"),
        (torch.utils.data.Subset(full, list(range(150))), list(range(140, 160)), "10 holdout= indices .* are in the training Subset"),
        (full, full, "the training dataset itself"),
        (torch.utils.data.Subset(full, list(range(150))), full, "the dataset the training Subset draws from"),
    ]
    for train, holdout, message in cases:
        monitor = SASMonitor(store=False, figure_every=0, replicas=SASReplicas(replicas=2, holdout=holdout))
        trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_steps=3))
        with pytest.raises(ValueError, match=message):
            trainer.fit(TinyClassifier(), DataLoader(train, batch_size=16))


def _checkpoint_without_replicas(tmp_path: Any, data: Any) -> str:
    pl.seed_everything(0)
    monitor = SASMonitor(flush_every=10, store=False, figure_every=0)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path / "first", max_steps=20))
    trainer.fit(MomentumClassifier(), DataLoader(data, batch_size=16, shuffle=True))
    path = str(tmp_path / "no-replicas.ckpt")
    trainer.save_checkpoint(path)
    return path


def test_resume_without_replica_state_is_refused_or_a_late_fork_on_holdout(tmp_path: Any) -> None:
    """Replicas requested at a resume from a checkpoint saved without them: refused at train start
    with the reason (they would fork from trained weights, labelled step 0); with ``holdout=``
    they fork at the resume step, from the restored weights and optimizer state."""
    full = make_classification(300)
    train = torch.utils.data.Subset(full, list(range(240)))
    ckpt = _checkpoint_without_replicas(tmp_path, train)
    monitor = SASMonitor(flush_every=10, store=False, figure_every=0, replicas=SASReplicas(replicas=2, probe_every=5))
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path / "refused", max_steps=40))
    with pytest.raises(ValueError, match=r"starts at step 20 without replica state.*contaminated.*holdout="):
        trainer.fit(MomentumClassifier(), DataLoader(train, batch_size=16, shuffle=True), ckpt_path=ckpt)
    replicas = SASReplicas(replicas=2, probe_every=5, holdout=list(range(240, 300)), num_train_probes=16,
                           num_heldout_probes=16, flush_every=10)
    monitor = SASMonitor(flush_every=10, store=False, figure_every=0, replicas=replicas)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path / "late", max_steps=60))
    main = MomentumClassifier()
    trainer.fit(main, DataLoader(train, batch_size=16, shuffle=True), ckpt_path=ckpt)
    summary = monitor.summary()
    assert summary["fork_step"] == 20 and summary["steps_since_fork"] == 40 and summary["sas_max"] is not None
