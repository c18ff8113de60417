"""Overhead of lightning-sas: plain fit vs fit with ``SASMonitor()`` (and with replicas).

Interleaved repetitions in one process on the same model and data; prints per-repetition times
and the median ratio. Timings are never asserted in tests: this script is where they live.

    python benchmarks/overhead.py                      # SASMonitor() defaults, CPU
    python benchmarks/overhead.py --replicas 4         # + K=4 replicas, fast and generic paths
    python benchmarks/overhead.py --device cuda --sync-debug
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from typing import Any

import pytorch_lightning as pl
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
from mnist1d_common import MLP, MNIST1DDataModule, cross_entropy_per_sample, make_mnist1d  # noqa: E402

from lightning_sas import SASMonitor, SASReplicas  # noqa: E402


def _trainer(steps: int, device: str, callbacks: list[Any]) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=tempfile.mkdtemp(prefix="sas-bench-"),
        max_steps=steps,
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=1,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )


def _variant(name: str, flush_every: int) -> list[Any]:
    if name == "plain":
        return []
    if name == "monitor":
        return [SASMonitor()]  # the defaults, store included
    path = name.split("-")[1]
    replicas = SASReplicas(replicas=4, path=path, loss_fn=cross_entropy_per_sample)
    return [SASMonitor(replicas=replicas)]


def time_fit(name: str, data: dict, steps: int, device: str, seed: int) -> float:
    pl.seed_everything(seed, verbose=False)
    dm = MNIST1DDataModule(data, batch_size=64, seed=seed)
    trainer = _trainer(steps, device, _variant(name, 200))
    model = MLP()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


class _SyncCounter(pl.Callback):
    """Counts CUDA synchronisation warnings per training step (set_sync_debug_mode("warn"))."""

    def __init__(self) -> None:
        self.per_step: list[int] = []
        self._seen = 0

    def on_train_batch_start(self, *args: Any) -> None:
        self._seen = len(self.caught)

    def on_train_batch_end(self, *args: Any) -> None:
        self.per_step.append(len(self.caught) - self._seen)


def count_syncs(data: dict, steps: int, with_monitor: bool, flush_every: int = 200) -> dict[str, float]:
    """Mean synchronising calls per step (all steps, and steps that do not flush)."""
    pl.seed_everything(0, verbose=False)
    dm = MNIST1DDataModule(data, batch_size=64)
    counter = _SyncCounter()
    callbacks: list[Any] = [counter] + ([SASMonitor(store=False, flush_every=flush_every)] if with_monitor else [])
    trainer = _trainer(steps, "cuda", callbacks)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        counter.caught = caught  # type: ignore[attr-defined]
        torch.cuda.set_sync_debug_mode("warn")
        try:
            trainer.fit(MLP(), datamodule=dm)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    per_step = counter.per_step
    non_flush = [c for i, c in enumerate(per_step) if (i + 1) % flush_every != 0]
    return {"per_step": sum(per_step) / len(per_step), "per_non_flush_step": sum(non_flush) / max(len(non_flush), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--replicas", type=int, default=0, help="also time K=4 replicas (fast and generic paths)")
    parser.add_argument("--sync-debug", action="store_true", help="CUDA only: count synchronising calls per step")
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 lowers the timing noise)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = make_mnist1d()
    variants = ["plain", "monitor"] + (["replicas-fast", "replicas-generic"] if args.replicas else [])
    time_fit("plain", data, 100, args.device, 0)  # warm-up
    times: dict[str, list[float]] = {v: [] for v in variants}
    for rep in range(args.repeats):
        order = variants if rep % 2 == 0 else list(reversed(variants))
        for v in order:
            times[v].append(time_fit(v, data, args.steps, args.device, rep))
        print(f"repetition {rep}: " + ", ".join(f"{v} {times[v][-1]:.2f}s" for v in variants), flush=True)
    results: dict[str, Any] = {"threads": args.threads, "device": args.device, "steps": args.steps, "repeats": args.repeats, "times": times}
    print(f"\n{'variant':<18} {'median s':>9} {'ratio':>7} {'ratio range':>15}")
    for v in variants:
        ratios = [t / p for t, p in zip(times[v], times["plain"])]
        results[f"ratio_{v}"] = statistics.median(ratios)
        print(f"{v:<18} {statistics.median(times[v]):>9.2f} {statistics.median(ratios):>7.3f} {min(ratios):>7.3f}-{max(ratios):.3f}")
    if args.sync_debug and args.device == "cuda":
        results["syncs_plain"] = count_syncs(data, 400, with_monitor=False)
        results["syncs_monitor"] = count_syncs(data, 400, with_monitor=True)
        print(f"\nsynchronising calls per step: plain {results['syncs_plain']}, with SASMonitor {results['syncs_monitor']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
