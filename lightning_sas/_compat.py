"""One callback base for both Lightning namespaces: ``pytorch_lightning`` (always installed) and
``lightning.pytorch`` (the optional ``lightning`` extra); and every access to Lightning's private
names (the fit loop's data source, the attributes of module wrappers), with a clear failure.

Each namespace's ``Trainer`` accepts only instances of its own ``Callback`` class. Both classes
define the same no-op hooks and properties, so a class deriving from both has a consistent MRO
and one ``SASMonitor`` works with either ``Trainer``.
"""

from __future__ import annotations

import importlib.util
import warnings
from typing import Any

import pytorch_lightning

__all__ = ["Callback", "CALLBACK_BASES", "NAMESPACES", "LightningInternalsError", "MODULE_WRAPPERS", "is_tensorboard_logger",
           "unwrap_module", "validation_data_source"]


def _optional_namespace(name: str) -> Any:
    """``import name``, or None when its package is absent (a broken install warns once)."""
    try:
        if importlib.util.find_spec(name.partition(".")[0]) is None:
            return None
        return importlib.import_module(name)
    except Exception as err:  # an installed but broken extra must not break lightning_sas
        warnings.warn(
            f"lightning-sas: `import {name}` failed ({type(err).__name__}: {err}); "
            f"the callbacks work with pytorch_lightning.Trainer only",
            stacklevel=2,
        )
        return None


_lightning_pytorch = _optional_namespace("lightning.pytorch")

#: the importable Lightning namespaces, by module name
NAMESPACES: dict[str, Any] = {"pytorch_lightning": pytorch_lightning}
if _lightning_pytorch is not None:
    NAMESPACES["lightning.pytorch"] = _lightning_pytorch

#: the ``Callback`` classes our callbacks derive from (one per importable namespace)
CALLBACK_BASES: tuple[type, ...] = tuple(module.Callback for module in NAMESPACES.values())

if len(CALLBACK_BASES) > 1:

    class Callback(*CALLBACK_BASES):  # type: ignore[misc]
        """``pytorch_lightning.Callback`` that is also a ``lightning.pytorch.Callback``."""

else:
    Callback = pytorch_lightning.Callback  # type: ignore[misc]


def is_tensorboard_logger(logger: Any) -> bool:
    """Is ``logger`` a ``TensorBoardLogger`` (or a subclass) of either namespace or of Fabric?"""
    return any(cls.__name__ == "TensorBoardLogger" for cls in type(logger).__mro__)


# -- Lightning's private names, in one place ---------------------------------------------------
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


class LightningInternalsError(RuntimeError):
    """Lightning keeps something lightning-sas reads in another place than this version expects."""


def validation_data_source(trainer: Any) -> Any:
    """The fit loop's validation ``_DataLoaderSource`` (``trainer.fit_loop.epoch_loop.val_loop._data_source``:
    what Lightning will request the validation loaders from), None when it holds nothing.

    Raises :class:`LightningInternalsError`, naming the path and the installed version, when this
    Lightning keeps it elsewhere."""
    loop = getattr(getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None), "val_loop", None)
    if loop is None or not hasattr(loop, "_data_source"):
        raise LightningInternalsError(
            "lightning-sas reads the validation loaders that Lightning has not set up yet from "
            f"trainer.fit_loop.epoch_loop.val_loop._data_source, which {type(trainer).__module__} "
            f"{_version_of(trainer)} does not have; pass the validation loaders to fit(), or report this version"
        )
    source = loop._data_source
    if source is None or getattr(source, "instance", None) is None:
        return None
    return source


def _version_of(obj: Any) -> str:
    package = importlib.import_module(type(obj).__module__.partition(".")[0])
    return str(getattr(package, "__version__", "(unknown version)"))
