"""Overhead of lightning-sas: plain ``trainer.fit`` vs the same fit with ``SASMonitor()`` defaults.

Every fit trains the same MLP (``examples/mnist1d_common.py``) on the same data, generated once:
mnist1d by default, or the digits prototype (``--workload digits``, a step bound by per-call
overhead rather than arithmetic, as small models are on a GPU). Repetitions are interleaved in one
process and the order alternates (plain first, then monitored first), so drift in the machine's
speed hits both sides alike. Only ``trainer.fit`` is timed. Two logger settings, each compared
like with like: both fits with ``logger=False``, and both with a ``TensorBoardLogger`` (where the
monitor also writes histograms and figures).
Timings are never asserted in tests: this script is where they live.

    python benchmarks/overhead.py                          # CPU, 5 pairs x 1500 steps, both loggers
    python benchmarks/overhead.py --profile                # + where the monitor's time goes
    python benchmarks/overhead.py --repeats 0 --profile    # the profile only
    python benchmarks/overhead.py --replicas 4             # + K=4 replicas, fast and generic paths
    python benchmarks/overhead.py --replicas 4 --workload digits --loggers none
    python benchmarks/overhead.py --device cuda --sync-debug --json cuda.json
    python benchmarks/overhead.py --pairs 40 --pair-steps 400 --repeats 0   # paired short fits, bootstrap CI

``--pairs`` runs many short paired fits (plain, an empty callback with the monitor's hooks, and
``SASMonitor()``), order rotated every pair, each timed from its first training batch to its last
(the fixed costs of a fit, the monitor's set-up and teardown included, are excluded here and
reported by ``--profile``); the ratio of each pair's times is taken and the median ratio gets a
95 % bootstrap confidence interval (resampling the pairs). Pairs absorb the drift of the machine
between fits, and many short pairs average its noise: the interval resolves about 1 %.

``--sync-debug`` (CUDA only) counts synchronising CUDA calls per training step with
``torch.cuda.set_sync_debug_mode("warn")``, with and without the monitor, separately for flush
steps (``(step + 1) % flush_every == 0``, where the monitor copies to the host once by design)
and all other steps (where it should add none).

``--profile`` runs one monitored fit with timers around the monitor's hooks and parts (cheap, so
the numbers are close to an unprofiled run) and one under ``cProfile`` (the ``lightning_sas``
functions by cumulative time; cProfile inflates Python-heavy code, so read its shares as
relative).
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import json
import logging
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
from mnist1d_common import MLP, MNIST1DDataModule, cross_entropy_per_sample, make_mnist1d  # noqa: E402

import lightning_sas  # noqa: E402
from lightning_sas import SASMonitor, SASReplicas  # noqa: E402

LOGGERS = ("none", "tensorboard")


@dataclass(frozen=True)
class Workload:
    """One benchmark workload: arrays for :class:`MNIST1DDataModule`, batch size and model.

    ``mnist1d``: the examples' MLP 40-256-256-10, batch 64 (a step bound by its matrix products on
    a CPU); ``digits``: the digits prototype, sklearn digits (1200 train / 597 test), MLP
    64-128-128-10, SGD lr 0.1, batch 32 (a step bound by per-call overhead, as small models are on
    a GPU)."""

    name: str
    arrays: dict[str, np.ndarray]
    batch_size: int
    sizes: tuple[int, ...]
    lr: float

    def datamodule(self, seed: int = 0) -> MNIST1DDataModule:
        return MNIST1DDataModule(self.arrays, batch_size=self.batch_size, seed=seed)

    def model(self) -> MLP:
        return MLP(sizes=self.sizes, lr=self.lr)


def make_workload(name: str) -> Workload:
    if name == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        x, y = (digits.data / 16.0).astype(np.float32), digits.target
        arrays = {"x": x[:1200], "y": y[:1200], "x_test": x[1200:], "y_test": y[1200:]}
        return Workload(name, arrays, batch_size=32, sizes=(64, 128, 128, 10), lr=0.1)
    return Workload(name, make_mnist1d(), batch_size=64, sizes=(40, 256, 256, 10), lr=0.5)


#: labels a timed call from its arguments
Tag = Callable[[tuple[Any, ...], dict[str, Any]], str]


# -- one fit ----------------------------------------------------------------------------------
def make_callbacks(variant: str, replicas: int) -> list[pl.Callback]:
    """``plain``: none; ``monitor``: ``SASMonitor()`` with its defaults (store and figures on);
    ``replicas-fast`` / ``replicas-generic``: the monitor with ``replicas`` in-run replicas."""
    if variant == "plain":
        return []
    if variant == "monitor":
        return [SASMonitor()]
    path = variant.removeprefix("replicas-")
    return [SASMonitor(replicas=SASReplicas(replicas=replicas, path=path, loss_fn=cross_entropy_per_sample))]


def make_trainer(steps: int, device: str, logger: str, root: str, callbacks: list[pl.Callback]) -> pl.Trainer:
    """A training-only trainer (no validation, checkpoints, progress bar or model summary)."""
    return pl.Trainer(
        default_root_dir=root,
        max_steps=steps,
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=1,
        callbacks=callbacks,
        logger=TensorBoardLogger(root, name="bench") if logger == "tensorboard" else False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_fit(data: Workload, variant: str, logger: str, steps: int, device: str, seed: int, replicas: int = 0) -> float:
    """Wall time of ``trainer.fit`` alone (model, data module and trainer are built before)."""
    pl.seed_everything(seed, verbose=False)
    datamodule = data.datamodule(seed)
    model = data.model()
    with tempfile.TemporaryDirectory(prefix="sas-bench-") as root:
        trainer = make_trainer(steps, device, logger, root, make_callbacks(variant, replicas))
        _synchronize(device)
        start = time.perf_counter()
        trainer.fit(model, datamodule=datamodule)
        _synchronize(device)
        return time.perf_counter() - start


# -- paired short fits with a bootstrap interval -------------------------------------------------
class EmptyCallback(pl.Callback):
    """A callback with the hooks ``SASMonitor`` implements, doing nothing: Lightning's dispatch
    cost of one more callback, the baseline the monitor cannot go below."""

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        pass

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        pass

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        pass

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        pass

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        pass


class LoopClock(pl.Callback):
    """Wall time from the first training batch's start to the last batch's end (put it last, so
    the other callbacks' work at the last step counts)."""

    def __init__(self) -> None:
        self.started: float | None = None
        self.ended = 0.0

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.started is None:
            self.started = time.perf_counter()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.ended = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.ended - (self.started or self.ended)


def time_loop(data: Workload, variant: str, logger: str, steps: int, device: str, seed: int) -> float:
    """Seconds of the training loop alone (first batch to last) of one fit of ``variant``:
    ``plain``, ``empty`` (:class:`EmptyCallback`) or ``monitor``."""
    pl.seed_everything(seed, verbose=False)
    datamodule = data.datamodule(seed)
    model = data.model()
    clock = LoopClock()
    callbacks: list[pl.Callback] = {"plain": [], "empty": [EmptyCallback()], "monitor": [SASMonitor()]}[variant]
    with tempfile.TemporaryDirectory(prefix="sas-pair-") as root:
        trainer = make_trainer(steps, device, logger, root, callbacks + [clock])
        trainer.fit(model, datamodule=datamodule)
    _synchronize(device)
    return clock.seconds


def bootstrap_median(ratios: list[float], draws: int = 4000, seed: int = 0) -> tuple[float, float, float]:
    """Median of ``ratios`` and its 95 % percentile-bootstrap interval (pairs resampled)."""
    values = np.asarray(ratios, dtype=np.float64)
    rng = np.random.default_rng(seed)
    medians = np.median(values[rng.integers(0, values.size, size=(draws, values.size))], axis=1)
    low, high = np.quantile(medians, [0.025, 0.975])
    return float(np.median(values)), float(low), float(high)


def run_pairs(data: Workload, args: argparse.Namespace) -> dict[str, Any]:
    """``--pairs`` paired fits per logger setting; ratios with bootstrap intervals."""
    variants = ["plain", "empty", "monitor"]
    results: dict[str, Any] = {}
    for logger in args.loggers:
        for variant in variants:  # warm-up: imports, allocator, the first writer and figure
            time_loop(data, variant, logger, min(args.pair_steps, 100), args.device, 0)
        times: dict[str, list[float]] = {v: [] for v in variants}
        for pair in range(args.pairs):
            order = variants[pair % 3:] + variants[: pair % 3]  # rotate which goes first
            for variant in order:
                times[variant].append(time_loop(data, variant, logger, args.pair_steps, args.device, pair))
        out: dict[str, Any] = {"times": times, "plain_ms_per_step": 1000 * statistics.median(times["plain"]) / args.pair_steps}
        for num, den in (("monitor", "plain"), ("empty", "plain"), ("monitor", "empty")):
            ratios = [a / b for a, b in zip(times[num], times[den])]
            median, low, high = bootstrap_median(ratios)
            extra = 1000 * statistics.median(a - b for a, b in zip(times[num], times[den])) / args.pair_steps
            out[f"{num}/{den}"] = {"median": median, "ci_low": low, "ci_high": high, "extra_ms_per_step": extra}
        results[logger] = out
    print(f"\npaired fits: {args.pairs} pairs x {args.pair_steps} steps per logger setting, training loop timed "
          f"(first batch to last), order rotated")
    print(f"{'logger':<12} {'plain ms/step':>13} {'ratio':<16} {'median':>7} {'95 % CI':>15} {'+ms/step':>9}")
    for logger, out in results.items():
        for key in ("monitor/plain", "empty/plain", "monitor/empty"):
            r = out[key]
            print(f"{logger:<12} {out['plain_ms_per_step']:>13.3f} {key:<16} {r['median']:>7.4f} "
                  f"{r['ci_low']:>7.4f}-{r['ci_high']:<7.4f} {r['extra_ms_per_step']:>9.4f}")
    print("monitor/plain: the goal; empty/plain: Lightning's dispatch of one more callback; monitor/empty: the monitor's own work")
    return results


# -- interleaved timings ----------------------------------------------------------------------
def run_timings(data: Workload, args: argparse.Namespace, variants: list[str]) -> dict[str, dict[str, list[float]]]:
    """``times[logger][variant]``: one wall time per repetition, printed as they come."""
    for logger in args.loggers:  # warm-up: imports, allocator, first TensorBoard writer and figure
        for variant in variants:
            time_fit(data, variant, logger, 50, args.device, 0, args.replicas)
    times = {logger: {v: [] for v in variants} for logger in args.loggers}
    for rep in range(args.repeats):
        order = variants if rep % 2 == 0 else variants[::-1]
        for logger in args.loggers:
            for variant in order:
                times[logger][variant].append(time_fit(data, variant, logger, args.steps, args.device, rep, args.replicas))
            row = "  ".join(f"{v} {times[logger][v][-1]:6.2f} s" for v in variants)
            print(f"rep {rep}  logger={logger:<11}  {row}  (first: {order[0]})", flush=True)
    return times


def ratio_stats(monitored: list[float], plain: list[float], steps: int) -> dict[str, float]:
    """Median, quartiles and range of the per-repetition ratios monitored / plain, and the
    median extra time per training step."""
    ratios = sorted(m / p for m, p in zip(monitored, plain))
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else (ratios[0],) * 3
    return {
        "median": statistics.median(ratios),
        "q1": q1,
        "q3": q3,
        "min": ratios[0],
        "max": ratios[-1],
        "extra_ms_per_step": 1000 * statistics.median(m - p for m, p in zip(monitored, plain)) / steps,
    }


def print_timing_table(times: dict[str, dict[str, list[float]]], steps: int) -> dict[str, Any]:
    print(f"\n{'logger':<12} {'variant':<17} {'median s':>8} {'ms/step':>8} {'ratio':>6} {'IQR':>12} {'min-max':>12} {'+ms/step':>8}")
    out: dict[str, Any] = {}
    for logger, by_variant in times.items():
        for variant, values in by_variant.items():
            median = statistics.median(values)
            line = f"{logger:<12} {variant:<17} {median:>8.2f} {1000 * median / steps:>8.2f}"
            if variant != "plain":
                r = ratio_stats(values, by_variant["plain"], steps)
                out[f"{logger}/{variant}"] = r
                line += f" {r['median']:>6.3f} {r['q1']:>5.3f}-{r['q3']:<6.3f} {r['min']:>5.3f}-{r['max']:<6.3f} {r['extra_ms_per_step']:>8.3f}"
            print(line)
    print("ratio = monitored / plain time of the same repetition; IQR and min-max over repetitions")
    return out


# -- synchronising calls (CUDA) ---------------------------------------------------------------
class SyncCounter(pl.Callback):
    """Running count of CUDA synchronisation warnings, read at each ``on_train_batch_end``.

    Put it last in ``callbacks``: Lightning calls the hooks in list order, so the monitor's own
    ``on_train_batch_end`` (and its flush) of a step is counted in that step.
    """

    def __init__(self, caught: list[warnings.WarningMessage]) -> None:
        self.caught = caught
        self._scanned = 0
        self._count = 0
        self.locations: collections.Counter[str] = collections.Counter()
        self.at_start = 0
        self.at_end = 0
        #: (optimizer step index, running count) after each step
        self.marks: list[tuple[int, int]] = []

    def count(self) -> int:
        for w in self.caught[self._scanned :]:
            if "synchroniz" in str(w.message).lower():
                self._count += 1
                self.locations[f"{w.filename}:{w.lineno}"] += 1
        self._scanned = len(self.caught)
        return self._count

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.at_start = self.count()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.marks.append((trainer.global_step - 1, self.count()))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.at_end = self.count()


def count_syncs(data: Workload, variant: str, steps: int, flush_every: int) -> dict[str, Any]:
    """Synchronising calls per training step of one fit (``logger=False``)."""
    pl.seed_everything(0, verbose=False)
    datamodule = data.datamodule()
    with warnings.catch_warnings(record=True) as caught, tempfile.TemporaryDirectory(prefix="sas-sync-") as root:
        warnings.simplefilter("always")
        counter = SyncCounter(caught)
        trainer = make_trainer(steps, "cuda", "none", root, make_callbacks(variant, 0) + [counter])
        torch.cuda.set_sync_debug_mode("warn")
        try:
            trainer.fit(data.model(), datamodule=datamodule)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    per_step: list[tuple[int, int]] = []
    previous = counter.at_start
    for step, running in counter.marks:
        per_step.append((step, running - previous))
        previous = running
    flush = [n for s, n in per_step if (s + 1) % flush_every == 0]
    other = [n for s, n in per_step if (s + 1) % flush_every != 0]
    return {
        "steps": len(per_step),
        "whole_fit": counter.at_end,
        "per_step": sum(n for _, n in per_step) / max(len(per_step), 1),
        "per_flush_step": sum(flush) / max(len(flush), 1),
        "per_non_flush_step": sum(other) / max(len(other), 1),
        "non_flush_steps_with_syncs": sum(1 for n in other if n),
        "top_locations": counter.locations.most_common(5),
    }


def print_sync_table(results: dict[str, dict[str, Any]], flush_every: int) -> None:
    print(f"\nsynchronising CUDA calls (set_sync_debug_mode('warn')), flush_every={flush_every}")
    print(f"{'variant':<10} {'steps':>6} {'whole fit':>9} {'per step':>9} {'per flush step':>15} {'per other step':>15} {'other steps with any':>21}")
    for variant, r in results.items():
        print(
            f"{variant:<10} {r['steps']:>6} {r['whole_fit']:>9} {r['per_step']:>9.3f} {r['per_flush_step']:>15.2f} "
            f"{r['per_non_flush_step']:>15.3f} {r['non_flush_steps_with_syncs']:>21}"
        )
        for location, n in r["top_locations"]:
            print(f"    {n:>6} x {location}")


# -- where the monitor's time goes ------------------------------------------------------------
class StepClock(pl.Callback):
    """Holds the optimizer step a batch contributes to (put it first in ``callbacks``)."""

    def __init__(self) -> None:
        self.index = -1

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self.index = int(trainer.global_step)


class HookTimer:
    """Wraps methods (of an instance, class or module) with ``perf_counter`` timers for the
    duration of a ``with`` block; ``calls[label]`` holds ``(step, seconds)`` per call. On CUDA each
    timed call synchronises first and last, so kernels count where they are launched."""

    def __init__(self, clock: StepClock, device: str) -> None:
        self.clock = clock
        self.device = device
        self.calls: dict[str, list[tuple[int, float]]] = collections.defaultdict(list)
        self._targets: list[tuple[str, Any, str, Tag | None]] = []

    def add(self, label: str, owner: Any, name: str, tag: Tag | None = None) -> None:
        """Time ``owner.name`` under ``label`` (plus ``tag(args, kwargs)`` of each call, if given)."""
        if callable(getattr(owner, name, None)):  # parts renamed in the library are skipped
            self._targets.append((label, owner, name, tag))

    def _wrap(self, label: str, fn: Callable[..., Any], tag: Tag | None) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            _synchronize(self.device)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                _synchronize(self.device)
                key = label + (tag(args, kwargs) if tag else "")
                self.calls[key].append((self.clock.index, time.perf_counter() - start))

        return timed

    @contextmanager
    def active(self) -> Iterator[None]:
        saved = [(owner, name, owner.__dict__.get(name, None), name in owner.__dict__) for _, owner, name, _ in self._targets]
        for label, owner, name, tag in self._targets:
            setattr(owner, name, self._wrap(label, getattr(owner, name), tag))
        try:
            yield
        finally:
            for owner, name, original, had in reversed(saved):
                if had:
                    setattr(owner, name, original)
                else:
                    delattr(owner, name)

    def row(self, label: str, keep: Callable[[int], bool] = lambda step: True) -> tuple[int, float]:
        chosen = [s for step, s in self.calls.get(label, []) if keep(step)]
        return len(chosen), sum(chosen)


def time_monitor_parts(data: Workload, args: argparse.Namespace) -> dict[str, Any]:
    """One monitored fit (TensorBoard logger, defaults) with timers around the monitor's parts."""
    from lightning_sas.loggers import export
    from lightning_sas.store import RunWriter

    pl.seed_everything(0, verbose=False)
    datamodule = data.datamodule()
    monitor = SASMonitor()
    clock = StepClock()
    timer = HookTimer(clock, args.device)
    for hook in ("setup", "on_train_start", "on_before_optimizer_step", "on_train_batch_end", "on_train_epoch_end",
                 "on_train_end", "teardown", "flush"):
        timer.add(f"monitor.{hook}", monitor, hook)
    for part, name in (("weights", "attach"), ("probes", "attach")):
        timer.add(f"{part}.{name}", getattr(monitor, part), name)
    timer.add("write_layout", export, "write_layout")
    timer.add("store.open", RunWriter, "__init__")
    for part, name in (("loss_stream", "record"), ("weights", "capture"), ("weights", "snapshot"), ("probes", "probe"),
                       ("loss_stream", "flush"), ("weights", "flush"), ("probes", "flush")):
        timer.add(f"{part}.{name}", getattr(monitor, part), name)
    timer.add("export_flush", export, "export_flush", lambda args, kwargs: "+figures" if kwargs.get("figures") else "")
    timer.add("figures", export, "_figures")
    timer.add("store.append", RunWriter, "append")
    timer.add("store.write_summary", RunWriter, "write_summary")
    time_fit(data, "monitor", "tensorboard", 50, args.device, 0)  # warm-up: imports, first figure
    with tempfile.TemporaryDirectory(prefix="sas-profile-") as root, timer.active():
        trainer = make_trainer(args.profile_steps, args.device, "tensorboard", root, [clock, monitor])
        start = time.perf_counter()
        trainer.fit(data.model(), datamodule=datamodule)
        fit_s = time.perf_counter() - start

    w, p = monitor.weights, monitor.probes
    snapshot = lambda s: s % w.snapshot_every == 0  # noqa: E731
    sketch = lambda s: snapshot(s) and s % w.sketch_every == 0  # noqa: E731
    rows: list[tuple[str, str, int, float]] = []

    def add(label: str, cadence: str, key: str, keep: Callable[[int], bool] = lambda step: True) -> None:
        if key in timer.calls:
            rows.append((label, cadence, *timer.row(key, keep)))

    hooks = [k for k in timer.calls if k.startswith("monitor.on_") or k in ("monitor.setup", "monitor.teardown")]
    rows.append(("all monitor hooks", "", len(timer.calls["monitor.on_train_batch_end"]), sum(timer.row(k)[1] for k in hooks)))
    add("  on_train_batch_end", "every step", "monitor.on_train_batch_end")
    add("    loss stream hot path", "every step", "loss_stream.record")
    add("  on_before_optimizer_step", "every step", "monitor.on_before_optimizer_step")
    add("    weight snapshot: grad norm, copy before step", f"every {w.snapshot_every}", "weights.capture")
    add("  weight snapshot: norms, distances", f"every {w.snapshot_every}", "weights.snapshot", lambda s: not sketch(s))
    add("  weight snapshot + sketch", f"every {w.sketch_every}", "weights.snapshot", sketch)
    add("  probe losses", f"every {p.probe_every}", "probes.probe")
    add("  flush, total", f"every {monitor.flush_every}", "monitor.flush")
    add("    loss stream (MSER, ACF, IAT, spectrum)", f"every {monitor.flush_every}", "loss_stream.flush")
    add("    weights", f"every {monitor.flush_every}", "weights.flush")
    add("    probes (time averages, gap)", f"every {monitor.flush_every}", "probes.flush")
    add("    export: scalars, histograms", f"every {monitor.flush_every}", "export_flush")
    add("    export: same + figures", f"every {monitor.figure_every} flushes", "export_flush+figures")
    add("      of which drawing the figures", f"every {monitor.figure_every} flushes", "figures")
    add("    store: stream chunks", f"every {monitor.flush_every}", "store.append")
    add("    store: summary", f"every {monitor.flush_every}", "store.write_summary")
    add("  on_train_epoch_end", "every epoch", "monitor.on_train_epoch_end")
    add("  fixed: setup (hparams merge)", "once", "monitor.setup")
    add("  fixed: on_train_start", "once", "monitor.on_train_start")
    add("    of which probe set (choice, batches, dry run)", "once", "probes.attach")
    add("    of which weight copies", "once", "weights.attach")
    add("    of which store (open, meta)", "once", "store.open")
    add("    of which custom-scalars layout", "once", "write_layout")
    add("  fixed: on_train_end (last flush, close)", "once", "monitor.on_train_end")
    add("  fixed: teardown", "once", "monitor.teardown")

    print(f"\nwhere SASMonitor()'s time goes: one fit of {args.profile_steps} steps, TensorBoard logger, {fit_s:.2f} s")
    print(f"{'part':<47} {'cadence':<16} {'calls':>6} {'total s':>8} {'ms/call':>8} {'% of fit':>8}")
    for label, cadence, n, seconds in rows:
        print(f"{label:<47} {cadence:<16} {n:>6} {seconds:>8.3f} {1000 * seconds / max(n, 1):>8.3f} {100 * seconds / fit_s:>8.2f}")
    flushes = [s for _, s in timer.calls.get("monitor.flush", [])]
    print("each flush, ms: " + " ".join(f"{1000 * s:.1f}" for s in flushes))
    dispatch = dispatch_cost(data, args)
    per_step = dispatch["dispatches_per_step"] * dispatch["us_per_dispatch"] / 1000
    print(f"Lightning's dispatch of one more callback: {dispatch['dispatches_per_step']:.2f} hook calls per step x "
          f"{dispatch['us_per_dispatch']:.2f} us = {per_step:.4f} ms per step ({100 * per_step * args.profile_steps / fit_s / 1000:.2f} % of this fit)")
    fixed = sum(timer.row(k)[1] for k in ("monitor.setup", "monitor.on_train_start", "monitor.on_train_end", "monitor.teardown"))
    print(f"fixed costs (setup, on_train_start, on_train_end, teardown): {1000 * fixed:.1f} ms")
    return {
        "dispatch": dispatch,
        "fixed_ms": 1000 * fixed,
        "steps": args.profile_steps,
        "fit_s": fit_s,
        "rows": [{"part": lbl.strip(), "cadence": c, "calls": n, "seconds": s} for lbl, c, n, s in rows],
        "flush_ms": [1000 * s for s in flushes],
    }


def dispatch_cost(data: Workload, args: argparse.Namespace) -> dict[str, float]:
    """Lightning's cost of one more callback: the hook dispatches per training step (counted on a
    short fit) times the time one dispatch takes (with and without an empty callback)."""
    import timeit

    from pytorch_lightning.trainer import call

    counted = collections.Counter()
    original = call._call_callback_hooks

    def counting(trainer: Any, hook_name: str, *a: Any, **k: Any) -> Any:
        counted[hook_name] += 1
        return original(trainer, hook_name, *a, **k)

    steps = 200
    with tempfile.TemporaryDirectory(prefix="sas-dispatch-") as root:
        call._call_callback_hooks = counting  # type: ignore[assignment]
        try:
            trainer = make_trainer(steps, args.device, "none", root, [EmptyCallback()])
            trainer.fit(data.model(), datamodule=data.datamodule())
        finally:
            call._call_callback_hooks = original  # type: ignore[assignment]
        per_step = sum(n for hook, n in counted.items() if counted[hook] >= steps) / steps
        timings = []
        for callbacks in ([], [EmptyCallback()]):
            trainer = make_trainer(1, args.device, "none", root, callbacks)
            trainer.fit(data.model(), datamodule=data.datamodule())
            n = 20000
            timings.append(min(timeit.repeat(lambda: original(trainer, "on_before_zero_grad", None), number=n, repeat=5)) / n)
    return {"dispatches_per_step": per_step, "us_per_dispatch": 1e6 * (timings[1] - timings[0])}


def cprofile_monitor(data: Workload, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One monitored fit under cProfile; the ``lightning_sas`` functions by cumulative time."""
    pl.seed_everything(0, verbose=False)
    datamodule = data.datamodule()
    profiler = cProfile.Profile()
    with tempfile.TemporaryDirectory(prefix="sas-cprofile-") as root:
        trainer = make_trainer(args.profile_steps, args.device, "tensorboard", root, [SASMonitor()])
        start = time.perf_counter()
        profiler.runcall(trainer.fit, data.model(), datamodule=datamodule)
        fit_s = time.perf_counter() - start
    package = os.path.dirname(os.path.abspath(lightning_sas.__file__))
    entries = []
    for (filename, line, func), (_, ncalls, tottime, cumtime, _) in pstats.Stats(profiler).stats.items():  # type: ignore[attr-defined]
        if os.path.abspath(filename).startswith(package + os.sep):
            where = f"{os.path.relpath(filename, os.path.dirname(package))}:{line}({func})"
            entries.append({"function": where, "ncalls": ncalls, "tottime": tottime, "cumtime": cumtime})
    entries.sort(key=lambda e: -e["cumtime"])
    print(f"\ncProfile: lightning_sas functions by cumulative time (profiled fit {fit_s:.2f} s, {args.profile_steps} steps)")
    print(f"{'cumtime s':>9} {'% of fit':>8} {'tottime s':>9} {'ncalls':>7}  function")
    for e in entries[: args.profile_top]:
        print(f"{e['cumtime']:>9.3f} {100 * e['cumtime'] / fit_s:>8.2f} {e['tottime']:>9.3f} {e['ncalls']:>7}  {e['function']}")
    return entries[: args.profile_top]


# -- main -------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500, help="optimizer steps per timed fit (default 1500)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repetitions (pairs) per logger setting; 0 skips timing")
    parser.add_argument("--loggers", nargs="+", choices=LOGGERS, default=list(LOGGERS), help="logger settings to compare (default: both)")
    parser.add_argument("--workload", choices=["mnist1d", "digits"], default="mnist1d",
                        help="mnist1d MLP (default, matrix-product bound on a CPU) or the digits prototype (overhead bound)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default 0: torch's default)")
    parser.add_argument("--replicas", type=int, default=0, help="also time SASMonitor(replicas=K), fast and generic paths")
    parser.add_argument("--sync-debug", action="store_true", help="CUDA only: count synchronising calls per step")
    parser.add_argument("--sync-steps", type=int, default=600, help="steps of each --sync-debug fit (default 600)")
    parser.add_argument("--profile", action="store_true", help="report where the monitor's time goes (timers and cProfile)")
    parser.add_argument("--profile-steps", type=int, default=4000, help="steps of each profiled fit (default 4000: the loss window fills)")
    parser.add_argument("--profile-top", type=int, default=30, help="cProfile entries shown (default 30)")
    parser.add_argument("--pairs", type=int, default=0, help="paired short fits per logger setting (0: off)")
    parser.add_argument("--pair-steps", type=int, default=400, help="optimizer steps of each paired fit (default 400)")
    parser.add_argument("--json", metavar="OUT", help="also write the results to this JSON file")
    return parser.parse_args()


def quiet_lightning() -> None:
    """No per-fit banners: Lightning's info logs and its known advice warnings."""
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


def main() -> None:
    args = parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet_lightning()
    data = make_workload(args.workload)
    results: dict[str, Any] = {
        "args": vars(args),
        "torch": torch.__version__,
        "lightning": pl.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine(),
    }
    print(f"workload {data.name}: MLP {'-'.join(map(str, data.sizes))}, batch {data.batch_size}; "
          f"{args.device} ({results['device_name']}), torch {torch.__version__} with {torch.get_num_threads()} threads, "
          f"{args.repeats} repetitions x {args.steps} steps, loggers: {', '.join(args.loggers)}", flush=True)

    if args.repeats > 0:
        variants = ["plain", "monitor"] + (["replicas-fast", "replicas-generic"] if args.replicas else [])
        times = run_timings(data, args, variants)
        results["times"] = times
        results["ratios"] = print_timing_table(times, args.steps)
    if args.pairs > 0:
        results["pairs"] = run_pairs(data, args)
    if args.sync_debug:
        if args.device != "cuda":
            print("\n--sync-debug needs --device cuda: skipped")
        else:
            flush_every = SASMonitor().flush_every
            results["syncs"] = {v: count_syncs(data, v, args.sync_steps, flush_every) for v in ("plain", "monitor")}
            print_sync_table(results["syncs"], flush_every)
    if args.profile:
        results["profile"] = time_monitor_parts(data, args)
        results["cprofile"] = cprofile_monitor(data, args)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1, default=str)
        print(f"\nresults written to {args.json}")


if __name__ == "__main__":
    main()
