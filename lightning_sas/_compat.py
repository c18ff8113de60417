"""One callback base for both Lightning namespaces: ``pytorch_lightning`` (always installed) and
``lightning.pytorch`` (the optional ``lightning`` extra). Lightning's private names are read in
:mod:`lightning_sas._private` only.

Each namespace's ``Trainer`` accepts only instances of its own ``Callback`` class. Both classes
define the same no-op hooks and properties, so a class deriving from both has a consistent MRO
and one ``SASMonitor`` works with either ``Trainer``.
"""

from __future__ import annotations

import importlib.util
import warnings
from typing import Any

import pytorch_lightning

__all__ = ["Callback", "CALLBACK_BASES", "NAMESPACES", "is_tensorboard_logger"]


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
