"""Collectives under DDP, counted; no hang when a part fails on one rank; FSDP2 end to end.

Two 2-process launches (gloo, Lightning's ``strategy="ddp"`` and ``ModelParallelStrategy`` with
FSDP2 ``fully_shard`` on CPU). Every function of ``torch.distributed`` that communicates is
wrapped to count its calls, and the monitor's hooks record how many ran inside them.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from conftest import TinyClassifier, make_classification, run_script, trainer_kwargs
from lightning_sas import SASMonitor, SASReplicas, SASWarning

#: the communicating functions of torch.distributed (each counted once, nested calls not again)
COUNTING = textwrap.dedent(
    """
    import torch.distributed as dist
    import torch.distributed.distributed_c10d as c10d

    COUNT = {"n": 0, "depth": 0}
    NAMES = ("all_reduce", "all_gather", "all_gather_object", "all_gather_into_tensor", "gather", "gather_object",
             "broadcast", "broadcast_object_list", "reduce", "reduce_scatter", "reduce_scatter_tensor", "scatter",
             "scatter_object_list", "all_to_all", "all_to_all_single", "barrier", "monitored_barrier", "send", "recv",
             "isend", "irecv", "batch_isend_irecv")

    def counted(fn):
        def wrapper(*args, **kwargs):
            COUNT["depth"] += 1
            if COUNT["depth"] == 1:
                COUNT["n"] += 1
            try:
                return fn(*args, **kwargs)
            finally:
                COUNT["depth"] -= 1
        wrapper.__wrapped__ = fn
        return wrapper

    for module in (dist, c10d):
        for name in NAMES:
            if hasattr(module, name):
                setattr(module, name, counted(getattr(module, name)))

    HOOKS = ("setup", "on_train_start", "on_before_optimizer_step", "on_train_batch_end", "on_train_epoch_end",
             "on_train_end", "state_dict", "load_state_dict", "on_load_checkpoint")

    def counting_monitor(cls):
        class Counted(cls):
            pass
        for name in HOOKS:
            def hook(self, *args, _name=name, **kwargs):
                if "collectives" not in vars(self):
                    self.collectives = {name: [] for name in HOOKS + ("flush_step", "plain_step")}
                before, flushes = COUNT["n"], self._flushes
                result = getattr(cls, _name)(self, *args, **kwargs)
                calls = COUNT["n"] - before
                if _name == "on_train_batch_end":
                    self.collectives["flush_step" if self._flushes > flushes else "plain_step"].append(calls)
                else:
                    self.collectives[_name].append(calls)
                return result
            setattr(Counted, name, hook)
        return Counted
    """
)

DDP_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, warnings
    sys.path.insert(0, {tests!r})
    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler
    from conftest import TinyClassifier, make_classification
    from lightning_sas import SASMonitor, SASReplicas

    out = sys.argv[1]
    rank = int(os.environ.get("LOCAL_RANK", 0))
    ARMED = {{"on": False}}

    def cross_entropy(module, batch):
        if ARMED["on"]:
            raise RuntimeError("CUDA out of memory (simulated on rank 1)")
        x, y = batch
        return torch.nn.functional.cross_entropy(module(x), y, reduction="none")

    class Faulty(TinyClassifier):
        def sas_per_sample_loss(self, batch):
            return cross_entropy(self, batch)

    class Arm(pl.Callback):
        def __init__(self, from_step):
            self.from_step = from_step
        def on_train_start(self, trainer, *args):  # before the monitor's: its dry run fails on rank 1
            ARMED["on"] = trainer.global_rank == 1 and self.from_step == 0
        def on_train_batch_start(self, trainer, *args):
            ARMED["on"] = trainer.global_rank == 1 and trainer.global_step >= self.from_step

    data = make_classification(320)
    train = DataLoader(data, batch_size=8, sampler=DistributedSampler(data, num_replicas=2, rank=rank, shuffle=False))
    val = DataLoader(make_classification(64, seed=5), batch_size=32)
    Monitor = counting_monitor(SASMonitor)
    # "count": probes and replicas, flush_every=15 (flushes after steps 14, 29, 44, 59), a checkpoint
    # every epoch (20 steps); "fault": the per-sample loss raises on rank 1 from step 25 on;
    # "fault_at_start" (probes only): it raises on rank 1 from the probes' dry run at train start on
    for name, fail_from in (("count", None), ("fault", 25), ("fault_at_start", 0)):
        pl.seed_everything(0)
        replicas = SASReplicas(replicas=1, path="fast", loss_fn=cross_entropy, probe_every=5, num_train_probes=16,
                               num_heldout_probes=16, flush_every=15) if fail_from != 0 else None
        monitor = Monitor(flush_every=15, snapshot_every=5, sketch_every=10, probe_every=5, figure_every=0,
                          num_train_probes=64, num_test_probes=64, replicas=replicas or 0, store=False)
        callbacks = [monitor]
        if fail_from is None:
            callbacks.append(ModelCheckpoint(dirpath=os.path.join(out, "ckpt"), every_n_epochs=1, save_top_k=-1))
        else:
            callbacks.insert(0, Arm(fail_from))
        trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", use_distributed_sampler=False,
                             precision="64-true", max_steps=60, callbacks=callbacks, logger=False, default_root_dir=out,
                             enable_checkpointing=fail_from is None, enable_progress_bar=False,
                             enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(Faulty(), train, val)
        ARMED["on"] = False
        ours = [str(w.message) for w in caught if str(w.message).startswith(("ProbeLosses", "SASReplicas"))]
        with open(os.path.join(out, f"{{name}}{{rank}}.json"), "w") as f:
            json.dump({{"summary": monitor._json_summary(), "collectives": monitor.collectives, "warnings": ours,
                       "global_step": trainer.global_step,
                       "replica_batch": replicas._sampler.batch_size if replicas else None,
                       "on": {{"probes": monitor.probes.enabled, "replicas": replicas.enabled if replicas else None}},
                       "probe_points_evaluated": int(monitor.probes._positions.numel())
                                                 if monitor.probes._positions is not None else None,
                       "probe_points": int(monitor.probes._owned_mask.numel())
                                       if monitor.probes._owned_mask is not None else None}}, f)
    """
)


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """One 2-process launch: the counted healthy run, then the run with a fault on rank 1. A hang
    fails the fixture at the timeout (the launched ranks are killed) instead of hanging CI."""
    out = tmp_path_factory.mktemp("ddp_collectives")
    script = out / "ddp_collectives.py"
    script.write_text(COUNTING + DDP_SCRIPT.format(tests=str(Path(__file__).parent)))
    proc = run_script([sys.executable, str(script), str(out)], timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {name: [json.loads((out / f"{name}{r}.json").read_text()) for r in range(2)]
            for name in ("count", "fault", "fault_at_start")}


def test_collectives_per_flush_step_and_checkpoint(ddp_runs: dict[str, list[dict[str, Any]]]) -> None:
    """With probes and replicas on 2 ranks: 2 collectives per flush (the flag all-reduce and one
    packed all-reduce), none in a step without a flush or in any other per-step hook, 3 per
    checkpoint (the same 2 and one gather of the replicas' weights)."""
    for rank, run in enumerate(ddp_runs["count"]):
        assert run["on"] == {"probes": True, "replicas": True}
        counts = run["collectives"]
        assert run["global_step"] == 60 and run["summary"]["sas_max"] is not None and run["summary"]["ergodic_gap"] is not None
        assert counts["flush_step"] == [2, 2, 2, 2], rank
        assert len(counts["plain_step"]) == 56 and set(counts["plain_step"]) == {0}, rank
        assert set(counts["on_before_optimizer_step"]) == {0} and set(counts["on_train_epoch_end"]) == {0}, rank
        assert counts["on_train_start"] == [0] and counts["on_train_end"] == [0], rank
        # a checkpoint every epoch (steps 20, 40, 60): the flag all-reduce, the packed all-reduce
        # (pending losses, probe rows, the replicas' time averages) and the gather of the replicas'
        # weights onto rank 0
        assert counts["state_dict"] == [3, 3, 3], rank


def test_probes_are_split_over_ranks(ddp_runs: dict[str, list[dict[str, Any]]]) -> None:
    runs = ddp_runs["count"]
    assert [r["probe_points"] for r in runs] == [128, 128]
    assert [r["probe_points_evaluated"] for r in runs] == [64, 64]


def test_replica_batch_is_the_effective_batch_under_ddp(ddp_runs: dict[str, list[dict[str, Any]]]) -> None:
    # loader batch 8 per rank x 2 ranks x accumulate_grad_batches=1
    assert [r["replica_batch"] for r in ddp_runs["count"]] == [16, 16]
    assert not any("effective batch" in w for r in ddp_runs["count"] for w in r["warnings"])


def test_a_failure_on_one_rank_switches_the_part_off_everywhere(ddp_runs: dict[str, list[dict[str, Any]]]) -> None:
    """The per-sample loss raises on rank 1 only from step 25: both ranks finish all 60 steps,
    the probes and the replicas are off on both (the probe keys None with the reason in
    ``unavailable``; the SAS estimate frozen as it was), one warning each per rank."""
    fault = ddp_runs["fault"]
    for rank, run in enumerate(fault):
        summary = run["summary"]
        assert run["global_step"] == 60 and summary["steps"] == 60, rank
        assert run["on"] == {"probes": False, "replicas": False}, rank
        # (probe_train_loss and ergodic_gap come from the frozen control replica: replicas=1)
        assert summary["nonfinite_probe_losses"] is None, rank
        reason = summary["unavailable"]["nonfinite_probe_losses"]
        assert ("simulated on rank 1" in reason) if rank == 1 else ("failed on rank 1" in reason), reason
        assert len([w for w in run["warnings"] if w.startswith("ProbeLosses")]) == 1, run["warnings"]
        assert len([w for w in run["warnings"] if w.startswith("SASReplicas")]) == 1, run["warnings"]
        assert summary["loss_mean"] == pytest.approx(ddp_runs["count"][0]["summary"]["loss_mean"], rel=1e-9)
    # the flushes after the failure still made their 2 collectives on both ranks (nothing skipped)
    assert fault[0]["collectives"]["flush_step"] == fault[1]["collectives"]["flush_step"] == [2, 2, 2, 2]


def test_a_failure_at_train_start_on_one_rank_switches_the_probes_off_everywhere(
        ddp_runs: dict[str, list[dict[str, Any]]]) -> None:
    """The probes' dry run fails on rank 1 only (rank 0's probes are on, with their metric): the
    first flush's agreement switches them off on rank 0 too, before the packed sum; both ranks
    finish, the loss statistics are those of the healthy run."""
    for rank, run in enumerate(ddp_runs["fault_at_start"]):
        summary = run["summary"]
        assert run["global_step"] == 60 and run["on"]["probes"] is False, rank
        assert summary["ergodic_gap"] is None and summary["probe_train_loss"] is None, rank
        reason = summary["unavailable"]["ergodic_gap"]
        assert ("failed on a probe batch" in reason) if rank == 1 else ("failed on rank 1" in reason), reason
        assert len([w for w in run["warnings"] if w.startswith("ProbeLosses")]) == 1, run["warnings"]
        assert summary["loss_mean"] == pytest.approx(ddp_runs["count"][0]["summary"]["loss_mean"], rel=1e-9)
        assert run["collectives"]["flush_step"] == [2, 2, 2, 2], rank
    # rank 0 had its probes (and their metric) until the first flush
    assert ddp_runs["fault_at_start"][0]["probe_points"] == 128
    assert ddp_runs["fault_at_start"][1]["probe_points"] is None


def _cross_entropy(module: Any, batch: Any) -> torch.Tensor:
    x, y = batch
    return torch.nn.functional.cross_entropy(module(x), y, reduction="none")


def test_replica_batch_counts_gradient_accumulation(tmp_path: Any) -> None:
    """One process, loader batch 8, ``accumulate_grad_batches=2``: the replicas' batch is 16; an
    explicit other ``batch_size`` is used and warned about once, naming both."""
    train = DataLoader(make_classification(320), batch_size=8)
    replicas = SASReplicas(replicas=1, path="fast", loss_fn=_cross_entropy, probe_every=5, num_train_probes=8,
                           num_heldout_probes=8, flush_every=10)
    pl.Trainer(callbacks=[SASMonitor(flush_every=10, figure_every=0, num_train_probes=0, replicas=replicas)],
               **trainer_kwargs(tmp_path, max_steps=4, accumulate_grad_batches=2)).fit(TinyClassifier(), train)
    assert replicas._sampler is not None and replicas._sampler.batch_size == 16
    explicit = SASReplicas(replicas=1, path="fast", loss_fn=_cross_entropy, probe_every=5, num_train_probes=8,
                           num_heldout_probes=8, flush_every=10, batch_size=8)
    with pytest.warns(SASWarning, match=r"effective batch is 16 \(loader batch 8 x 1 rank\(s\) x accumulate_grad_batches=2\)"):
        pl.Trainer(callbacks=[SASMonitor(flush_every=10, figure_every=0, num_train_probes=0, replicas=explicit)],
                   **trainer_kwargs(tmp_path, max_steps=4, accumulate_grad_batches=2)).fit(TinyClassifier(), train)
    assert explicit._sampler is not None and explicit._sampler.batch_size == 8


FSDP2_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    sys.path.insert(0, {tests!r})
    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.strategies import ModelParallelStrategy
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler
    from conftest import TinyClassifier, make_classification
    from test_ddp_collectives import fsdp2_monitor, FSDP2_STEPS
    from lightning_sas import SASReplicas

    out = sys.argv[1]
    rank = int(os.environ.get("LOCAL_RANK", 0))

    class Sharded(TinyClassifier):
        def configure_model(self):
            from torch.distributed.fsdp import fully_shard
            mesh = self.device_mesh["data_parallel"]
            for layer in self.net:
                if isinstance(layer, torch.nn.Linear):
                    fully_shard(layer, mesh=mesh)
            fully_shard(self, mesh=mesh)

    data = make_classification(320)
    train = DataLoader(data, batch_size=8, sampler=DistributedSampler(data, num_replicas=2, rank=rank, shuffle=False))
    val = DataLoader(make_classification(64, seed=5), batch_size=32)
    Monitor = counting_monitor(type(fsdp2_monitor()))
    results = {{}}
    for name in ("probes", "replicas"):
        pl.seed_everything(0)
        monitor = fsdp2_monitor(Monitor)
        if name == "replicas":
            monitor.replicas = SASReplicas(replicas=1, flush_every=monitor.flush_every)
        trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=ModelParallelStrategy(data_parallel_size=2,
                             tensor_parallel_size=1), use_distributed_sampler=False, max_steps=FSDP2_STEPS,
                             callbacks=[monitor], logger=False, default_root_dir=out, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                             limit_val_batches=1)
        try:
            trainer.fit(Sharded(), train, val)
            results[name] = {{"summary": monitor._json_summary(), "collectives": monitor.collectives,
                             "sharded": type(next(trainer.lightning_module.parameters())).__name__,
                             "probe_points_evaluated": int(monitor.probes._positions.numel())}}
        except ValueError as err:
            results[name] = {{"error": str(err)}}
    with open(os.path.join(out, f"fsdp2_{{rank}}.json"), "w") as f:
        json.dump(results, f)
    # end the process group before the interpreter exits: a gloo group left to the exit-time
    # destructors can abort the process ("terminate called without an active exception")
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    """
)

FSDP2_STEPS = 40


def fsdp2_monitor(cls: type = SASMonitor) -> SASMonitor:
    return cls(flush_every=15, snapshot_every=5, sketch_every=10, probe_every=5, figure_every=0,
               num_train_probes=64, num_test_probes=64, store=False)


def test_fsdp2_end_to_end_with_probes_and_replicas_refused(tmp_path: Any) -> None:
    """FSDP2 (``fully_shard`` per layer and on the module, through Lightning's
    ``ModelParallelStrategy`` on CPU with gloo, 2 ranks): the loss, weight and probe statistics
    equal a one-process run on the same global batches (float32: 1e-5); every rank evaluates
    every probe point (the sharded forward is collective); 3 collectives per flush, none per step;
    ``SASReplicas`` is refused at train start with one clear error on every rank."""
    script = tmp_path / "fsdp2.py"
    script.write_text(COUNTING + FSDP2_SCRIPT.format(tests=str(Path(__file__).parent)))
    proc = run_script([sys.executable, str(script), str(tmp_path)], timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pl.seed_everything(0)
    reference = fsdp2_monitor()
    pl.Trainer(callbacks=[reference], **trainer_kwargs(tmp_path / "one", max_steps=FSDP2_STEPS, limit_val_batches=1)).fit(
        TinyClassifier(), DataLoader(make_classification(320), batch_size=16),
        DataLoader(make_classification(64, seed=5), batch_size=32))
    want = json.loads(json.dumps(reference._json_summary()))
    assert want["ergodic_gap"] is not None and want["distance_from_init"] is not None
    for rank in range(2):
        run = json.loads((tmp_path / f"fsdp2_{rank}.json").read_text())
        probes = run["probes"]
        assert probes["sharded"] == "DTensor" and probes["probe_points_evaluated"] == 128
        for key, value in want.items():
            got = probes["summary"][key]
            if isinstance(value, dict) and key != "unavailable":
                assert got.keys() == value.keys(), key
                for name in value:
                    assert got[name] == pytest.approx(value[name], rel=1e-5, abs=1e-6), (key, name)
            elif isinstance(value, float):
                assert got == pytest.approx(value, rel=1e-5, abs=1e-6), key
            elif key != "unavailable":
                assert got == value, key
        assert "SASReplicas cannot run on sharded parameters (FSDP2" in run["replicas"]["error"]
        # our collectives under FSDP2: the flag and packed all-reduces and the weights' sharded sum
        # per flush (2 in steps, the last one at train end), none in other steps; FSDP's own
        # all-gathers in the probes' forward passes go through the process group directly
        counts = probes["collectives"]
        assert counts["flush_step"] == [3, 3] and counts["on_train_end"] == [3], rank
        assert set(counts["plain_step"]) == {0} and set(counts["on_before_optimizer_step"]) == {0}, rank


class _FSDP1Wrapped(TinyClassifier):
    """A LightningModule whose network is wrapped in ``FullyShardedDataParallel`` (FSDP1,
    ``use_orig_params=True``) on a one-rank gloo group."""

    def __init__(self) -> None:
        super().__init__()
        from torch.distributed.fsdp import FullyShardedDataParallel

        self.net = FullyShardedDataParallel(self.net, device_id=torch.device("cpu"), use_orig_params=True)


def test_fsdp1_probes_and_sharded_replicas_are_refused_at_train_start(tmp_path: Any) -> None:
    """Under FSDP1 the probes would call the module outside its wrapper: one error at train start
    naming ``num_train_probes=0``, with which the rest runs; the replicas refuse any sharding."""
    import torch.distributed as dist

    from conftest import free_port

    train = DataLoader(make_classification(64), batch_size=16)
    val = DataLoader(make_classification(32, seed=5), batch_size=16)
    kwargs = trainer_kwargs(tmp_path, max_steps=4, limit_val_batches=1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        with pytest.raises(ValueError, match=r"cannot run under FSDP1 .*num_train_probes=0"):
            pl.Trainer(callbacks=[SASMonitor(flush_every=2, figure_every=0)], **kwargs).fit(_FSDP1Wrapped(), train, val)
        replicas = SASMonitor(flush_every=2, figure_every=0, num_train_probes=0,
                              replicas=SASReplicas(replicas=1, loss_fn=_cross_entropy, flush_every=2))
        with pytest.raises(ValueError, match=r"SASReplicas cannot run on sharded parameters \(FSDP1"):
            pl.Trainer(callbacks=[replicas], **kwargs).fit(_FSDP1Wrapped(), train, val)
        weights_only = SASMonitor(flush_every=2, figure_every=0, num_train_probes=0)
        pl.Trainer(callbacks=[weights_only], **kwargs).fit(_FSDP1Wrapped(), train, val)
        assert weights_only.summary()["steps"] == 4 and weights_only.summary()["loss_mean"] is not None
    finally:
        dist.destroy_process_group()
