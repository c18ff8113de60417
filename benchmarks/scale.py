"""Extra peak memory and extra checkpoint bytes of ``SASMonitor`` on MLPs of 1M to 100M parameters.

    python benchmarks/scale.py                 # the table of docs/performance.md
    python benchmarks/scale.py --sizes 25M     # one size

Each figure compares two fresh processes that differ only in the callback: a plain fit and the
same fit with ``SASMonitor()`` (or ``SASMonitor(replicas=4)``), same model, data, seed and steps.

*Peak memory* is the growth of the process's resident set over the measured fit: the kernel's
high-water mark (``VmHWM`` in ``/proc/self/status``), reset (``echo 5 > /proc/self/clear_refs``)
just before the fit, minus the resident set at that moment. Two things make it robust: glibc's malloc is started with a fixed mmap
threshold (``MALLOC_MMAP_THRESHOLD_=65536``), so every tensor larger than 64 KiB is its own
mapping and goes back to the kernel when freed (the resident set follows the live tensors), and
both processes first run a short warm-up fit *with* the monitor on a tiny model, so imports and
one-time allocations are in both baselines; what remains is what the monitor holds or allocates
for this model. The extra peak is the growth with the monitor minus the growth without. (The
test suite runs both fits one after the other in one process, to start Python once.)

*Checkpoint bytes*: ``trainer.save_checkpoint`` after the fit, file size with the monitor minus
without.

The fits use SGD with momentum, batches of 16, ``steps`` optimizer steps and short cadences
(``snapshot_every = sketch_every = probe_every = 4``, ``flush_every = 8``) so that snapshots,
sketches, probes and flushes all happen; the defaults' cadences change the buffers' row counts
only (a few kB).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

#: name -> (width, hidden layers): parameters ~ layers * width^2
SIZES = {"1M": (512, 4), "25M": (2240, 5), "100M": (4096, 6)}
MONITORS = ("none", "default", "replicas4", "exact")
LABELS = {"default": "SASMonitor()", "replicas4": "SASMonitor(replicas=4)", "exact": "exact distances"}
CADENCE = dict(flush_every=8, snapshot_every=4, sketch_every=4, probe_every=4, figure_every=0)


def _status(field: str) -> int:
    """A ``/proc/self/status`` memory field, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def child(size: str, kinds: list[str], steps: int, out: str) -> None:
    """Measured fits of ``kinds`` (``none``: no callback) one after the other, in this process."""
    import gc
    import warnings

    warnings.filterwarnings("ignore")
    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_sas import SASMonitor
    from lightning_sas.callbacks import WeightSnapshots

    torch.set_num_threads(1)

    class MLP(pl.LightningModule):
        def __init__(self, width: int, layers: int, classes: int = 10) -> None:
            super().__init__()
            blocks: list[torch.nn.Module] = []
            for _ in range(layers):
                blocks += [torch.nn.Linear(width, width), torch.nn.ReLU()]
            self.net = torch.nn.Sequential(*blocks, torch.nn.Linear(width, classes))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return torch.nn.functional.cross_entropy(self(x), y)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            pass

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=1e-3, momentum=0.9)

    def data(width: int, n: int) -> tuple[DataLoader, DataLoader]:
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(n, width, generator=g), torch.randint(0, 10, (n,), generator=g)
        xv, yv = torch.randn(n, width, generator=g), torch.randint(0, 10, (n,), generator=g)
        return (DataLoader(TensorDataset(x, y), batch_size=16), DataLoader(TensorDataset(xv, yv), batch_size=64))

    def callbacks(kind: str) -> list[Any]:
        if kind == "none":
            return []
        cadence = dict(CADENCE)
        weights = None
        if kind == "exact":  # SASMonitor(weights=WeightSnapshots(exact_distances=True))
            weights = WeightSnapshots(**{k: cadence.pop(k) for k in ("snapshot_every", "sketch_every")},
                                      flush_every=cadence["flush_every"], exact_distances=True)
        return [SASMonitor(**cadence, replicas=4 if kind == "replicas4" else 0, weights=weights,
                           num_train_probes=64, num_test_probes=64, store=False)]

    def fit(model: pl.LightningModule, width: int, kind: str, n_steps: int, root: str) -> pl.Trainer:
        train, val = data(width, 16 * n_steps)
        trainer = pl.Trainer(max_steps=n_steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
                             num_sanity_val_steps=0, default_root_dir=root, callbacks=callbacks(kind))
        trainer.fit(model, train, val)
        return trainer

    width, layers = SIZES[size]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        pl.seed_everything(0, verbose=False)
        fit(MLP(16, 1), 16, "replicas4" if "replicas4" in kinds else "default", 16, tmp)  # warm-up, in every run
        for kind in kinds:
            pl.seed_everything(0, verbose=False)
            model = MLP(width, layers)
            params = sum(p.numel() for p in model.parameters())
            gc.collect()
            _reset_peak()
            before = _status("VmRSS")
            trainer = fit(model, width, kind, steps, tmp)
            peak = _status("VmHWM")
            path = os.path.join(tmp, f"{kind}.ckpt")
            trainer.save_checkpoint(path)
            results.append(dict(size=size, monitor=kind, params=params, param_bytes=4 * params, rss_before=before,
                                peak=peak, growth=peak - before, checkpoint=os.path.getsize(path)))
            os.remove(path)
            del trainer, model
            gc.collect()
    Path(out).write_text(json.dumps(results))


def measure(size: str, kinds: list[str], steps: int) -> dict[str, dict[str, Any]]:
    """Run :func:`child` for ``kinds`` in one fresh process (fixed mmap threshold); the figures
    per kind."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.json")
        proc = subprocess.run([sys.executable, __file__, "--child", size, ",".join(kinds), str(steps), out],
                              env=env, capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            raise RuntimeError(f"{size}/{kinds} failed:\n{proc.stderr[-4000:]}")
        return {r["monitor"]: r for r in json.loads(Path(out).read_text())}


def compare(plain: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """Extra peak (growth of the resident set over the fit) and checkpoint bytes of ``run`` over
    ``plain``, absolute and as multiples of the parameter bytes."""
    pb = run["param_bytes"]
    peak, ckpt = run["growth"] - plain["growth"], run["checkpoint"] - plain["checkpoint"]
    return dict(size=run["size"], monitor=run["monitor"], params=run["params"], param_bytes=pb, extra_peak=peak,
                extra_peak_x=peak / pb, extra_checkpoint=ckpt, extra_checkpoint_x=ckpt / pb)


def extra(size: str, monitor: str, steps: int, separate: bool = True) -> dict[str, Any]:
    """:func:`compare` of ``monitor`` with a plain fit: in two fresh processes (``separate``) or
    one after the other in one process (faster; the test suite's choice)."""
    if separate:
        plain, run = measure(size, ["none"], steps)["none"], measure(size, [monitor], steps)[monitor]
    else:
        both = measure(size, ["none", monitor], steps)
        plain, run = both["none"], both[monitor]
    return compare(plain, run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--monitors", nargs="+", default=["default", "replicas4"], choices=MONITORS[1:])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    mb = 1e6
    print(f"machine: {platform.machine()}, {platform.processor() or platform.platform()}, "
          f"{os.cpu_count()} CPUs; CPU fits of {args.steps} steps, one thread")
    print(f"{'model':>6} {'params':>12} {'monitor':>18} {'extra peak':>12} {'x params':>9} "
          f"{'extra ckpt':>12} {'x params':>9}")
    rows = []
    for size in args.sizes:
        plain = measure(size, ["none"], args.steps)["none"]
        for monitor in args.monitors:
            row = compare(plain, measure(size, [monitor], args.steps)[monitor])
            rows.append(row)
            label = LABELS[monitor]
            print(f"{size:>6} {row['params']:>12,} {label:>18} {row['extra_peak'] / mb:>9.1f} MB "
                  f"{row['extra_peak_x']:>8.3f}x {row['extra_checkpoint'] / mb:>9.2f} MB {row['extra_checkpoint_x']:>8.3f}x",
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3].split(","), int(sys.argv[4]), sys.argv[5])
    else:
        main()
