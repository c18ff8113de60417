"""Main example: watch the late phase of an mnist1d MLP with ``SASMonitor`` in TensorBoard.

    python examples/mnist1d_monitor.py            # ~1-2 minutes on 2 CPU cores
    tensorboard --logdir runs                     # then open the SCALARS / CUSTOM SCALARS tabs
    lightning-sas report runs/mnist1d/version_0   # offline table and figures
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mnist1d_common import MLP, MNIST1DDataModule, make_mnist1d  # noqa: E402

from lightning_sas import SASMonitor  # noqa: E402
from lightning_sas.cli import format_table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--label-noise", type=float, default=0.0, help="fraction of training labels flipped")
    parser.add_argument("--logdir", default="runs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    pl.seed_everything(args.seed)
    data = make_mnist1d(seed=args.seed)
    datamodule = MNIST1DDataModule(data, batch_size=64, label_noise=args.label_noise, seed=args.seed)
    monitor = SASMonitor()  # defaults: the monitor most users add
    logger = TensorBoardLogger(args.logdir, name="mnist1d")
    trainer = pl.Trainer(
        max_steps=args.steps,
        callbacks=[monitor],
        logger=logger,
        accelerator="auto",
        devices=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        val_check_interval=1000,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
    )
    start = time.time()
    trainer.fit(MLP(), datamodule=datamodule)
    print(format_table(monitor.summary(), title=f"SASMonitor summary after {args.steps} steps ({time.time() - start:.0f} s)"))
    print(f"\ntensorboard --logdir {args.logdir}")
    print(f"lightning-sas report {logger.log_dir}")


if __name__ == "__main__":
    main()
