"""Scale: sketched weight distances within their stated error, bounded extra peak memory and
checkpoint growth on a 25M-parameter model, and a resume between flushes that keeps every weight row."""

from __future__ import annotations

import importlib.util
import io
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from conftest import TinyClassifier, make_classification, trainer_kwargs
from lightning_sas import SASMonitor
from lightning_sas.callbacks import WeightSnapshots
from lightning_sas.callbacks.base import FlushContext
from lightning_sas.stats.sharded import ShardedParameters, ShardSpec
from lightning_sas.store import read_run

DISTANCES = ("update_size", "distance_from_init", "distance_to_ergodic_mean")
EXACT_BOTH = ("weight_norm", "grad_norm")


class _Rows:
    """A run writer stand-in that keeps the ``weights`` and ``sketch`` streams."""

    def __init__(self) -> None:
        self.streams: dict[str, list[dict[str, np.ndarray]]] = {}

    def append(self, name: str, columns: dict[str, np.ndarray]) -> None:
        self.streams.setdefault(name, []).append(columns)

    def column(self, stream: str, name: str) -> np.ndarray:
        return np.concatenate([c[name] for c in self.streams[stream]])


def _drive(ws: WeightSnapshots, steps: int = 12, seed: int = 0) -> _Rows:
    """Train a small MLP by hand (SGD) with ``ws`` attached; flush every ``flush_every`` steps."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(),
                                torch.nn.Linear(64, 5))
    model.automatic_optimization = True
    trainer = SimpleNamespace(global_step=0, model=model)
    model._trainer = trainer
    ws.attach(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    writer = _Rows()
    g = torch.Generator().manual_seed(seed + 1)
    for t in range(steps):
        ws.begin_batch(t)
        x, y = torch.randn(32, 20, generator=g), torch.randint(0, 5, (32,), generator=g)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        ws.on_before_optimizer_step(trainer, model, opt)
        opt.step()
        opt.zero_grad()
        trainer.global_step = t + 1
        ws.record(trainer, model)
        if ws.should_flush(t) or t == steps - 1:
            ws.flush(FlushContext(trainer, model, t, writer))
    return writer


def test_sketched_distances_are_within_the_stated_error() -> None:
    """Sketched ``update_size``, ``distance_from_init`` and ``distance_to_ergodic_mean`` against the
    exact values on a small model: over 12 sketch seeds the squared distances' relative error has
    mean ~0 and an RMS within 1.5 x the stated ``sqrt(2/k)`` (and every error within 5 x); the
    exact quantities (weight and gradient norms) and the trajectory sketch (folded out of the
    distance sketch) equal the exact mode's."""
    k = 256  # a small k makes the error large enough to see its size
    kw = dict(snapshot_every=1, sketch_every=3, sketch_dim=16, flush_every=5, ergodic_start=2, distance_sketch_dim=k)
    exact_ws = WeightSnapshots(**kw, exact_distances=True)
    exact = _drive(exact_ws)
    assert exact_ws.exact
    errors = []
    for seed in range(12):
        ws = WeightSnapshots(**kw, exact_distances=False, seed=seed)
        got = _drive(ws)
        assert not ws.exact
        for name in EXACT_BOTH:
            np.testing.assert_allclose(got.column("weights", name), exact.column("weights", name), rtol=1e-12)
        for name in DISTANCES:
            want, have = exact.column("weights", name), got.column("weights", name)
            assert np.array_equal(np.isfinite(want), np.isfinite(have)), name
            ok = np.isfinite(want) & (want > 0)
            assert ok.sum() >= 8, name
            errors.append(have[ok] ** 2 / want[ok] ** 2 - 1.0)
        if seed == exact_ws.seed:  # same seed: the folded trajectory sketch is the direct one
            np.testing.assert_allclose(got.column("sketch", "sketch"), exact.column("sketch", "sketch"), rtol=1e-9,
                                       atol=1e-12)
    err = np.concatenate(errors)
    stated = math.sqrt(2.0 / k)
    rms = float(np.sqrt(np.mean(err**2)))
    assert rms <= 1.5 * stated, (rms, stated)
    assert rms >= 0.2 * stated, (rms, stated)  # sketched for real: not the exact values
    assert abs(float(err.mean())) <= 0.5 * stated, err.mean()
    assert float(np.abs(err).max()) <= 5 * stated


def test_exact_distances_by_parameter_group_and_the_automatic_threshold() -> None:
    """Exact mode: the distances equal norms computed by hand, and the automatic choice is exact
    below the documented parameter count and sketched above it."""
    ws = WeightSnapshots(snapshot_every=1, sketch_every=1, flush_every=4, ergodic_start=0)
    got = _drive(ws, steps=4)
    assert ws.exact  # a few thousand parameters: automatic = exact
    a = [torch.randn(5, 3), torch.randn(7), torch.randn(2, 2)]
    b = [torch.randn(5, 3), torch.randn(7), torch.randn(2, 2)]
    layout = ShardedParameters(["a", "b", "c"], a, [ShardSpec.whole(t.shape) for t in a])
    want = torch.stack([(x - y).double().norm() ** 2 for x, y in zip(a, b)])
    for budget in (1, 8, None, 1000):
        torch.testing.assert_close(layout.squared_distances(a, b, budget), want, rtol=1e-6, atol=0)
    assert np.isfinite(got.column("weights", "distance_from_init")[1:]).all()
    big = WeightSnapshots()
    big.EXACT_DISTANCE_MAX_PARAMETERS = 100  # the threshold decides: above it, sketched
    _drive(big, steps=1)
    assert not big.exact


# -- peak memory and checkpoint growth on a 25M-parameter model ----------------------------------

def _scale_module() -> Any:
    spec = importlib.util.spec_from_file_location("scale_bench", Path(__file__).parent.parent / "benchmarks" / "scale.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scale_25m() -> dict[str, Any]:
    """``benchmarks/scale.py``'s measurement (a plain fit, then one with ``SASMonitor()``, in one fresh process;
    peak resident memory over the fit) on the 25M-parameter MLP, 8 steps (two snapshots with their
    sketches, a flush, probes)."""
    return _scale_module().extra("25M", "default", steps=8, separate=False)


def test_monitor_adds_at_most_a_quarter_of_the_parameter_bytes_to_peak_memory(scale_25m: dict[str, Any]) -> None:
    assert scale_25m["params"] > 24_000_000
    assert scale_25m["extra_peak_x"] <= 0.25, scale_25m


def test_checkpoint_grows_by_at_most_a_tenth_of_the_parameter_bytes(scale_25m: dict[str, Any]) -> None:
    assert scale_25m["extra_checkpoint"] <= 0.10 * scale_25m["param_bytes"] + 4e6, scale_25m


# -- resume between flushes ------------------------------------------------------------------------

@pytest.mark.parametrize("exact", [True, False], ids=["exact", "sketched"])
def test_resume_between_flushes_keeps_every_weight_row(tmp_path: Any, exact: bool) -> None:
    """Checkpoint at step 100 (flushes at 39, 79, 119, ...: rows 80 and 90 are pending), resume to
    step 200: the stored weight rows and the summary's weight values equal the uninterrupted run's
    (1e-6), every row once; in both distance modes."""
    def monitor(store: str) -> SASMonitor:
        weights = WeightSnapshots(snapshot_every=10, sketch_every=20, flush_every=40, exact_distances=exact,
                                  distance_sketch_dim=512, ergodic_start=50)
        return SASMonitor(flush_every=40, probe_every=10, figure_every=0, num_train_probes=32, num_test_probes=32,
                          weights=weights, store=store)

    train = DataLoader(make_classification(320), batch_size=32, shuffle=False)
    val = DataLoader(make_classification(64, seed=5), batch_size=32)
    pl.seed_everything(0)
    full = monitor(str(tmp_path / "full" / "sas"))
    pl.Trainer(callbacks=[full], **trainer_kwargs(tmp_path / "full", max_steps=200, limit_val_batches=1.0)).fit(
        TinyClassifier(), train, val)

    pl.seed_everything(0)
    first = monitor(str(tmp_path / "resumed" / "sas"))
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_epochs=1, save_top_k=-1)
    kwargs = trainer_kwargs(tmp_path / "resumed", max_steps=100, limit_val_batches=1.0, enable_checkpointing=True)
    pl.Trainer(callbacks=[first, ckpt], **kwargs).fit(TinyClassifier(), train, val)
    path = tmp_path / "ckpt" / "epoch=9-step=100.ckpt"
    state = torch.load(path, weights_only=True)["callbacks"]
    pending = next(v for k, v in state.items() if k.startswith("SASMonitor"))["weights"]["pending"]
    assert pending["row_steps"] == [80, 90]
    second = monitor(str(tmp_path / "resumed" / "sas"))
    kwargs["max_steps"] = 200
    pl.Trainer(callbacks=[second, ModelCheckpoint(dirpath=str(tmp_path / "ckpt2"))], **kwargs).fit(
        TinyClassifier(), train, val, ckpt_path=str(path))

    want = read_run(tmp_path / "full").streams["weights"]
    got = read_run(tmp_path / "resumed").streams["weights"]
    np.testing.assert_array_equal(got["step"], np.arange(0, 200, 10))
    np.testing.assert_array_equal(got["step"], want["step"])
    for name in ("weight_norm", "grad_norm", *DISTANCES, "layer_norms"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-9, equal_nan=True, err_msg=name)
    assert np.isfinite(got["distance_to_ergodic_mean"]).any()
    for key in ("weight_norm", "grad_norm", *DISTANCES):
        a, b = second.summary().get(key), full.summary().get(key)
        assert (a is None) == (b is None), key
        if a is not None:
            assert a == pytest.approx(b, rel=1e-6, abs=1e-9), key


# -- sharded parameters: additive sketches, and a resume where each rank keeps its share ----------

def test_sketch_slots_and_grouped_distances_add_up_over_simulated_shards() -> None:
    """Two simulated ranks holding flat ranges of every parameter: the ranks' distance-sketch slot
    sums and grouped squared distances add up to those of the whole parameters."""
    from lightning_sas.stats.sketch import RandomProjection

    g = torch.Generator().manual_seed(3)
    shapes = {"a.weight": (9, 5), "a.bias": (9,), "b.weight": (4, 9)}
    whole = {n: torch.randn(s, generator=g, dtype=torch.float64) for n, s in shapes.items()}
    other = {n: torch.randn(s, generator=g, dtype=torch.float64) for n, s in shapes.items()}
    proj = RandomProjection(k=64, seed=1, chunk_size=7)  # several chunks per piece
    full = ShardedParameters(list(whole), list(whole.values()), [ShardSpec.whole(t.shape) for t in whole.values()])
    want_slots = full.sketch_slots(proj)
    want_sq = full.squared_distances(list(whole.values()), list(other.values()))
    slots, sq = torch.zeros_like(want_slots), torch.zeros_like(want_sq)
    for rank in range(2):
        names, pieces, others, specs = [], [], [], []
        for n, t in whole.items():
            flat, cut = t.reshape(-1), t.numel() // 3
            lo, hi = (0, cut) if rank == 0 else (cut, t.numel())
            names.append(n)
            pieces.append(flat[lo:hi])
            others.append(other[n].reshape(-1)[lo:hi])
            specs.append(ShardSpec.flat_range(t.shape, lo, hi - lo))
        part = ShardedParameters(names, pieces, specs)
        slots += part.sketch_slots(proj)
        sq += part.squared_distances(pieces, others, max_elements=10)
    torch.testing.assert_close(slots, want_slots, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sq, want_sq, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(RandomProjection.signed(want_slots), proj.project(whole.items()), rtol=1e-12, atol=1e-12)


FSDP_RESUME_SCRIPT = '''
import json, os, sys
from types import SimpleNamespace
import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
sys.path.insert(0, {root!r})

STEPS, FLUSH, RESUME_AFTER = 6, 3, 4


class Rows:
    def __init__(self):
        self.rows = []
    def append(self, name, columns):
        if name == "weights":
            self.rows += [{{k: float(v[i]) if k != "layer_norms" else v[i].tolist() for k, v in columns.items()}}
                          for i in range(len(columns["step"]))]


def make_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 7), torch.nn.Tanh(), torch.nn.Linear(7, 5), torch.nn.Tanh(),
                               torch.nn.Linear(5, 3)).double()


def new_callback():
    return WeightSnapshots(snapshot_every=1, sketch_every=2, sketch_dim=16, flush_every=FLUSH, ergodic_start=1,
                           exact_distances=False, distance_sketch_dim=64)


def drive(module, trainer, opt, ws, steps, writer):
    for t in steps:
        ws.begin_batch(t)
        g = torch.Generator().manual_seed(100 + t)
        x, y = torch.randn(8, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g)
        torch.nn.functional.cross_entropy(module(x), y).backward()
        ws.on_before_optimizer_step(trainer, module, opt)
        opt.step()
        opt.zero_grad()
        trainer.global_step = t + 1
        ws.record(trainer, module)
        if ws.should_flush(t):
            ws.flush(FlushContext(trainer, module, t, writer))


def run(rank, world, port, out_dir):
    global FlushContext, WeightSnapshots  # imported by the ranks only: the launcher stays light
    from lightning_sas.callbacks.base import FlushContext
    from lightning_sas.callbacks.weight_snapshots import WeightSnapshots
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    ref = make_model()
    ref.automatic_optimization = True
    ref._trainer = SimpleNamespace(global_step=0, model=ref)
    ws, want = new_callback(), Rows()
    ws.attach(ref)
    drive(ref, ref._trainer, torch.optim.SGD(ref.parameters(), lr=0.3), ws, range(STEPS), want)

    from torch.distributed.fsdp import fully_shard
    model = make_model()
    model.automatic_optimization = True
    fully_shard(model)
    model._trainer = trainer = SimpleNamespace(global_step=0, model=model)
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    got = Rows()
    first = new_callback()
    first.attach(model)
    drive(model, trainer, opt, first, range(RESUME_AFTER + 1), got)
    state = first.state_dict()  # every rank: the additive parts are summed over ranks
    saved = [state if rank == 0 else None]
    dist.broadcast_object_list(saved, src=0)  # what every rank reads from rank 0's checkpoint
    second = new_callback()
    second.load_state_dict(saved[0])
    second.attach(model)
    drive(model, trainer, opt, second, range(RESUME_AFTER + 1, STEPS), got)
    with open(os.path.join(out_dir, f"rank{{rank}}.json"), "w") as f:
        json.dump(dict(want=want.rows, got=got.rows, pending=list(state["pending"]["row_steps"])), f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    port, out_dir = int(sys.argv[1]), sys.argv[2]
    mp.spawn(run, args=(2, port, out_dir), nprocs=2)
'''


def test_fsdp2_resume_between_flushes_keeps_each_ranks_share(tmp_path: Any) -> None:
    """FSDP2 ``fully_shard`` on 2 gloo ranks, sketched distances: checkpoint after step 4 (flushes
    after steps 2 and 5, so rows 3 and 4 are pending), load rank 0's state on both ranks and go on:
    every weight row equals the unsharded run's (1e-6), each once. Saving sums the ranks' partial
    rows and sketches; after loading only rank 0 keeps them (the others would count them twice)."""
    import json
    import os
    import socket
    import subprocess
    import sys

    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    script = tmp_path / "fsdp_resume.py"
    script.write_text(FSDP_RESUME_SCRIPT.format(root=str(Path(__file__).parent.parent)))
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), str(port), str(tmp_path)], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in range(2):
        res = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert res["pending"] == [3, 4]
        want, got = res["want"], res["got"]
        assert [r["step"] for r in got] == [r["step"] for r in want] == list(range(6))
        for a, b in zip(got, want):
            for key in ("weight_norm", "grad_norm", *DISTANCES):
                if np.isnan(b[key]):
                    assert np.isnan(a[key]), (key, a["step"])
                else:
                    assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), (key, a["step"])
            np.testing.assert_allclose(a["layer_norms"], b["layer_norms"], rtol=1e-6)
        assert any(np.isfinite(r["distance_to_ergodic_mean"]) and r["distance_to_ergodic_mean"] > 0 for r in got[4:])


def test_block_states_in_checkpoints_hold_only_the_used_blocks() -> None:
    """``TimeAverage`` (probes, replicas) and ``BlockMoments`` (loss stream) save the used blocks
    only, with int64 counts, and load back to the same statistics (also from the older full-size
    form)."""
    from lightning_sas.metrics import TimeAverage
    from lightning_sas.stats.blocks import BlockMoments

    g = torch.Generator().manual_seed(0)
    metric = TimeAverage(num_points=512, max_blocks=128)
    for step in range(5):
        metric.update(torch.randn(512, generator=g, dtype=torch.float64), step)
    state = metric.checkpoint_state()
    assert state["states"]["sums"].shape == (5, 512) and state["states"]["sumsqs"].shape == (5, 512)
    assert state["states"]["counts"].dtype == torch.int64 and state["states"]["counts"].shape == (5, 512)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    assert len(buffer.getvalue()) < 5 * 512 * 8 * 3 + 20_000  # not 128 blocks
    buffer.seek(0)
    full_size = {**state, "states": {name: getattr(metric, name).clone() for name in state["states"]}}  # older form
    for saved in (torch.load(buffer, weights_only=True), full_size):
        again = TimeAverage(num_points=512, max_blocks=128)
        assert again.load_checkpoint_state(saved)
        torch.testing.assert_close(again.compute(), metric.compute(), rtol=0, atol=0)
        again.update(torch.ones(512, dtype=torch.float64), 5)
        assert again.cursor.n_blocks == 6 and again.sums.shape == (128, 512)
    assert not TimeAverage(num_points=511, max_blocks=128).load_checkpoint_state(state)

    blocks = BlockMoments(max_blocks=64)
    blocks.append(torch.randn(10, generator=g, dtype=torch.float64), list(range(10)))
    saved = blocks.state_dict()
    assert saved["counts"].dtype == torch.int64 and saved["counts"].shape == (10,)
    restored = BlockMoments(max_blocks=64)
    restored.load_state_dict(saved)
    torch.testing.assert_close(restored.mean(), blocks.mean(), rtol=0, atol=0)
