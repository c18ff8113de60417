"""Every private name of Lightning, torch and TensorBoard that lightning-sas reads
(:mod:`lightning_sas._private`), exercised against the installed versions. A failure here names
the private name that moved and what to update in ``lightning_sas/_private.py``."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from lightning_sas import _private
from lightning_sas._private import PrivateAPIError
from lightning_sas.replicas.generic import takes_batch_idx
from tests.conftest import TinyClassifier, loaders, trainer_kwargs

_FIX = "update lightning_sas/_private.py"


def _moved(name: str, package: str) -> str:
    version = getattr(__import__(package), "__version__", "?")
    return f"{package} {version} moved {name}; {_FIX}"


def test_validation_data_source_gives_the_loaders_lightning_will_request(tmp_path: Path) -> None:
    train, val = loaders(128)
    seen: dict[str, Any] = {}

    class Probe(pl.Callback):
        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            try:
                source = _private.validation_data_source(trainer)
            except PrivateAPIError as err:
                pytest.fail(str(err))
            seen["source"] = source

    model = TinyClassifier()
    model.val_dataloader = lambda: val  # type: ignore[method-assign]
    pl.Trainer(callbacks=[Probe()], **trainer_kwargs(tmp_path, max_steps=1)).fit(model, train)
    source = seen["source"]
    assert source is not None, _moved("fit_loop.epoch_loop.val_loop._data_source (holds nothing)", "pytorch_lightning")
    assert source.instance is model and source.is_module() and source.is_defined(), \
        _moved("_DataLoaderSource.instance/is_module()/is_defined()", "pytorch_lightning")
    assert source.dataloader() is val, _moved("_DataLoaderSource.dataloader()", "pytorch_lightning")


def test_validation_data_source_names_the_path_when_it_moved() -> None:
    trainer = SimpleNamespace(fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(val_loop=SimpleNamespace())))
    with pytest.raises(PrivateAPIError, match=r"fit_loop\.epoch_loop\.val_loop\._data_source.*_private\.py"):
        _private.validation_data_source(trainer)


def test_module_wrappers_hold_the_module_where_listed() -> None:
    from lightning_fabric.strategies import SingleDeviceStrategy
    from lightning_fabric.wrappers import _FabricModule

    module = TinyClassifier()
    compiled = torch.compile(module)  # wrapping only: nothing is compiled before a call
    fabric_wrapper = _FabricModule(module, SingleDeviceStrategy(device=torch.device("cpu")))
    for wrapper in (compiled, fabric_wrapper, torch.nn.DataParallel(module)):
        attr = _private.MODULE_WRAPPERS.get(type(wrapper).__name__)
        assert attr is not None and getattr(wrapper, attr, None) is module, \
            f"{type(wrapper).__module__}.{type(wrapper).__name__} no longer holds its module as {attr}; " \
            f"update MODULE_WRAPPERS in lightning_sas/_private.py"
        assert _private.unwrap_module(wrapper) is module
    assert _private.unwrap_module(_FabricModule(compiled, SingleDeviceStrategy(device=torch.device("cpu")))) is module


def test_module_trainer_reads_and_writes_the_attached_trainer(tmp_path: Path) -> None:
    module = TinyClassifier()
    assert _private.module_trainer(module) is None
    view = SimpleNamespace(strategy=None)
    assert _private.set_module_trainer(module, view)
    assert module.trainer is view, _moved("LightningModule._trainer (module.trainer does not read it)", "pytorch_lightning")
    assert not _private.set_module_trainer(torch.nn.Linear(2, 2), view)
    module = TinyClassifier()
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_steps=1))
    trainer.fit(module, loaders(64)[0])
    assert _private.module_trainer(module) is trainer, _moved("LightningModule._trainer", "pytorch_lightning")


def test_module_optimizers_are_read_from_the_strategy_attribute() -> None:
    module = TinyClassifier()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    strategy = SimpleNamespace(**{_private.STRATEGY_OPTIMIZERS: [optimizer]})
    _private.set_module_trainer(module, SimpleNamespace(strategy=strategy))
    try:
        got = module.optimizers(use_pl_optimizer=True)
    except AttributeError as err:
        pytest.fail(f"{_moved('strategy._lightning_optimizers', 'pytorch_lightning')} ({err}); "
                    "the replicas' strategy view serves STRATEGY_OPTIMIZERS")
    assert got is optimizer


def test_created_experiment_is_the_writer_once_created(tmp_path: Path) -> None:
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    for logger in (TensorBoardLogger(str(tmp_path / "tb")), CSVLogger(str(tmp_path / "csv"))):
        assert _private.created_experiment(logger) is None
        experiment = logger.experiment
        assert _private.created_experiment(logger) is experiment, \
            _moved(f"{type(logger).__name__}._experiment", "pytorch_lightning")


def test_log_hyperparams_merge_runs_once_then_removes_itself(tmp_path: Path) -> None:
    from pytorch_lightning.loggers import TensorBoardLogger

    logger = TensorBoardLogger(str(tmp_path))
    owner, seen = object(), []
    assert _private.merge_into_next_log_hyperparams(logger, {"sas/seed": 3}, owner, after=lambda lg: seen.append(dict(lg.hparams)))
    assert not _private.merge_into_next_log_hyperparams(logger, {"sas/seed": 4}, object(), after=seen.append)
    logger.log_hyperparams(argparse.Namespace(lr=0.1))
    assert seen == [{"lr": 0.1, "sas/seed": 3}]
    assert "log_hyperparams" not in vars(logger)
    logger.log_hyperparams({"lr": 0.2})  # the logger's own method again
    assert len(seen) == 1
    assert _private.merge_into_next_log_hyperparams(logger, {}, owner, after=seen.append)
    assert _private.remove_log_hyperparams_merge(logger, owner) and "log_hyperparams" not in vars(logger)


def test_tensorboard_file_writer_takes_a_summary(tmp_path: Path) -> None:
    from tensorboard.compat.proto.summary_pb2 import Summary
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    file_writer = _private.tensorboard_file_writer(writer)
    assert file_writer is not None and callable(getattr(file_writer, "add_summary", None)), \
        _moved("torch.utils.tensorboard.SummaryWriter._get_file_writer()", "torch")
    file_writer.add_summary(Summary(value=[Summary.Value(tag="x", simple_value=1.0)]), 0)
    writer.close()
    assert _private.tensorboard_file_writer(SimpleNamespace()) is None


@pytest.mark.parametrize(
    "signature, expected",
    [("batch", False), ("batch, batch_idx", True), ("batch, idx", True), ("*args", True), ("batch, dataloader_idx=0", True)],
)
def test_takes_batch_idx_follows_lightnings_rule(signature: str, expected: bool) -> None:
    namespace: dict[str, Any] = {}
    exec(f"def training_step(self, {signature}): return None", namespace)
    module = SimpleNamespace()
    module.training_step = namespace["training_step"].__get__(module)
    assert takes_batch_idx(module) is expected


@pytest.fixture
def one_process_group(tmp_path: Path) -> Any:
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group is already initialized")
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        yield dist
    finally:
        dist.destroy_process_group()


def test_dtensor_local_shape_and_offset(one_process_group: Any) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard

    mesh = init_device_mesh("cpu", (1,))
    try:
        got = _private.dtensor_local_shape_and_offset((6, 4), mesh, (Shard(1),))
    except (PrivateAPIError, TypeError) as err:
        pytest.fail(f"{_moved('torch.distributed.tensor._utils.compute_local_shape_and_global_offset', 'torch')} ({err})")
    assert got == ((6, 4), (0, 0))
    assert _private.dtensor_local_shape_and_offset((5,), mesh, (Replicate(),)) == ((5,), (0,))


def test_fsdp1_unit_lists_the_local_part_of_each_parameter(one_process_group: Any) -> None:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    wrapped = FSDP(model, device_id=torch.device("cpu"), use_orig_params=True)
    units = [u for u in map(_private.fsdp1_unit, wrapped.modules()) if u is not None]
    assert len(units) == 1, _moved("FSDP1 module._handle.flat_param", "torch")
    unit = units[0]
    shapes = [shape for _, shape, _ in unit.layout]
    assert shapes == [(4, 3), (4,), (2, 4), (2,)], _moved("FlatParameter._params/_shapes", "torch")
    assert not unit.sharded and not unit.hybrid  # one process: FSDP runs NO_SHARD
    infos = [info for _, _, info in unit.layout]
    assert all(info is not None and info.in_shard for info in infos), _moved("FlatParameter._shard_param_infos", "torch")
    assert [int(info.numel_in_shard) for info in infos] == [12, 4, 8, 2]
    assert all(int(info.intra_param_start_idx) == 0 for info in infos)


def test_is_flat_parameter_tells_fsdp1_flat_parameters(one_process_group: Any) -> None:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    flat = FSDP(torch.nn.Linear(3, 4), device_id=torch.device("cpu"), use_orig_params=False)
    original = FSDP(torch.nn.Linear(3, 4), device_id=torch.device("cpu"), use_orig_params=True)
    assert all(_private.is_flat_parameter(p) for p in flat.parameters()), _moved("FlatParameter._is_flat_param", "torch")
    assert not any(_private.is_flat_parameter(p) for p in original.parameters())


def test_wrapper_name_segments_are_the_ones_fsdp1_and_checkpointing_insert(one_process_group: Any) -> None:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from lightning_sas.stats.sharded import clean_parameter_name

    model = torch.nn.Sequential(checkpoint_wrapper(torch.nn.Linear(3, 4)), torch.nn.Linear(4, 2))
    wrapped = FSDP(model, device_id=torch.device("cpu"), use_orig_params=True,
                   auto_wrap_policy=ModuleWrapPolicy({torch.nn.Linear}))
    names = [n for n, _ in wrapped.named_parameters()]
    for segment in _private.WRAPPER_NAME_SEGMENTS:
        assert any(segment in n for n in names), f"torch no longer names wrapped parameters with {segment} ({names}); " \
            "update WRAPPER_NAME_SEGMENTS in lightning_sas/_private.py"
    assert sorted(map(clean_parameter_name, names)) == ["0.bias", "0.weight", "1.bias", "1.weight"]
