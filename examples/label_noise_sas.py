"""SAS and the generalization gap under label noise: an mnist1d MLP at 0 %, 20 % and 40 % noise.

Each run trains the main model with ``SASMonitor(replicas=SASReplicas(K))``: a control replica on
``S`` (training data minus a held-out split) and K replicas on neighbouring datasets ``S^(k)``
(``S`` with m samples swapped for held-out ones), forked at the start and fed common random
numbers. More label noise makes training less stable: the SAS estimate, the replace-one
``stability_gap`` (both sides of every swap) and the measured gaps all grow.

    python examples/label_noise_sas.py                       # K = 4, m = auto
    python examples/label_noise_sas.py --optimizer momentum --lr 0.05
    python examples/label_noise_sas.py --swaps 1 --replicas 12   # v0.1's estimator: one swap, more replicas
    python examples/label_noise_sas.py --dataset digits --optimizer adam --lr 1e-3 --noise 0 0.4 --steps 3000

``stability_gap`` is compared with the gap it estimates, ``control_heldout_gap`` (the control
replica's time-averaged loss on the held-out split minus on its training points): "gap diff" is
their difference in combined SEs. ``ergodic_gap`` is the main model's gap on the validation set
(clean labels), a different quantity under label noise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import pytorch_lightning as pl
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mnist1d_common import MLP, MNIST1DDataModule, cross_entropy_per_sample, make_mnist1d  # noqa: E402

from lightning_sas import SASMonitor, SASReplicas  # noqa: E402


def _pm(summary: dict[str, Any], key: str) -> str:
    value, se = summary.get(key), summary.get(f"{key}_se")
    if value is None:
        return "n/a"
    return f"{value:.3f} ± {se:.3f}" if se is not None else f"{value:.3f}"


def _num(value: Any) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _agreement(summary: dict[str, Any]) -> str:
    """(stability_gap - control_heldout_gap) in units of their combined SE: within +-2, they agree."""
    keys = ("stability_gap", "stability_gap_se", "control_heldout_gap", "control_heldout_gap_se")
    if any(summary.get(k) is None for k in keys):
        return "n/a"
    se = (summary["stability_gap_se"] ** 2 + summary["control_heldout_gap_se"] ** 2) ** 0.5
    return f"{(summary['stability_gap'] - summary['control_heldout_gap']) / se:+.2f}" if se > 0 else "n/a"


def table(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """The example's table, Markdown: one row per noise level."""
    m = results[0].get("swaps") if results else None
    lines = [
        f"{args.dataset}, {args.optimizer} lr={args.lr}, K = {args.replicas} replicas × m = {m} swaps ({args.sampler} random numbers), "
        f"{args.steps} steps",
        "",
        "| noise | `sas_max` | `sas_mean` | `stability_gap` | removed side | added side | `control_heldout_gap` | gap diff | "
        "resolved | test acc. | time |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in results:
        lines.append(
            f"| {s['label_noise']:.0%} | {_pm(s, 'sas_max')} | {_pm(s, 'sas_mean')} | {_pm(s, 'stability_gap')} | "
            f"{_pm(s, 'stability_gap_removed')} | {_pm(s, 'stability_gap_added')} | {_pm(s, 'control_heldout_gap')} | "
            f"{_agreement(s)} SE | {'yes' if s.get('stability_gap_resolved') else 'no'} | {s['test_accuracy']:.3f} | "
            f"{s['seconds']:.0f} s |"
        )
    windows = [f"{s['label_noise']:.0%}: {s.get('window') or 'none'} from step {s.get('window_start')}" for s in results]
    lines += ["", "statistics window: " + "; ".join(windows)]
    return "\n".join(lines)


def load_data(dataset: str, seed: int = 0) -> dict:
    """mnist1d (generated offline) or scikit-learn's digits (the first 1200 images to train, the
    other 597 as the clean validation set, pixels scaled to [0, 1])."""
    if dataset == "digits":
        import numpy as np
        from sklearn.datasets import load_digits

        digits = load_digits()
        x, y = (digits.data / 16.0).astype(np.float32), digits.target
        return {"x": x[:1200], "y": y[:1200], "x_test": x[1200:], "y_test": y[1200:]}
    return make_mnist1d(seed=seed)


def run(noise: float, args: argparse.Namespace, data: dict) -> dict[str, Any]:
    pl.seed_everything(args.seed, verbose=False)
    datamodule = MNIST1DDataModule(data, batch_size=64, label_noise=noise, seed=args.seed)
    replicas = SASReplicas(
        replicas=args.replicas,
        swaps=args.swaps if args.swaps == "auto" else int(args.swaps),
        holdout_fraction=args.holdout_fraction,
        sampler=args.sampler,
        loss_fn=cross_entropy_per_sample,
        probe_every=args.probe_every,
        num_train_probes=200,
        num_heldout_probes=200,
        seed=args.seed,
    )
    monitor = SASMonitor(replicas=replicas, figure_every=0, seed=args.seed)
    trainer = pl.Trainer(
        max_steps=args.steps,
        callbacks=[monitor],
        logger=pl.loggers.TensorBoardLogger(args.logdir, name=f"noise{int(noise * 100)}"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    width = getattr(args, "width", None) or (192 if getattr(args, "dataset", "mnist1d") == "digits" else 256)
    weight_decay = getattr(args, "weight_decay", None)
    if weight_decay is None:
        weight_decay = 0.0 if getattr(args, "dataset", "mnist1d") == "digits" else 1e-3
    model = MLP(sizes=(data["x"].shape[1], width, width, 10), optimizer=args.optimizer, lr=args.lr, weight_decay=weight_decay)
    start = time.time()
    trainer.fit(model, datamodule=datamodule)
    x, y = datamodule.val_set.tensors
    with torch.no_grad():
        accuracy = float((model(x).argmax(1) == y).float().mean())
    summary = monitor.summary()
    summary["test_accuracy"] = accuracy
    summary["seconds"] = time.time() - start
    summary["label_noise"] = noise
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.2, 0.4])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--replicas", type=int, default=4, help="K perturbed replicas")
    parser.add_argument("--swaps", default="auto", help="m samples swapped per replica ('auto': SASReplicas' default)")
    parser.add_argument("--holdout-fraction", type=float, default=None)
    parser.add_argument("--probe-every", type=int, default=20)
    parser.add_argument("--sampler", default="common", choices=["common", "independent"])
    parser.add_argument("--optimizer", default="sgd", choices=["sgd", "momentum", "adam"])
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--dataset", default="mnist1d", choices=["mnist1d", "digits"],
                        help="digits: scikit-learn's 8x8 digits, MLP 64-192-192-10, no weight decay")
    parser.add_argument("--width", type=int, default=None, help="hidden width (default 256 on mnist1d, 192 on digits)")
    parser.add_argument("--weight-decay", type=float, default=None, help="default 1e-3 on mnist1d, 0 on digits")
    parser.add_argument("--logdir", default="runs/label_noise")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the summaries here")
    args = parser.parse_args()

    started = time.time()
    data = load_data(args.dataset, seed=args.seed)
    results = [run(noise, args, data) for noise in args.noise]
    print(table(results, args))
    print(f"\nwhole example: {time.time() - started:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
