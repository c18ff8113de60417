"""Shared test fixtures: a tiny (x, y) classifier on synthetic data and Trainer defaults."""

from __future__ import annotations

import os
import random
import warnings
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

os.environ.setdefault("PL_DISABLE_FORK", "1")
# under `pytest -n N` each of the N workers gets its share of the cores for torch's intra-op pool,
# so that the workers do not oversubscribe the machine
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*LeafSpec.*")
warnings.filterwarnings("ignore", message=".*litlogger.*")


@pytest.fixture(autouse=True)
def _seeded_global_generators() -> None:
    """Every test starts from the same torch, numpy and ``random`` states, so a model's
    initialisation (and what its short run finds) does not depend on the tests that ran before."""
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)


def make_classification(n: int = 512, d: int = 10, classes: int = 3, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, classes, generator=g)
    y = (x @ w + 0.5 * torch.randn(n, classes, generator=g)).argmax(1)
    return TensorDataset(x, y)


class TinyClassifier(pl.LightningModule):
    """An MLP on (x, y) batches; ``return_dict`` makes training_step return a dict."""

    def __init__(self, d: int = 10, classes: int = 3, lr: float = 0.1, return_dict: bool = False,
                 nan_at: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(d, 32), torch.nn.ReLU(), torch.nn.Linear(32, classes))
        self.lr = lr
        self.return_dict = return_dict
        self.nan_at = set(nan_at)
        self.seen_losses: list[float] = []
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self(x), y)
        self.seen_losses.append(float(loss.detach()))
        if self.calls in self.nan_at:
            loss = loss * 0.0 + float("nan")  # NaN value, zero (finite) gradient
        self.calls += 1
        return {"loss": loss, "extra": loss.detach()} if self.return_dict else loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        pass

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def loaders(n: int = 512, batch_size: int = 32, shuffle: bool = True, seed: int = 0) -> tuple[DataLoader, DataLoader]:
    train = make_classification(n, seed=seed)
    val = make_classification(128, seed=seed + 1)
    g = torch.Generator().manual_seed(seed)
    return (
        DataLoader(train, batch_size=batch_size, shuffle=shuffle, generator=g),
        DataLoader(val, batch_size=64),
    )


def trainer_kwargs(tmp_path: Any, **overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(
        default_root_dir=str(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=False,
        accelerator="cpu",
        devices=1,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    kwargs.update(overrides)
    return kwargs


@pytest.fixture
def tiny_loaders() -> tuple[DataLoader, DataLoader]:
    return loaders()


def run_script(args: list[str], timeout: float, env: dict[str, str] | None = None) -> "subprocess.CompletedProcess[str]":
    """Run a (DDP-launching) script with a wall-clock limit: on timeout the whole process group,
    the ranks Lightning launched included, is killed and the test fails instead of hanging CI."""
    import signal
    import subprocess

    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{args[1]} did not finish within {timeout} s (a hang?):\n{err[-3000:]}")
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
