"""Every access lightning-sas makes to a private name of Lightning, torch or TensorBoard, each in
one small function (checked with pytorch-lightning 2.6, torch 2.13, tensorboard 2.x; the tests in
``tests/test_private_api.py`` exercise each against the installed versions and name what to
change when a release moves one).

Why each exists (no public API gives it):

- :func:`validation_data_source`: ``trainer.fit_loop.epoch_loop.val_loop._data_source``, the
  validation loaders Lightning has not set up yet at ``on_train_start`` (the held-out probes).
- :data:`MODULE_WRAPPERS` / :func:`unwrap_module`: the module inside ``torch.compile``
  (``_orig_mod``), Fabric's wrapper (``_original_module``) and the strategy wrapper of Lightning
  releases that have one (``_LightningModuleWrapperBase._forward_module``; not in 2.6).
- :func:`module_trainer` / :func:`set_module_trainer`: a LightningModule's ``_trainer`` (its
  public ``trainer`` property raises when detached, its setter also rewires child modules), read
  by the weight layout and written for replicas, which see a read-only trainer view.
- :data:`STRATEGY_OPTIMIZERS`: ``strategy._lightning_optimizers``, where
  ``LightningModule.optimizers()`` reads them; the replicas' strategy view serves it.
- :func:`created_experiment`: a logger's ``_experiment`` (the writer, if created), so removing our
  hparams from its record never creates a writer.
- :func:`merge_into_next_log_hyperparams`: an instance attribute over a logger's
  ``log_hyperparams`` for the one call Lightning makes after ``setup`` (TensorBoard keeps only
  the first hparams session of a run).
- :func:`tensorboard_file_writer`: ``SummaryWriter._get_file_writer()``, to send a flush's
  scalars as one event and the custom-scalars layout with a margin chart of two series.
- :func:`dtensor_local_shape_and_offset`: ``torch.distributed.tensor._utils.
  compute_local_shape_and_global_offset``, the box of a DTensor's local shard.
- :func:`fsdp1_unit`: an FSDP1 unit's ``_handle`` (its ``_sharding_strategy``, the module's
  ``_inter_node_pg``) and flat parameter's ``_params``, ``_shapes`` and ``_shard_param_infos``:
  which part of each original parameter this rank holds; :func:`is_flat_parameter`: a
  parameter's ``_is_flat_param`` (FSDP1 with ``use_orig_params=False``);
  :data:`WRAPPER_NAME_SEGMENTS`: the attribute names FSDP1 and activation checkpointing insert
  into parameter names, cut out so that names match the unwrapped model's.

Not here: torch's ``torch._foreach_*`` kernels (the ops ``torch.optim``'s foreach paths call).
numpy's global generator is swapped with its public legacy ``get_state``/``set_state`` only.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

__all__ = [
    "PrivateAPIError",
    "MODULE_WRAPPERS",
    "STRATEGY_OPTIMIZERS",
    "unwrap_module",
    "validation_data_source",
    "module_trainer",
    "set_module_trainer",
    "created_experiment",
    "merge_into_next_log_hyperparams",
    "remove_log_hyperparams_merge",
    "tensorboard_file_writer",
    "dtensor_local_shape_and_offset",
    "fsdp1_unit",
    "is_flat_parameter",
    "WRAPPER_NAME_SEGMENTS",
]


class PrivateAPIError(RuntimeError):
    """A private name lightning-sas reads is not where this version of a dependency keeps it."""


def _version(package: str) -> str:
    try:
        return str(importlib.import_module(package).__version__)
    except Exception:  # noqa: BLE001
        return "(unknown version)"


def _moved(name: str, package: str, checked: str, fix: str) -> PrivateAPIError:
    return PrivateAPIError(f"{package} {_version(package)} moved {name} (lightning-sas checked it with {package} "
                           f"{checked}); {fix}")


# -- Lightning: the fit loop's validation data source -----------------------------------------
def validation_data_source(trainer: Any) -> Any:
    """The fit loop's validation ``_DataLoaderSource`` (``trainer.fit_loop.epoch_loop.val_loop.
    _data_source``: what Lightning will request the validation loaders from; its ``instance``,
    ``is_module()``, ``is_defined()`` and ``dataloader()`` are used), None when it holds nothing."""
    loop = getattr(getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None), "val_loop", None)
    if loop is None or not hasattr(loop, "_data_source"):
        raise _moved("trainer.fit_loop.epoch_loop.val_loop._data_source", type(trainer).__module__.partition(".")[0],
                     "2.2-2.6", "pass the validation loaders to fit(), or update lightning_sas/_private.py")
    source = loop._data_source
    if source is None or getattr(source, "instance", None) is None:
        return None
    return source


# -- wrappers around a module -----------------------------------------------------------------
#: wrappers around a module, by class name (either namespace, torch, Fabric), and the attribute
#: that holds the wrapped module: ``torch.compile``'s ``OptimizedModule``, Lightning's strategy
#: wrapper, Fabric's ``_FabricModule``, ``DistributedDataParallel`` and ``DataParallel``
MODULE_WRAPPERS: dict[str, str] = {
    "OptimizedModule": "_orig_mod",
    "_LightningModuleWrapperBase": "_forward_module",
    "_FabricModule": "_original_module",
    "DistributedDataParallel": "module",
    "DataParallel": "module",
}


def unwrap_module(obj: Any) -> Any:
    """The module inside the wrappers Lightning and Fabric unwrap (:data:`MODULE_WRAPPERS`),
    ``obj`` itself when it is not wrapped (None stays None)."""
    for _ in range(16):  # wrappers nest a few levels at most (compile inside DDP inside Fabric)
        attr = next((MODULE_WRAPPERS[c.__name__] for c in type(obj).__mro__ if c.__name__ in MODULE_WRAPPERS), None)
        inner = getattr(obj, attr, None) if attr is not None else None
        if inner is None or inner is obj:
            return obj
        obj = inner
    return obj


# -- a LightningModule's trainer and the strategy's optimizers ---------------------------------
def module_trainer(module: Any) -> Any:
    """``module._trainer``: the trainer a LightningModule is attached to, None when detached (the
    public ``module.trainer`` raises then)."""
    return getattr(module, "_trainer", None)


def set_module_trainer(module: Any, trainer: Any) -> bool:
    """Set ``module._trainer`` (a LightningModule or one nested in it; its ``trainer`` setter
    would also reach its children, which have their own view); False for other modules."""
    if not hasattr(module, "_trainer"):
        return False
    module._trainer = trainer
    return True


#: the strategy attribute ``LightningModule.optimizers()`` reads the optimizers from
STRATEGY_OPTIMIZERS = "_lightning_optimizers"


# -- loggers ----------------------------------------------------------------------------------
def created_experiment(logger: Any) -> Any:
    """A logger's experiment if it has been created (``logger._experiment``), else None (the
    public ``logger.experiment`` would create it)."""
    return vars(logger).get("_experiment") if hasattr(logger, "__dict__") else None


def _as_dict(params: Any) -> dict[str, Any]:
    """Hyperparameters as a dict, as Lightning's loggers take them (a dict, a Namespace or None)."""
    if params is None:
        return {}
    return dict(params) if hasattr(params, "keys") else dict(vars(params))


def merge_into_next_log_hyperparams(logger: Any, ours: dict[str, Any], owner: object,
                                    after: Callable[[Any], None]) -> bool:
    """Wrap ``logger.log_hyperparams`` (an instance attribute) so that its next call also logs
    ``ours``, then removes itself and calls ``after(logger)``. False when the logger has no
    ``log_hyperparams`` or it is wrapped already (by us or by someone else: left alone)."""
    if not hasattr(logger, "__dict__") or "log_hyperparams" in vars(logger) or not hasattr(logger, "log_hyperparams"):
        return False
    original = logger.log_hyperparams

    def merged(params: Any, *args: Any, **kwargs: Any) -> Any:
        vars(logger).pop("log_hyperparams", None)
        try:
            return original({**_as_dict(params), **ours}, *args, **kwargs)
        finally:
            after(logger)

    merged._sas_merged_for = owner  # type: ignore[attr-defined]
    logger.log_hyperparams = merged
    return True


def remove_log_hyperparams_merge(logger: Any, owner: object) -> bool:
    """Remove ``owner``'s wrapper from ``logger`` if Lightning did not call it; True if removed."""
    wrapper = vars(logger).get("log_hyperparams") if hasattr(logger, "__dict__") else None
    if getattr(wrapper, "_sas_merged_for", None) is owner:
        vars(logger).pop("log_hyperparams", None)
        return True
    return False


def tensorboard_file_writer(writer: Any) -> Any:
    """``SummaryWriter._get_file_writer()`` of ``torch.utils.tensorboard`` (its ``add_summary``
    takes a whole ``Summary`` proto), None for other writers (tensorboardX) or if it moved."""
    get = getattr(writer, "_get_file_writer", None)
    if not type(writer).__module__.startswith("torch.utils.tensorboard") or not callable(get):
        return None
    return get()


# -- torch: sharded parameters ------------------------------------------------------------------
def dtensor_local_shape_and_offset(shape: Any, mesh: Any, placements: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """This rank's shard of a DTensor of global ``shape``: (local shape, global offset), by
    ``torch.distributed.tensor._utils.compute_local_shape_and_global_offset``."""
    try:
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
    except ImportError as err:
        raise _moved("torch.distributed.tensor._utils.compute_local_shape_and_global_offset", "torch", "2.4-2.13",
                     "update dtensor_local_shape_and_offset in lightning_sas/_private.py") from err
    local_shape, offset = compute_local_shape_and_global_offset(shape, mesh, placements)
    return tuple(int(s) for s in local_shape), tuple(int(o) for o in offset)


@dataclass
class FSDP1Unit:
    """An FSDP1-wrapped module's flat parameter: ``layout`` lists ``(original parameter, shape,
    shard info)`` (info: ``in_shard``, ``intra_param_start_idx``, ``numel_in_shard``)."""

    layout: list[tuple[Any, tuple[int, ...], Any]]
    sharded: bool
    hybrid: bool
    inter_node_group: Any


def fsdp1_unit(module: Any) -> FSDP1Unit | None:
    """The FSDP1 unit ``module`` is (``module._handle.flat_param``), None for other modules."""
    handle = getattr(module, "_handle", None)
    flat = getattr(handle, "flat_param", None)
    if flat is None:
        return None
    if not hasattr(handle, "_sharding_strategy") or not hasattr(handle, "uses_sharded_strategy"):
        raise _moved("FlatParamHandle._sharding_strategy/uses_sharded_strategy", "torch", "2.4-2.13",
                     "update fsdp1_unit in lightning_sas/_private.py")
    strategy = getattr(handle._sharding_strategy, "name", "")
    return FSDP1Unit(list(_flat_layout(flat)), sharded=bool(handle.uses_sharded_strategy),
                     hybrid="HYBRID" in strategy, inter_node_group=getattr(module, "_inter_node_pg", None))


def _flat_layout(flat: Any) -> Iterator[tuple[Any, tuple[int, ...], Any]]:
    """``(original parameter, its shape, its shard info or None)`` per original parameter of an
    FSDP1 flat parameter (``use_orig_params=True``): ``_params``, ``_shapes``, ``_shard_param_infos``."""
    if not hasattr(flat, "_shapes") or not hasattr(flat, "_params"):
        raise _moved("FlatParameter._params/_shapes", "torch", "2.4-2.13",
                     "update fsdp1_unit in lightning_sas/_private.py")
    params, shapes = flat._params, flat._shapes
    if params is None:  # use_orig_params=False: no original parameters to tell apart
        return
    infos = getattr(flat, "_shard_param_infos", None) or [None] * len(params)
    for p, shape, info in zip(params, shapes, infos):
        yield p, tuple(shape), info


def is_flat_parameter(param: Any) -> bool:
    """An FSDP1 ``FlatParameter`` (``use_orig_params=False``: many parameters in one flat shard),
    by its ``_is_flat_param`` flag."""
    return bool(getattr(param, "_is_flat_param", False))


#: the segments FSDP1's and activation checkpointing's wrappers insert into parameter names
WRAPPER_NAME_SEGMENTS = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module")
