"""A sequence model under SASMonitor: a small causal transformer learning the Python standard
library's own source text, character by character, with the in-run SAS estimate.

The corpus is on every machine that runs Python (no download). Batches are dicts with
``input_ids`` and ``labels`` (the inputs themselves, as in Hugging Face: the model predicts token
t + 1 at position t), and no ``loss_fn`` is given: the monitor infers the per-sequence loss (token
cross-entropy averaged over each sequence, shifted because the labels are the inputs), and the
replicas run the module's own ``training_step`` on the generic path.

    python examples/char_transformer.py              # under two minutes on 2 CPU cores
    tensorboard --logdir runs                        # CUSTOM SCALARS: the Overview; TEXT: the status
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_sas import SASMonitor, SASReplicas
from lightning_sas.formatting import format_table

#: standard-library modules whose source is the corpus (plain Python text, stable across versions)
CORPUS_MODULES = ("textwrap", "string", "fnmatch", "shlex", "colorsys", "bisect", "heapq", "calendar", "difflib")


def stdlib_text(limit: int = 200_000) -> str:
    """The source of some standard-library modules, read from the running Python's ``Lib/``."""
    import importlib

    parts = []
    for name in CORPUS_MODULES:
        path = getattr(importlib.import_module(name), "__file__", None)
        if path and path.endswith(".py"):
            with open(path, encoding="utf-8") as fh:
                parts.append(fh.read())
    return "\n".join(parts)[:limit]


class CharWindows(Dataset):
    """Windows of ``context`` characters, every ``stride`` characters, as ``input_ids``/``labels``."""

    def __init__(self, ids: torch.Tensor, context: int, stride: int) -> None:
        self.ids, self.context = ids, context
        self.starts = torch.arange(0, len(ids) - context, stride)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        window = self.ids[int(self.starts[i]) : int(self.starts[i]) + self.context]
        return {"input_ids": window, "labels": window.clone()}


class CharDataModule(pl.LightningDataModule):
    """The corpus as characters: the first 90 % for training, the rest for validation."""

    def __init__(self, context: int = 32, batch_size: int = 16, seed: int = 0) -> None:
        super().__init__()
        self.context, self.batch_size, self.seed = context, batch_size, seed

    def setup(self, stage: str) -> None:
        text = stdlib_text()
        chars = sorted(set(text))
        self.vocab = {c: i for i, c in enumerate(chars)}
        ids = torch.tensor([self.vocab[c] for c in text], dtype=torch.long)
        split = int(0.9 * len(ids))
        # windows do not overlap: a held-out window shares no character with a training window
        self.train_set = CharWindows(ids[:split], self.context, stride=self.context)
        self.val_set = CharWindows(ids[split:], self.context, stride=self.context)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(self.seed), drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=64)


class CharTransformer(pl.LightningModule):
    """A GPT-style decoder: token and position embeddings, causal self-attention blocks, a head."""

    def __init__(self, vocab_size: int, width: int = 32, layers: int = 2, heads: int = 4, context: int = 32,
                 dropout: float = 0.1, lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.embed = nn.Embedding(vocab_size, width)
        self.position = nn.Embedding(context, width)
        block = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1]
        h = self.embed(input_ids) + self.position(torch.arange(t, device=input_ids.device))
        mask = nn.Transformer.generate_square_subsequent_mask(t, device=input_ids.device)
        return self.head(self.norm(self.blocks(h, mask=mask, is_causal=True)))

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = self(batch["input_ids"])[:, :-1]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.log("val_loss", self._loss(batch))

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=0.01)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--logdir", default="runs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    started = time.time()
    pl.seed_everything(args.seed, verbose=False)
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    datamodule = CharDataModule(seed=args.seed)
    datamodule.setup("fit")
    model = CharTransformer(vocab_size=len(datamodule.vocab))
    # no loss_fn: the per-sequence loss is inferred from the dict batches and the logits
    monitor = SASMonitor(flush_every=100, probe_every=50, num_train_probes=128, num_test_probes=128, seed=args.seed,
                         replicas=SASReplicas(replicas=args.replicas, probe_every=25, num_train_probes=96,
                                              num_heldout_probes=96, seed=args.seed))
    trainer = pl.Trainer(max_steps=args.steps, callbacks=[monitor], logger=TensorBoardLogger(args.logdir, name="char_transformer"),
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         val_check_interval=500, check_val_every_n_epoch=None, num_sanity_val_steps=0,
                         limit_val_batches=4)
    trainer.fit(model, datamodule=datamodule)
    summary = monitor.summary()
    shown = {k: summary.get(k) for k in ("steps", "late_phase_start", "window", "loss_mean", "iat", "ess", "ergodic_gap",
                                         "control_heldout_gap",
                                         "replica_path", "replicas", "swaps", "sas_max", "stability_gap",
                                         "stability_gap_resolved", "sas_converged")}
    print(format_table(shown, title=f"char transformer, {args.steps} steps ({time.time() - started:.0f} s)"))
    print(f"\ntensorboard --logdir {args.logdir}")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
