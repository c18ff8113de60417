"""Weight statistics of sharded parameters: local pieces, summed squares and sketches, one
all-reduce per flush (simulated shards; FSDP2/FSDP1 on CPU with gloo; Lightning FSDP on GPUs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lightning_sas.stats.sharded import ShardedParameters, ShardSpec, clean_parameter_name
from lightning_sas.stats.sketch import RandomProjection

QUANTITIES = ("weight_norm", "update_size", "distance_from_init", "distance_to_ergodic_mean", "grad_norm")


def _named(seed: int = 0) -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    shapes = {"a.weight": (7, 5), "a.bias": (7,), "b.weight": (3, 7), "b.bias": (3,), "c": (1,)}
    return [(n, torch.randn(s, generator=g, dtype=torch.float64)) for n, s in shapes.items()]


def _flat_pieces(named: list[tuple[str, torch.Tensor]], cuts: list[int]) -> list[ShardedParameters]:
    """Two simulated ranks: rank 0 holds elements ``[0, cut)`` of each flattened parameter, rank 1
    the rest (FSDP1-like 1-D views at global offsets)."""
    ranks = []
    for r in range(2):
        names, pieces, specs = [], [], []
        for (n, t), cut in zip(named, cuts):
            flat = t.reshape(-1)
            lo, hi = (0, cut) if r == 0 else (cut, flat.numel())
            names.append(n)
            pieces.append(flat[lo:hi])
            specs.append(ShardSpec.flat_range(t.shape, lo, hi - lo))
        ranks.append(ShardedParameters(names, pieces, specs))
    return ranks


def _box_pieces(named: list[tuple[str, torch.Tensor]]) -> list[ShardedParameters]:
    """Two simulated ranks holding DTensor-like boxes: matrices split along dim 1 (not a
    contiguous range of the flattened parameter), vectors along dim 0 (the last rank may be empty)."""
    ranks = []
    for r in range(2):
        names, pieces, specs = [], [], []
        for n, t in named:
            dim = 1 if t.ndim == 2 else 0
            chunks = torch.chunk(t, 2, dim=dim)
            size = t.shape[dim]
            first = chunks[0].shape[dim]
            lo, hi = (0, first) if r == 0 else (first, size)
            piece = t.narrow(dim, lo, hi - lo).contiguous()
            offset = [0] * t.ndim
            offset[dim] = lo
            names.append(n)
            pieces.append(piece)
            specs.append(ShardSpec(tuple(t.shape), tuple(offset), tuple(piece.shape), sharded=True))
        ranks.append(ShardedParameters(names, pieces, specs))
    return ranks


@pytest.mark.parametrize("layout", ["flat", "box"])
def test_simulated_shards_sum_to_the_unsharded_statistics(layout: str) -> None:
    named = _named(0)
    init = _named(1)
    whole = ShardedParameters([n for n, _ in named], [t for _, t in named], [ShardSpec.whole(t.shape) for _, t in named])
    assert not whole.needs_reduction
    if layout == "flat":
        # uneven cuts, an empty piece on rank 1 (``c``) and an empty piece on rank 0 (``b.bias``)
        ranks = _flat_pieces(named, cuts=[13, 4, 21, 0, 1])
    else:
        ranks = _box_pieces(named)
    assert all(r.needs_reduction for r in ranks)
    rp = RandomProjection(k=16, seed=3)

    # squared norms per parameter add up over ranks
    per_param = sum(r.squared_norms(r.local_tensors()) for r in ranks)
    expected = torch.stack([t.square().sum() for _, t in named])
    torch.testing.assert_close(per_param, expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(per_param, whole.squared_norms(whole.local_tensors()), rtol=0, atol=1e-10)
    # squared distances to a copy of the same layout (the init copy is sharded like the weights)
    init_pieces = [[piece.clone() for piece in r.local_tensors()] for r in _flat_pieces(init, [13, 4, 21, 0, 1])] \
        if layout == "flat" else [[piece.clone() for piece in r.local_tensors()] for r in _box_pieces(init)]
    dist_sq = sum(r.squared_norm(torch._foreach_sub(r.local_tensors(), c)) for r, c in zip(ranks, init_pieces))
    brute = sum(float((t - i).square().sum()) for (_, t), (_, i) in zip(named, init))
    assert abs(float(dist_sq) - brute) < 1e-10
    # the sketch adds up to the sketch of the whole model
    sketch = sum(r.sketch(rp) for r in ranks)
    torch.testing.assert_close(sketch, rp.project(named), rtol=0, atol=1e-10)
    torch.testing.assert_close(sketch, whole.sketch(rp), rtol=0, atol=1e-10)


def test_box_global_indices_and_contiguity() -> None:
    full = torch.arange(4 * 6 * 5).reshape(4, 6, 5)
    for offset, local in [((1, 0, 0), (2, 6, 5)), ((0, 2, 0), (4, 3, 5)), ((2, 3, 0), (1, 2, 5)), ((0, 0, 1), (4, 6, 3))]:
        spec = ShardSpec((4, 6, 5), offset, local, sharded=True)
        box = full[tuple(slice(o, o + n) for o, n in zip(offset, local))]
        torch.testing.assert_close(spec.global_indices(), box.reshape(-1))
        contiguous = box.reshape(-1)
        is_range = bool((contiguous.diff() == 1).all())
        assert (spec.contiguous_start() is not None) == is_range
    rp = RandomProjection(k=8, seed=1)
    values = torch.randn(2, 5, dtype=torch.float64)
    torch.testing.assert_close(rp.project_indexed("w", values, torch.arange(7, 17)), rp.project_flat("w", values, 7), rtol=0, atol=1e-12)


def test_replicated_pieces_count_once() -> None:
    named = _named(2)
    # a replica that another rank already counts contributes zero to norms and sketch
    specs = [ShardSpec.whole(t.shape, owned=(i % 2 == 0)) for i, (_, t) in enumerate(named)]
    specs[0] = ShardSpec.flat_range(named[0][1].shape, 0, named[0][1].numel())
    layout = ShardedParameters([n for n, _ in named], [t for _, t in named], specs)
    sq = layout.squared_norms(layout.local_tensors())
    expected = torch.tensor([float(t.square().sum()) if i % 2 == 0 else 0.0 for i, (_, t) in enumerate(named)], dtype=torch.float64)
    torch.testing.assert_close(sq, expected, rtol=0, atol=1e-12)
    rp = RandomProjection(k=8)
    torch.testing.assert_close(layout.sketch(rp), rp.project([nt for i, nt in enumerate(named) if i % 2 == 0]), rtol=0, atol=1e-12)
    # no process group: the reduction is a no-op
    buf = torch.ones(3, dtype=torch.float64)
    assert layout.all_reduce_(buf) is buf and float(buf.sum()) == 3.0


def test_wrapper_names_are_cleaned() -> None:
    assert clean_parameter_name("net._fsdp_wrapped_module.0.weight") == "net.0.weight"
    assert clean_parameter_name("_fsdp_wrapped_module.net._checkpoint_wrapped_module.w") == "net.w"
    assert clean_parameter_name("layer.weight") == "layer.weight"


FSDP_SCRIPT = textwrap.dedent(
    """
    import copy, json, os, sys
    from types import SimpleNamespace
    import torch, torch.distributed as dist
    import torch.multiprocessing as mp
    sys.path.insert(0, {root!r})
    from lightning_sas.callbacks.base import FlushContext
    from lightning_sas.callbacks.weight_snapshots import WeightSnapshots

    STEPS, FLUSH = 6, 3

    def make_model():
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(6, 7), torch.nn.Tanh(), torch.nn.Linear(7, 5), torch.nn.Tanh(),
                                torch.nn.Linear(5, 3)).double()
        m.automatic_optimization = True
        return m

    def batch(t):
        g = torch.Generator().manual_seed(100 + t)
        return torch.randn(8, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g)

    def drive(module, wrapper, counter):
        trainer = SimpleNamespace(global_step=0, model=wrapper)
        module._trainer = trainer
        ws = WeightSnapshots(snapshot_every=1, sketch_every=2, sketch_dim=16, flush_every=FLUSH, ergodic_start=1)
        ws.attach(module)
        opt = torch.optim.SGD(wrapper.parameters(), lr=0.3)
        out = []
        for t in range(STEPS):
            ws.begin_batch(t)
            x, y = batch(t)
            torch.nn.functional.cross_entropy(wrapper(x), y).backward()
            counter["hot"] -= counter["n"]
            ws.on_before_optimizer_step(trainer, module, opt)
            opt.step()
            opt.zero_grad()
            trainer.global_step = t + 1
            ws.record(trainer, module)
            counter["hot"] += counter["n"]
            if ws.should_flush(t):
                before = counter["n"]
                ws.flush(FlushContext(trainer, module, t, None))
                counter["flush"].append(counter["n"] - before)
                out.append(dict(last=ws.diagnostics, layers=dict(ws._last_layers),
                                sketch=ws._sketch_history.tolist(), names=list(ws._names)))
        return out

    def run(rank, world, port, mode, out_dir):
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
        counter = dict(n=0, hot=0, flush=[])
        original = dist.all_reduce
        def counting(*args, **kwargs):
            counter["n"] += 1
            return original(*args, **kwargs)
        dist.all_reduce = counting
        ref = make_model()
        ref_out = drive(ref, ref, dict(n=0, hot=0, flush=[]))
        model = make_model()
        if mode == "fsdp2":
            from torch.distributed.fsdp import fully_shard
            from torch.distributed.tensor import Shard
            # the first layer's weight (7 x 6) is sharded along dim 1 (a box, not a flat range);
            # the others along dim 0, unevenly (7 and 5 rows over 2 ranks)
            fully_shard(model[0], shard_placement_fn=lambda p: Shard(1) if p.ndim == 2 else Shard(0))
            fully_shard(model)
            wrapper = model
        else:
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
            from torch.distributed.fsdp.wrap import ModuleWrapPolicy
            inner = model
            wrapper = FSDP(model, device_id=torch.device("cpu"), use_orig_params=True,
                           auto_wrap_policy=ModuleWrapPolicy({{torch.nn.Linear}}))
            model = inner
        sharded_out = drive(model, wrapper, counter)
        with open(os.path.join(out_dir, f"{{mode}}_{{rank}}.json"), "w") as f:
            json.dump(dict(ref=ref_out, sharded=sharded_out, hot=counter["hot"], flush=counter["flush"],
                           sharded_names=[n for n, _ in model.named_parameters()]), f)
        dist.barrier()  # no rank tears gloo down while the other still has work in flight
        dist.destroy_process_group()

    if __name__ == "__main__":
        mode, port, out_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
        mp.spawn(run, args=(2, port, mode, out_dir), nprocs=2)
    """
)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("mode", ["fsdp2", "fsdp1"])
def test_two_process_fsdp_matches_unsharded(tmp_path: Any, mode: str) -> None:
    """FSDP2 ``fully_shard`` (DTensor; one layer sharded along dim 1) and FSDP1
    (``use_orig_params=True``, nested wrappers) on CPU with gloo, 2 ranks: the callback's reduced
    norms, distances, layer norms and sketch equal those of an unsharded copy; the hot path runs no
    collective and each flush exactly one."""
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    script = tmp_path / "fsdp_run.py"
    script.write_text(FSDP_SCRIPT.format(root=str(Path(__file__).parent.parent)))
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), mode, str(_free_port()), str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in range(2):
        res = json.loads((tmp_path / f"{mode}_{rank}.json").read_text())
        assert res["hot"] == 0
        assert res["flush"] == [1, 1]
        assert len(res["sharded"]) == len(res["ref"]) == 2
        for got, want in zip(res["sharded"], res["ref"]):
            assert got["names"] == want["names"]
            for q in QUANTITIES:
                assert want["last"][q] is not None and got["last"][q] is not None, q
                assert got["last"][q] == pytest.approx(want["last"][q], rel=1e-6, abs=1e-9), q
            assert got["layers"].keys() == want["layers"].keys()
            for name, value in want["layers"].items():
                assert got["layers"][name] == pytest.approx(value, rel=1e-6, abs=1e-9), name
            np.testing.assert_allclose(got["sketch"], want["sketch"], rtol=1e-6, atol=1e-9)
            assert len(got["sketch"]) > 0


LIGHTNING_FSDP_SCRIPT = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {tests!r})
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler
    from pytorch_lightning.strategies import FSDPStrategy
    from conftest import TinyClassifier, make_classification
    from lightning_sas import SASMonitor

    devices, batch, out, use_fsdp = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4] == "fsdp"
    pl.seed_everything(0)
    data = make_classification(320)
    sampler = DistributedSampler(data, num_replicas=devices, rank=int(os.environ.get("LOCAL_RANK", 0)), shuffle=False)
    train = DataLoader(data, batch_size=batch, sampler=sampler)
    monitor = SASMonitor(flush_every=20, snapshot_every=5, sketch_every=10, probe_every=10, figure_every=0,
                         num_train_probes=0, num_test_probes=0, store=os.path.join(out, "sas"))  # weights only
    strategy = FSDPStrategy(sharding_strategy="FULL_SHARD") if use_fsdp else "auto"
    trainer = pl.Trainer(accelerator="gpu", devices=devices, strategy=strategy, use_distributed_sampler=False,
                         precision="32-true", max_steps=60, callbacks=[monitor], logger=False, default_root_dir=out,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(TinyClassifier(), train)
    """
)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (Lightning's FSDPStrategy refuses CPU)")
def test_lightning_fsdp_strategy_matches_single_device(tmp_path: Any) -> None:
    """Lightning's ``FSDPStrategy`` (FSDP1, ``use_orig_params=True``) with ``SASMonitor`` on 2 GPUs
    (on 1 GPU when only one is present: the flat-parameter path without the cross-rank sum): the
    stored weight norms, distances, layer norms and sketches equal a plain single-GPU run's."""
    from lightning_sas.store import read_run

    script = tmp_path / "fsdp_lightning.py"
    script.write_text(LIGHTNING_FSDP_SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    devices = min(2, torch.cuda.device_count())
    for name, n, batch, strategy in (("run1", 1, 16, "auto"), ("run2", devices, 16 // devices, "fsdp")):
        proc = subprocess.run([sys.executable, str(script), str(n), str(batch), str(tmp_path / name), strategy],
                              capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = read_run(tmp_path / "run1").streams, read_run(tmp_path / "run2").streams
    np.testing.assert_array_equal(two["weights"]["step"], one["weights"]["step"])
    for q in ("weight_norm", "distance_from_init", "update_size", "grad_norm", "layer_norms"):
        np.testing.assert_allclose(two["weights"][q], one["weights"][q], rtol=1e-4, atol=1e-6, err_msg=q)
    np.testing.assert_allclose(two["sketch"]["sketch"], one["sketch"]["sketch"], rtol=1e-4, atol=1e-5)
