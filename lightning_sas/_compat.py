"""One callback base for whichever Lightning namespace the user imports: ``lightning.pytorch`` (the
``lightning`` package) or ``pytorch_lightning``, without importing the other one. Lightning's private names are read
in :mod:`lightning_sas._private` only.

Why not import both: each namespace's ``__init__`` sets up its own loggers and points
``lightning_utilities``' ``rank_zero_info`` at its own ``<namespace>.utilities.rank_zero`` logger, so
the namespace imported last receives the other one's info lines ("GPU available: ...").
``logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)`` would then no longer silence
them. lightning_sas imports no namespace while one is already imported.

How one class serves both: each namespace's ``Trainer``, ``LightningCLI`` and ``is_overridden`` check
``isinstance(callback, <namespace>.Callback)`` (or ``issubclass``). Lightning's ``Callback`` is a plain
class (no ``register`` for virtual subclasses), so our :class:`Callback` derives from the ``Callback``
class of every namespace already imported. Its bases are brought up to date when lightning_sas is
imported and each time one of our callbacks is created (``Callback.__new__``), so both orders work::

    import lightning.pytorch as L      # or: import pytorch_lightning as L
    import lightning_sas               # imports neither namespace itself
    L.Trainer(callbacks=[lightning_sas.SASMonitor()])

When no namespace is imported yet as the first callback is created, ``pytorch_lightning`` (the
declared dependency) is imported. Both namespaces define the same no-op hooks, so deriving from
both (when the user imported both) has a consistent method resolution order.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any

__all__ = ["Callback", "imported_namespaces", "lightning_module", "use_imported_namespaces", "is_tensorboard_logger"]

#: the Lightning namespaces, in the order of ``Callback``'s bases when both are imported
NAMESPACE_NAMES: tuple[str, ...] = ("pytorch_lightning", "lightning.pytorch")
#: imported when a callback is created and no namespace is imported yet (the declared dependency)
DEFAULT_NAMESPACE = "pytorch_lightning"


def imported_namespaces() -> dict[str, ModuleType]:
    """The Lightning namespaces already imported (and done importing), by module name."""
    found = {}
    for name in NAMESPACE_NAMES:
        module = sys.modules.get(name)
        if module is not None and isinstance(getattr(module, "Callback", None), type):
            found[name] = module
    return found


class _NoNamespaceYet:
    """Placeholder base of :class:`Callback` until a Lightning namespace is imported (CPython
    cannot replace the bases of a class whose only base is ``object``)."""


class Callback(_NoNamespaceYet):
    """A ``Callback`` of every Lightning namespace imported so far (see the module docstring)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        use_imported_namespaces(import_default=True)
        return super().__new__(cls)


def use_imported_namespaces(import_default: bool = False) -> tuple[type, ...]:
    """Make :class:`Callback` derive from the ``Callback`` class of each imported namespace;
    with ``import_default`` and none imported, import ``pytorch_lightning`` first. Returns the bases."""
    namespaces = imported_namespaces()
    if not namespaces and import_default:
        importlib.import_module(DEFAULT_NAMESPACE)
        namespaces = imported_namespaces()
    bases = tuple(module.Callback for module in namespaces.values()) or (_NoNamespaceYet,)
    if Callback.__bases__ != bases:
        Callback.__bases__ = bases
    return bases


#: ``Trainer`` and ``LightningModule`` of either namespace, for annotations (``pl.Trainer``): the
#: modules annotate with these rather than import a namespace, even under ``TYPE_CHECKING`` (which
#: jsonargparse executes to resolve postponed annotations, e.g. for ``LightningCLI``)
Trainer = Any
LightningModule = Any


def _namespace_of(obj: Any) -> str | None:
    """The namespace ``obj``'s class (or one of its bases) comes from, e.g. a ``Trainer`` or a
    ``LightningModule``; None when it comes from neither."""
    for cls in type(obj).__mro__:
        module = getattr(cls, "__module__", "") or ""
        for name in NAMESPACE_NAMES:
            if module == name or module.startswith(name + "."):
                return name
    return None


def lightning_module(submodule: str, like: Any = None) -> ModuleType:
    """``<namespace>.<submodule>``, e.g. ``lightning_module("utilities", trainer)``.

    The namespace is the one ``like`` (a ``Trainer``, ``LightningModule`` or ``LightningDataModule``)
    belongs to, else the first imported one, else ``pytorch_lightning``; so calling this never
    imports a second namespace."""
    namespace = _namespace_of(like) if like is not None else None
    if namespace is None:
        namespace = next(iter(imported_namespaces()), DEFAULT_NAMESPACE)
    return importlib.import_module(f"{namespace}.{submodule}")


def is_tensorboard_logger(logger: Any) -> bool:
    """Is ``logger`` a ``TensorBoardLogger`` (or a subclass) of either namespace or of Fabric?"""
    return any(cls.__name__ == "TensorBoardLogger" for cls in type(logger).__mro__)


use_imported_namespaces()
