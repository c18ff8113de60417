"""The mnist1d MLP and data module shared by the examples and the benchmarks.

mnist1d is generated offline (``make_dataset``; never ``get_dataset``, which downloads).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset


def make_mnist1d(num_samples: int = 5000, seed: int = 0) -> dict[str, np.ndarray]:
    """mnist1d arrays ``x``, ``y`` (train) and ``x_test``, ``y_test``, generated in a few seconds."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    return make_dataset(args)


def flip_labels(y: np.ndarray, fraction: float, classes: int = 10, seed: int = 0) -> np.ndarray:
    """Replace a ``fraction`` of the labels by uniformly random other classes (seeded)."""
    rng = np.random.default_rng(seed)
    y = y.copy()
    chosen = rng.choice(len(y), size=int(round(fraction * len(y))), replace=False)
    y[chosen] = (y[chosen] + rng.integers(1, classes, size=len(chosen))) % classes
    return y


class MNIST1DDataModule(pl.LightningDataModule):
    """Train split (labels optionally noisy) and the clean test split as validation."""

    def __init__(self, data: dict[str, np.ndarray], batch_size: int = 64, label_noise: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        y = flip_labels(data["y"], label_noise, seed=seed) if label_noise > 0 else data["y"]
        self.train_set = TensorDataset(torch.as_tensor(data["x"], dtype=torch.float32), torch.as_tensor(y, dtype=torch.long))
        self.val_set = TensorDataset(
            torch.as_tensor(data["x_test"], dtype=torch.float32), torch.as_tensor(data["y_test"], dtype=torch.long)
        )
        self.batch_size = batch_size
        self.seed = seed

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(self.seed), drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=512)


class MLP(pl.LightningModule):
    """A ReLU MLP classifier trained with plain SGD (default), momentum SGD or Adam.

    The defaults (SGD, lr 0.5, weight decay 1e-3) reach a stationary, oscillating late phase on
    mnist1d within about 2000 steps: weight decay balances the gradient, so the loss stops
    improving while the weights keep moving."""

    def __init__(self, sizes: tuple[int, ...] = (40, 256, 256, 10), lr: float = 0.5,
                 optimizer: str = "sgd", momentum: float = 0.9, weight_decay: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        layers: list[torch.nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
        self.net = torch.nn.Sequential(*layers[:-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", torch.nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.hparams.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        momentum = self.hparams.momentum if self.hparams.optimizer == "momentum" else 0.0
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=momentum,
                               weight_decay=self.hparams.weight_decay)


def cross_entropy_per_sample(module: torch.nn.Module, batch: Any) -> torch.Tensor:
    """Per-sample loss for the replicas' fast path (``loss_fn``)."""
    x, y = batch
    return torch.nn.functional.cross_entropy(module(x), y, reduction="none")


class GeneratedMNIST1D(MNIST1DDataModule):
    """The same data module, generating mnist1d itself (constructor arguments only, for LightningCLI)."""

    def __init__(self, num_samples: int = 5000, batch_size: int = 64, label_noise: float = 0.0, seed: int = 0) -> None:
        super().__init__(make_mnist1d(num_samples=num_samples, seed=seed), batch_size=batch_size,
                         label_noise=label_noise, seed=seed)
