"""A zoo of module shapes people train, written the way people write them, not for lightning-sas.

Each ``Shape`` builds a fresh module, its data and the Trainer settings it needs. The shapes cover
the observer contract (docs: Design) and the "trust" issue list: dropout, BatchNorm, bf16, schedulers that read
``self.trainer``, ``self.log``/``self.logger`` in hooks, a causal transformer on dict batches, an
output object with ``.loss``/``.logits``, manual optimization with two optimizers (a GAN), an
``IterableDataset``, ``torch.compile``, sparse and multiple validation loaders, a frozen backbone
with two parameter groups, gradient accumulation, a DataModule built in ``setup()``,
``training_step(self, batch)`` without ``batch_idx``, LBFGS, the ``lightning.pytorch``
namespace, compiled modules validated every 3 epochs or with their own loader hooks, and the
recipes projects use: an optimizer on ``self.trainer.model.parameters()`` with torchmetrics and
``ReduceLROnPlateau`` (lightning-hydra-template), with BatchNorm, and a learning rate and warmup
from the run's devices, accumulation, precision, strategy and stepping batches. ``REFUSALS``
lists setups the replicas refuse, each with the advice its error must give and that advice
applied.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from typing import Any, Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset


def classification_data(n: int = 256, d: int = 8, classes: int = 3, seed: int = 0) -> TensorDataset:
    from conftest import make_classification

    return make_classification(n, d, classes, seed)


# -- 1. MLP with dropout, SGD, a shuffled loader without a generator (the global RNG orders it) --
class DropoutMLP(pl.LightningModule):
    def __init__(self, d: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def cross_entropy(module: Any, batch: Any) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(module(x), y, reduction="none")


# -- 2. BatchNorm CNN, AdamW, OneCycleLR per step from estimated_stepping_batches, lr logged --
class BatchNormCNN(pl.LightningModule):
    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        )
        self.head = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        self.log("lr", self.lr_schedulers().get_last_lr()[0])
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.parameters(), lr=3e-3, weight_decay=1e-2)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def image_data(n: int = 192, classes: int = 4, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.randn(n, 1, 8, 8, generator=g) * 0.5
    x[torch.arange(n), 0, y, y] += 2.0  # a learnable signal on the diagonal
    return TensorDataset(x, y)


# -- 3. ResNet-style blocks, OneCycleLR from self.trainer.max_steps (the common recipe) --------
class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.fc2(F.relu(self.fc1(x))))


class ResidualNet(pl.LightningModule):
    def __init__(self, d: int = 8, classes: int = 3, width: int = 32) -> None:
        super().__init__()
        self.stem, self.blocks, self.head = nn.Linear(d, width), nn.Sequential(Block(width), Block(width)), nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(F.relu(self.stem(x))))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        if self.logger is not None:  # some people log by hand
            self.logger.log_metrics({"manual/loss": float(loss.detach())}, step=self.global_step)
        return loss

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9, nesterov=True)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=self.trainer.max_steps)
        return [opt], [{"scheduler": sched, "interval": "step"}]


# -- 4. small causal transformer with dropout on dict batches (input_ids, labels) -------------
class TinyCausalLM(pl.LightningModule):
    def __init__(self, vocab: int = 12, width: int = 16, context: int = 10) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.zeros(context, width))
        layer = nn.TransformerEncoderLayer(width, nhead=2, dim_feedforward=32, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
        self.lm_head = nn.Linear(width, vocab)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(t, device=input_ids.device)
        h = self.encoder(self.embed(input_ids) + self.pos[:t], mask=mask, is_causal=True)
        return self.lm_head(h)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self(batch["input_ids"])
        # labels are the inputs (Hugging Face convention): position t predicts token t + 1
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1),
                               ignore_index=-100)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW(self.parameters(), lr=3e-3)


class TokenDataset(torch.utils.data.Dataset):
    """Sequences of a noisy counting pattern; the last tokens of some are padding (-100 labels)."""

    def __init__(self, n: int = 160, vocab: int = 12, context: int = 10, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        start = torch.randint(0, vocab, (n, 1), generator=g)
        seq = (start + torch.arange(context)) % vocab
        noise = torch.rand(n, context, generator=g) < 0.1
        self.ids = torch.where(noise, torch.randint(0, vocab, (n, context), generator=g), seq)
        self.pad = torch.randint(0, 3, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        labels = self.ids[i].clone()
        if self.pad[i] > 0:
            labels[-int(self.pad[i]):] = -100
        return {"input_ids": self.ids[i], "labels": torch.where(labels < 0, labels, self.ids[i])}


# -- 5. a model returning an output object with .loss and .logits -----------------------------
@dataclasses.dataclass
class ModelOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None


class OutputObjectClassifier(pl.LightningModule):
    def __init__(self, d: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d, 24), nn.GELU(), nn.Linear(24, classes))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> ModelOutput:
        logits = self.body(x)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return ModelOutput(logits=logits, loss=loss)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return self(x, labels=y).loss

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


# -- 6. a GAN: manual optimization, two optimizers ---------------------------------------------
class ManualGAN(pl.LightningModule):
    def __init__(self, per_sample: bool = True) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.generator = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
        self.discriminator = nn.Sequential(nn.Linear(2, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
        self.per_sample = per_sample

    def training_step(self, batch: Any, batch_idx: int) -> None:
        (real,) = batch
        opt_g, opt_d = self.optimizers()
        z = torch.randn(real.shape[0], 4, device=real.device)
        fake = self.generator(z)
        ones, zeros = torch.ones(real.shape[0], 1), torch.zeros(real.shape[0], 1)
        self.toggle_optimizer(opt_d)
        d_loss = (F.binary_cross_entropy_with_logits(self.discriminator(real), ones)
                  + F.binary_cross_entropy_with_logits(self.discriminator(fake.detach()), zeros))
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()
        self.untoggle_optimizer(opt_d)
        self.toggle_optimizer(opt_g)
        g_loss = F.binary_cross_entropy_with_logits(self.discriminator(fake), ones)
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()
        self.untoggle_optimizer(opt_g)
        self.log_dict({"d_loss": d_loss, "g_loss": g_loss})

    def sas_per_sample_loss(self, batch: Any) -> torch.Tensor:
        """The discriminator's loss on each real sample (what SAS is measured on)."""
        if not self.per_sample:
            raise NotImplementedError("this GAN defines no per-sample loss")
        (real,) = batch
        return F.binary_cross_entropy_with_logits(self.discriminator(real), torch.ones(real.shape[0], 1),
                                                  reduction="none")[:, 0]

    def configure_optimizers(self) -> Any:
        return [torch.optim.Adam(self.generator.parameters(), lr=2e-3, betas=(0.5, 0.9)),
                torch.optim.Adam(self.discriminator.parameters(), lr=2e-3, betas=(0.5, 0.9))]


def ring_data(n: int = 256, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    angle = torch.rand(n, generator=g) * 2 * math.pi
    return TensorDataset(torch.stack([angle.cos(), angle.sin()], 1) + 0.05 * torch.randn(n, 2, generator=g))


# -- 7. an IterableDataset, and training_step(self, batch) without batch_idx ------------------
class StreamDataset(IterableDataset):
    """A finite stream of (x, y) pairs from a seeded generator of its own."""

    def __init__(self, n: int = 320, d: int = 8, seed: int = 0) -> None:
        self.data = classification_data(n, d, seed=seed)

    def __iter__(self) -> Any:
        x, y = self.data.tensors
        for i in range(len(y)):
            yield x[i], y[i]


class NoBatchIdxMLP(pl.LightningModule):
    def __init__(self, d: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, 32), nn.Tanh(), nn.Linear(32, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any) -> torch.Tensor:  # Lightning allows leaving out batch_idx
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.RMSprop(self.parameters(), lr=1e-2)


# -- 8. a frozen backbone, two parameter groups, StepLR per epoch -----------------------------
class FrozenBackbone(pl.LightningModule):
    def __init__(self, d: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.backbone.requires_grad_(False)
        self.backbone.eval()  # kept in eval mode on purpose
        self.adapter = nn.Linear(32, 32)
        self.head = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.adapter(self.backbone(x))))

    def on_train_epoch_start(self) -> None:
        self.backbone.eval()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        self.log(f"val_loss_{dataloader_idx}", F.cross_entropy(self(x), y))

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD([{"params": self.adapter.parameters(), "lr": 0.02},
                               {"params": self.head.parameters(), "lr": 0.1}], momentum=0.5)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)]


# -- 9. a DataModule whose datasets are built in setup() ---------------------------------------
class SetupDataModule(pl.LightningDataModule):
    def __init__(self, batch_size: int = 16) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.train_set: Any = None

    def setup(self, stage: str) -> None:
        full = classification_data(320, seed=3)
        self.train_set, self.val_set = torch.utils.data.random_split(full, [256, 64], generator=torch.Generator().manual_seed(1))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=32)


# -- 10. LBFGS (a closure optimizer) on least squares --------------------------------------------
class LBFGSRegression(pl.LightningModule):
    def __init__(self, d: int = 6) -> None:
        super().__init__()
        self.linear = nn.Linear(d, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(self(x)[:, 0], y)

    def configure_optimizers(self) -> Any:
        return torch.optim.LBFGS(self.parameters(), lr=0.5, max_iter=4)


def regression_data(n: int = 192, d: int = 6, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    return TensorDataset(x, x @ torch.randn(d, generator=g) + 0.1 * torch.randn(n, generator=g))


# -- 11. the project-template recipe: optimizer from self.trainer.model, torchmetrics, plateau --
class TemplateRecipe(pl.LightningModule):
    """Written like lightning-hydra-template's ``MNISTLitModule``: the optimizer and scheduler
    are partials in ``hparams``, built on ``self.trainer.model.parameters()`` (Lightning's
    FSDP-ready pattern), losses are torchmetrics ``MeanMetric``\ s logged with ``self.log``, and
    ``ReduceLROnPlateau`` monitors the validation loss."""

    def __init__(self, d: int = 8, classes: int = 3, batchnorm: bool = False) -> None:
        super().__init__()
        import functools

        import torchmetrics

        self.save_hyperparameters(logger=False)
        self.hparams.optimizer = functools.partial(torch.optim.Adam, lr=3e-3, weight_decay=0.0)
        self.hparams.scheduler = functools.partial(torch.optim.lr_scheduler.ReduceLROnPlateau, mode="min", factor=0.5,
                                                   patience=2)
        norm: nn.Module = nn.BatchNorm1d(32) if batchnorm else nn.Identity()
        self.net = nn.Sequential(nn.Linear(d, 32), norm, nn.ReLU(), nn.Linear(32, classes))
        self.train_loss, self.val_loss = torchmetrics.MeanMetric(), torchmetrics.MeanMetric()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def on_train_start(self) -> None:
        self.val_loss.reset()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.train_loss(loss)
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.val_loss(F.cross_entropy(self(x), y))
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)

    def configure_optimizers(self) -> Any:
        optimizer = self.hparams.optimizer(params=self.trainer.model.parameters())
        scheduler = self.hparams.scheduler(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss",
                                                          "interval": "epoch", "frequency": 1}}


# -- 12. a recipe that reads the run's settings: devices, accumulation, precision, strategy ----
class ScaledWarmupRecipe(pl.LightningModule):
    """Learning rate scaled by the effective batch, a linear warmup over a share of
    ``estimated_stepping_batches``, parameters from ``self.trainer.lightning_module``, and the
    strategy's ``root_device`` and precision read in ``configure_optimizers``."""

    def __init__(self, d: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, 32), nn.GELU(), nn.Dropout(0.1), nn.Linear(32, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, sync_dist=self.trainer.world_size > 1)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self) -> Any:
        trainer = self.trainer
        scale = trainer.num_devices * trainer.num_nodes * trainer.accumulate_grad_batches * trainer.world_size
        assert trainer.strategy.root_device.type == "cpu" and str(trainer.precision) in ("32-true", "32", "bf16-mixed")
        assert trainer.max_epochs is not None or trainer.max_steps > 0
        params = [p for p in trainer.lightning_module.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=2e-3 * scale)
        total = trainer.estimated_stepping_batches
        warmup = max(1, int(0.1 * total))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


# -- 13. hooks that need what a replica cannot have (the refusals and their ways out) ----------
class NeedsFitLoopInOptimizers(DropoutMLP):
    def configure_optimizers(self) -> Any:
        _ = self.trainer.fit_loop.epoch_loop  # trainer internals a replica cannot have
        return super().configure_optimizers()


class OwnReplicaOptimizers(NeedsFitLoopInOptimizers):
    def sas_configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class NeedsFitLoopInTrainingStep(DropoutMLP):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.trainer.fit_loop.epoch_loop.batch_progress.current.ready < 0:  # trainer internals
            raise RuntimeError("unreachable")
        return super().training_step(batch, batch_idx)


class OwnLoadersMLP(DropoutMLP):
    """Its loaders come from its own ``train_dataloader``/``val_dataloader`` hooks."""

    def train_dataloader(self) -> DataLoader:
        return DataLoader(classification_data(), batch_size=16, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return _val(classification_data(64, seed=1))


def squared_error(module: Any, batch: Any) -> torch.Tensor:
    x, y = batch
    return (module(x)[:, 0] - y) ** 2


@dataclasses.dataclass
class Shape:
    """One zoo entry: ``build()`` returns ``(module, fit_kwargs)``; ``trainer`` are extra Trainer
    arguments; ``replicas`` the SASReplicas arguments the shape needs (None: replicas are expected
    to be refused at setup with ``refusal`` in the message)."""

    name: str
    build: Callable[[], tuple[Any, dict[str, Any]]]
    trainer: dict[str, Any] = dataclasses.field(default_factory=dict)
    replicas: dict[str, Any] | None = dataclasses.field(default_factory=dict)
    refusal: str | None = None
    namespace: str = "pytorch_lightning"
    #: summary keys this shape must produce (not None)
    expect: tuple[str, ...] = ("loss_mean", "weight_norm", "ergodic_gap")


def _loaders(data: Any, val: Any = None, batch_size: int = 16, shuffle: bool = True) -> dict[str, Any]:
    out = {"train_dataloaders": DataLoader(data, batch_size=batch_size, shuffle=shuffle)}
    if val is not None:
        out["val_dataloaders"] = val
    return out


def _val(data: Any) -> DataLoader:
    return DataLoader(data, batch_size=32)


def _lightning_shape() -> tuple[Any, dict[str, Any]]:
    import lightning.pytorch as L

    class LitMLP(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(self(x), y)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            pass

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    return LitMLP(), _loaders(classification_data(), _val(classification_data(64, seed=1)))


HAS_LIGHTNING = importlib.util.find_spec("lightning") is not None

SHAPES: list[Shape] = [
    Shape("dropout_mlp", lambda: (DropoutMLP(), _loaders(classification_data(), _val(classification_data(64, seed=1))))),
    Shape("batchnorm_cnn_onecycle_bf16", lambda: (BatchNormCNN(), _loaders(image_data(), _val(image_data(64, seed=1)))),
          trainer={"precision": "bf16-mixed", "gradient_clip_val": 1.0}, expect=("loss_mean", "weight_norm")),
    Shape("resnet_onecycle_max_steps", lambda: (ResidualNet(), _loaders(classification_data(), _val(classification_data(64, seed=1))))),
    Shape("causal_transformer_dict_batches", lambda: (TinyCausalLM(), _loaders(TokenDataset(), _val(TokenDataset(48, seed=1))))),
    Shape("output_object", lambda: (OutputObjectClassifier(), _loaders(classification_data(), _val(classification_data(64, seed=1))))),
    Shape("manual_gan_two_optimizers", lambda: (ManualGAN(), _loaders(ring_data())), expect=("weight_norm", "probe_train_loss")),
    Shape("manual_gan_no_per_sample_loss", lambda: (ManualGAN(per_sample=False), _loaders(ring_data())),
          replicas=None, refusal="per-sample loss", expect=("weight_norm",)),
    Shape("iterable_dataset_no_batch_idx", lambda: (NoBatchIdxMLP(), {"train_dataloaders": DataLoader(StreamDataset(), batch_size=16)}),
          expect=("loss_mean", "weight_norm", "probe_train_loss")),
    Shape("torch_compile", lambda: (torch.compile(DropoutMLP(), backend="eager"),
                                    _loaders(classification_data(), _val(classification_data(64, seed=1))))),
    Shape("validation_every_3_epochs", lambda: (DropoutMLP(), _loaders(classification_data(), _val(classification_data(64, seed=1)))),
          trainer={"check_val_every_n_epoch": 3}),
    Shape("validation_every_50_steps_two_loaders", lambda: (FrozenBackbone(), _loaders(
        classification_data(), [_val(classification_data(64, seed=1)), _val(classification_data(48, seed=2))])),
          trainer={"val_check_interval": 50, "check_val_every_n_epoch": None}),
    Shape("frozen_backbone_param_groups_steplr", lambda: (FrozenBackbone(), _loaders(classification_data(), _val(classification_data(64, seed=1))))),
    Shape("gradient_accumulation", lambda: (DropoutMLP(), _loaders(classification_data(), _val(classification_data(64, seed=1)))),
          trainer={"accumulate_grad_batches": 2}),
    Shape("datamodule_built_in_setup", lambda: (ResidualNet(), {"datamodule": SetupDataModule()})),
    Shape("lbfgs_closure", lambda: (LBFGSRegression(), _loaders(regression_data())), expect=("loss_mean", "weight_norm")),
    Shape("torch_compile_validation_every_3_epochs", lambda: (torch.compile(DropoutMLP(), backend="eager"),
                                                           _loaders(classification_data(), _val(classification_data(64, seed=1)))),
          trainer={"check_val_every_n_epoch": 3}),
    Shape("torch_compile_own_loader_hooks", lambda: (torch.compile(OwnLoadersMLP(), backend="eager"), {}),
          trainer={"check_val_every_n_epoch": 3}),
    Shape("template_recipe_trainer_model", lambda: (TemplateRecipe(), _loaders(classification_data(), _val(classification_data(64, seed=1))))),
    Shape("template_recipe_batchnorm", lambda: (TemplateRecipe(batchnorm=True), _loaders(classification_data(), _val(classification_data(64, seed=1))))),
    Shape("scaled_warmup_recipe", lambda: (ScaledWarmupRecipe(), _loaders(classification_data(), _val(classification_data(64, seed=1)))),
          trainer={"accumulate_grad_batches": 2}),
]

#: compiled modules with validation data: the probes must find it (no replicas: the gap is the validation one)
COMPILED_WITH_VALIDATION = ("torch_compile", "torch_compile_validation_every_3_epochs", "torch_compile_own_loader_hooks")

#: the recipe shapes that must run with replicas on the fast path too (given a loss_fn)
FAST_RECIPES = ("template_recipe_trainer_model", "scaled_warmup_recipe")


def shape(name: str) -> Shape:
    return next(s for s in SHAPES if s.name == name)


@dataclasses.dataclass
class Refusal:
    """A setup the replicas refuse: ``module`` and ``replicas`` (SASReplicas arguments) for
    ``shape``'s data; the error must match ``advice``, and ``follow`` (the advice applied:
    ``(module, replicas) -> (module, replicas)``) must make the run work."""

    name: str
    shape: str
    module: Callable[[], Any]
    replicas: dict[str, Any]
    advice: str
    follow: Callable[[Any, dict[str, Any]], tuple[Any, dict[str, Any]]]


def _with(**changes: Any) -> Callable[[Any, dict[str, Any]], tuple[Any, dict[str, Any]]]:
    return lambda module, replicas: (module, {**replicas, **changes})


REFUSALS: list[Refusal] = [
    Refusal("gan_per_sample_loss_raises", "manual_gan_no_per_sample_loss", lambda: ManualGAN(per_sample=False), {},
            r"Make the module's `sas_per_sample_loss\(self, batch\)", lambda module, replicas: (ManualGAN(per_sample=True), replicas)),
    Refusal("fast_without_loss_fn", "dropout_mlp", DropoutMLP, {"path": "fast"}, r"path='generic'", _with(path="generic")),
    Refusal("fast_batchnorm_template", "template_recipe_batchnorm", lambda: TemplateRecipe(batchnorm=True),
            {"path": "fast", "loss_fn": cross_entropy}, r"BatchNorm1d.*path='generic'", _with(path="generic")),
    Refusal("fast_lbfgs", "lbfgs_closure", LBFGSRegression, {"path": "fast", "loss_fn": squared_error},
            r"LBFGS.*path='generic'", _with(path="generic")),
    Refusal("fit_loop_in_configure_optimizers_generic", "dropout_mlp", NeedsFitLoopInOptimizers, {"path": "generic"},
            r"configure_optimizers uses `trainer\.fit_loop`.*sas_configure_optimizers",
            lambda module, replicas: (OwnReplicaOptimizers(), replicas)),
    Refusal("fit_loop_in_configure_optimizers_fast", "dropout_mlp", NeedsFitLoopInOptimizers,
            {"path": "fast", "loss_fn": cross_entropy}, r"configure_optimizers uses `trainer\.fit_loop`.*sas_configure_optimizers",
            lambda module, replicas: (OwnReplicaOptimizers(), replicas)),
    Refusal("fit_loop_in_training_step", "dropout_mlp", NeedsFitLoopInTrainingStep, {},
            r"training_step uses `trainer\.fit_loop`.*loss_fn=", _with(loss_fn=cross_entropy)),
]
if HAS_LIGHTNING:
    SHAPES.append(Shape("lightning_pytorch_namespace", _lightning_shape, namespace="lightning.pytorch"))
