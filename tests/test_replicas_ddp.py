"""Replicas spread over DDP ranks: 2 processes give the statistics of 1, each rank runs only its
own replicas, checkpoints hold every replica and resume on the same or another number of ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from lightning_sas.replicas.placement import merge_engine_states, replica_rows, select_engine_state
from lightning_sas.metrics.sas_estimate import SASEstimate

SAS_COMPARED = ("sas_max", "sas_max_se", "sas_mean", "sas_mean_se", "sas_replaced", "sas_replaced_se", "swaps",
                "stability_gap_removed", "stability_gap_added",
                "stability_gap", "stability_gap_se", "control_heldout_gap", "control_heldout_gap_se", "paper_coefficient",
                "paper_coefficient_se", "steps_since_fork")

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    sys.path.insert(0, {tests!r})
    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler
    from conftest import TinyClassifier, make_classification
    from lightning_sas import SASMonitor, SASReplicas

    devices, path, out, max_steps = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    ckpt_dir = sys.argv[5] if len(sys.argv) > 5 and sys.argv[5] != "-" else None
    resume = sys.argv[6] if len(sys.argv) > 6 else None

    def cross_entropy(module, batch):
        x, y = batch
        return torch.nn.functional.cross_entropy(module(x), y, reduction="none")

    class Report(pl.Callback):
        def on_train_end(self, trainer, pl_module):
            engine = replicas.engine
            with open(os.path.join(out, f"rank{{trainer.global_rank}}.json"), "w") as f:
                json.dump({{"n": engine.n, "rows": replicas._rows, "path": engine.path,
                           "swaps": replicas._swaps_json()}}, f)

    pl.seed_everything(0)
    data = make_classification(320)
    # the same global batches for the main model on 1 and 2 ranks (no shuffling); the replicas draw
    # their own batches (batch_size=16) from the dataset with the seeded sampler on every rank
    sampler = DistributedSampler(data, num_replicas=devices, rank=int(os.environ.get("LOCAL_RANK", 0)), shuffle=False)
    train = DataLoader(data, batch_size=16 // devices, sampler=sampler)
    replicas = SASReplicas(replicas=3, path=path, loss_fn=cross_entropy, probe_every=5, num_train_probes=16,
                           num_heldout_probes=16, flush_every=20, batch_size=16)
    monitor = SASMonitor(flush_every=20, figure_every=0, num_train_probes=0, replicas=replicas,
                         store=os.path.join(out, "sas"))
    callbacks = [monitor, Report()]
    if ckpt_dir:
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, every_n_epochs=1, save_top_k=-1))
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                         use_distributed_sampler=False, precision="64-true", max_steps=max_steps,
                         callbacks=callbacks, logger=False, default_root_dir=out,
                         enable_checkpointing=bool(ckpt_dir), enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(TinyClassifier(), train, ckpt_path=resume)
    """
)


def _run(tmp_path: Path, name: str, devices: int, path: str, max_steps: int, ckpt_dir: Path | None = None,
         resume: Path | None = None) -> dict[str, Any]:
    script = tmp_path / "replicas_ddp.py"
    if not script.exists():
        script.write_text(SCRIPT.format(tests=str(Path(__file__).parent)))
    out = tmp_path / name
    out.mkdir(exist_ok=True)
    args = [sys.executable, str(script), str(devices), path, str(out), str(max_steps), str(ckpt_dir or "-")]
    if resume is not None:
        args.append(str(resume))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "sas" / "summary.json").read_text())
    summary["_ranks"] = [json.loads((out / f"rank{r}.json").read_text()) for r in range(devices)]
    return summary


def _assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.get("sas_max") is not None
    for key in SAS_COMPARED:
        if a.get(key) is None or b.get(key) is None:
            assert a.get(key) == b.get(key), key
        else:
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), key


@pytest.mark.parametrize("path", ["fast", "generic"])
def test_two_processes_spread_replicas_and_equal_one_process(tmp_path: Path, path: str) -> None:
    one = _run(tmp_path, "one", 1, path, 100)
    two = _run(tmp_path, "two", 2, path, 100)
    assert two["replica_path"] == one["replica_path"] == path
    assert [r["n"] for r in one["_ranks"]] == [4]
    # K = 3: four replicas, two per rank, round-robin (the control on rank 0)
    assert [r["n"] for r in two["_ranks"]] == [2, 2]
    assert [r["rows"] for r in two["_ranks"]] == [[0, 2], [1, 3]]
    # every rank sees the same swaps (m = 6 each from swaps="auto" on 320 samples: 4 % of the 160 in S),
    # as one process does
    assert two["swaps"] == one["swaps"] == 6
    assert two["_ranks"][0]["swaps"] == two["_ranks"][1]["swaps"] == one["_ranks"][0]["swaps"]
    assert all(len(pairs) == 6 for pairs in one["_ranks"][0]["swaps"])
    _assert_same(two, one)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], Path]:
    """A 2-process run of 100 steps that saves a checkpoint every epoch (20 steps)."""
    tmp_path = tmp_path_factory.mktemp("replicas_ddp_resume")
    full = _run(tmp_path, "full", 2, "fast", 100, ckpt_dir=tmp_path / "ckpt")
    return tmp_path, full, tmp_path / "ckpt" / "epoch=2-step=60.ckpt"


def test_two_process_checkpoint_holds_every_replica_and_resumes(two_process_run: Any) -> None:
    tmp_path, full, ckpt = two_process_run
    saved = next(v for k, v in torch.load(ckpt, weights_only=True)["callbacks"].items()
                 if str(k).startswith("SASMonitor{"))["replicas"]
    # rank 0 saved every replica (the one-process format) and the time averages of all ranks
    assert saved["world_size"] == 2 and len(saved["rng_ranks"]) == 2
    assert all(v.shape[0] == 4 for v in saved["engine"]["params"].values())
    counts = saved["metric"]["states"]["counts"].sum(0)  # every point of every replica, summed over ranks
    assert counts.min() > 0 and torch.all(counts == counts[0])
    assert saved["swaps"] is not None and len(saved["swaps"]) == 3
    resumed = _run(tmp_path, "resumed", 2, "fast", 100, resume=ckpt)
    _assert_same(resumed, full)


def test_two_process_checkpoint_resumes_on_one_process(two_process_run: Any) -> None:
    # another number of ranks: exact for a model without randomness (the replicas' RNG aside)
    tmp_path, full, ckpt = two_process_run
    single = _run(tmp_path, "single", 1, "fast", 100, resume=ckpt)
    _assert_same(single, full)


def test_round_robin_rows() -> None:
    assert replica_rows(4, 1, 0) == [0, 1, 2, 3]
    assert replica_rows(4, 3, 0) == [0, 3] and replica_rows(4, 3, 2) == [2]
    assert replica_rows(2, 3, 2) == []


def test_rows_of_the_estimate_sum_to_the_full_state() -> None:
    from lightning_sas.data.probes import SwapLayout

    torch.manual_seed(0)
    layout = SwapLayout(replicas=3, n_train=2, n_heldout=3, m=2)
    full, parts = SASEstimate(layout, max_blocks=4), [SASEstimate(layout, max_blocks=4) for _ in range(2)]
    for step in range(11):  # enough rows to merge blocks
        values = torch.randn(layout.total, dtype=torch.float64)
        values[7] = float("nan") if step == 3 else values[7]
        full.update(values, step)
        for rank, part in enumerate(parts):
            rows = replica_rows(4, 2, rank)
            part.update(values[torch.as_tensor(layout.positions(rows))], step, rows=rows)
    for name in ("sums", "sumsqs", "counts", "nonfinite"):
        assert torch.equal(getattr(parts[0], name) + getattr(parts[1], name), getattr(full, name)), name
    assert parts[0].cursor == parts[1].cursor == full.cursor
    assert int(full.nonfinite.sum()) == 1
    # a rank with no replica adds nothing but keeps its cursor in step
    idle = SASEstimate(layout, max_blocks=4)
    for step in range(11):
        idle.update(torch.zeros(0, dtype=torch.float64), step, rows=[])
    assert idle.cursor == full.cursor and not idle.counts.any() and not idle.sums.any()
    # a full state loaded on each rank and cut to its rows sums to the full state again
    for rank, part in enumerate(parts):
        part.load_checkpoint_state(full.checkpoint_state())
        part.keep_rows(replica_rows(4, 2, rank))
    for name in ("sums", "sumsqs", "counts", "nonfinite"):
        assert torch.equal(getattr(parts[0], name) + getattr(parts[1], name), getattr(full, name)), name


def test_engine_states_merge_and_split() -> None:
    params = {"w": torch.arange(24.0).reshape(4, 3, 2)}
    optim = {"optimizers": [{"state": {0: {"exp_avg": params["w"] * 2, "step": torch.tensor(5.0)}},
                             "param_groups": [{"lr": 0.1, "params": [0]}]}], "schedulers": []}
    full = {"params": params, "optim": optim}
    parts = [(replica_rows(4, 3, r), select_engine_state(full, replica_rows(4, 3, r))) for r in range(3)]
    assert parts[1][1]["params"]["w"].shape == (1, 3, 2)
    merged = merge_engine_states(parts, 4)
    assert merged is not None and torch.equal(merged["params"]["w"], params["w"])
    state = merged["optim"]["optimizers"][0]["state"][0]
    assert torch.equal(state["exp_avg"], params["w"] * 2) and float(state["step"]) == 5.0
    generic = {"modules": [{"w": torch.tensor(float(j))} for j in range(4)], "optim": [{"j": j} for j in range(4)]}
    parts = [(replica_rows(4, 2, r), select_engine_state(generic, replica_rows(4, 2, r))) for r in range(2)]
    assert parts[1][1]["optim"] == [{"j": 1}, {"j": 3}]
    assert merge_engine_states(parts, 4) == generic
