"""Where the monitor's own samples come from: the training and validation loaders of a run.

Everything here observes the run without changing it (docs: Design, "What must stay true"): no iterator of the
user's loaders is created or advanced, a stateful ``collate_fn`` is not called when torch's
``default_collate`` can batch the samples, and every read runs with the global generators forked
(a dataset's ``__getitem__`` may draw random augmentations).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Callable

from torch.utils.data import DataLoader, IterableDataset, default_collate

from lightning_sas._private import PrivateAPIError, unwrap_module, validation_data_source
from lightning_sas.isolation import isolated_rng

__all__ = [
    "SampleSource",
    "collate_like",
    "first_loader",
    "is_map_style",
    "loaders_of",
    "training_source",
    "validation_source",
]

#: samples taken from an iterable (not map-style) dataset by default
DEFAULT_POOL_SIZE = 4096


def is_map_style(dataset: Any) -> bool:
    """A dataset with ``__len__`` and ``__getitem__`` (not an ``IterableDataset``)."""
    return (
        dataset is not None
        and not isinstance(dataset, IterableDataset)
        and hasattr(dataset, "__getitem__")
        and hasattr(dataset, "__len__")
    )


def loaders_of(loaders: Any) -> list[DataLoader]:
    """The ``DataLoader``\\ s inside what Lightning holds (a loader, a list or dict of them, or a
    ``CombinedLoader``), in order."""
    if loaders is None:
        return []
    if isinstance(loaders, DataLoader):
        return [loaders]
    combined = getattr(loaders, "flattened", None)
    if combined is not None and not isinstance(loaders, (Mapping, Sequence)):
        return loaders_of(list(combined))
    if isinstance(loaders, Mapping):
        loaders = list(loaders.values())
    if isinstance(loaders, Sequence) and not isinstance(loaders, (str, bytes)):
        return [dl for item in loaders for dl in loaders_of(item)]
    return []


def first_loader(loaders: Any) -> DataLoader | None:
    """The first ``DataLoader`` of :func:`loaders_of`, or None."""
    found = loaders_of(loaders)
    return found[0] if found else None


class SampleSource:
    """Samples of one loader's dataset, indexable by position.

    A map-style dataset is read in place; an iterable one is read once, from a fresh iterator of
    its own (the user's loader is not touched), into a pool of at most ``pool_size`` samples, so
    probes and replicas can index it (``pooled`` says so).
    """

    def __init__(self, loader: DataLoader, pool_size: int = DEFAULT_POOL_SIZE) -> None:
        self.loader = loader
        dataset = loader.dataset
        self.pooled = not is_map_style(dataset)
        if self.pooled:
            pool: list[Any] = []
            with isolated_rng():
                for sample in dataset:
                    pool.append(sample)
                    if len(pool) >= pool_size:
                        break
            self.dataset: Any = pool
        else:
            self.dataset = dataset
        self._collate: Callable[[list[Any]], Any] | None = None

    @classmethod
    def of(cls, loader: DataLoader, dataset: Any) -> "SampleSource":
        """Samples of a map-style ``dataset`` other than the loader's own, batched like the
        loader's (a multi-run plan's base dataset, for instance)."""
        source = cls.__new__(cls)
        source.loader, source.dataset, source.pooled, source._collate = loader, dataset, False, None
        return source

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[int(index)]

    def samples(self, indices: Sequence[int]) -> list[Any]:
        """``dataset[i]`` for ``indices``, with the global generators forked."""
        with isolated_rng():
            return self.read(indices)

    def read(self, indices: Sequence[int]) -> list[Any]:
        """``dataset[i]`` for ``indices`` with the generators as they are (for callers that run
        under a private stream of their own, such as the replicas)."""
        return [self.dataset[int(i)] for i in indices]

    @property
    def collate_fn(self) -> Callable[[list[Any]], Any] | None:
        """The collate function chosen by the first :meth:`collate` (None before)."""
        return self._collate

    def collate(self, samples: list[Any]) -> Any:
        """Batch ``samples`` like the loader would (see :func:`collate_like`); the choice between
        ``default_collate`` and the loader's own ``collate_fn`` is made once, on the first call."""
        if self._collate is None:
            batch, self._collate = collate_like(self.loader, samples)
            return batch
        return self._collate(samples)


def collate_like(loader: DataLoader, samples: list[Any]) -> tuple[Any, Callable[[list[Any]], Any]]:
    """Collate ``samples`` with torch's ``default_collate`` when it can batch them, else with the
    loader's ``collate_fn``; returns the batch and the function used.

    A loader's ``collate_fn`` may keep state (a counter, a bound method of the module): calling
    it once more would change the batches the run sees, so it is used only for samples that
    ``default_collate`` cannot batch (padding of unequal lengths, custom types)."""
    try:
        with isolated_rng():
            return default_collate(samples), default_collate
    except Exception:
        own = getattr(loader, "collate_fn", None)
        if own is None or own is default_collate:
            raise
    with isolated_rng():
        return own(samples), own


def training_source(trainer: Any, pool_size: int = DEFAULT_POOL_SIZE) -> SampleSource | None:
    """Samples of the (first) training loader, or None when there is none."""
    loader = first_loader(getattr(trainer, "train_dataloader", None))
    return SampleSource(loader, pool_size) if loader is not None and loader.dataset is not None else None


def _overridden(name: str, instance: Any) -> bool:
    try:
        from lightning_sas._compat import lightning_module

        return bool(lightning_module("utilities.model_helpers", instance).is_overridden(name, instance))
    except Exception:
        return callable(getattr(instance, name, None))


def validation_source(trainer: Any, pool_size: int = DEFAULT_POOL_SIZE,
                      read_iterable: bool = True) -> tuple[SampleSource | None, str]:
    """Samples of the first validation loader, wherever Lightning keeps it, and a description.

    Lightning sets validation up lazily (before the first validation run, which may come after
    several epochs or never before ``max_steps``), so ``trainer.val_dataloaders`` may be empty at
    ``on_train_start``. Then the loaders come from the fit loop's data source, as Lightning would
    request them: loaders passed to ``fit`` directly, or the ``val_dataloader()`` hook of the
    DataModule or the LightningModule (called once, with the global generators forked). As in
    Lightning, there is no validation data when ``limit_val_batches`` is 0 or the module has no
    ``validation_step``. Whatever wraps the module (``torch.compile``, a strategy's or Fabric's
    wrapper: :func:`~lightning_sas._private.unwrap_module`), the module inside is asked. Returns
    ``(None, reason)`` when there is none.
    """
    loaders = loaders_of(getattr(trainer, "val_dataloaders", None))
    if not loaders:
        module = unwrap_module(getattr(trainer, "lightning_module", None))
        if getattr(trainer, "limit_val_batches", 1) == 0:
            return None, "validation is off (limit_val_batches=0)"
        if module is None or not _overridden("validation_step", module):
            return None, "the module has no validation_step (no validation data)"
        try:
            source = _validation_data_source(trainer)
        except PrivateAPIError as err:
            return None, str(err)
        if source is None:
            return None, "no validation data source"
        try:
            with isolated_rng():
                loaders = _source_loaders(source)
        except Exception as err:  # a hook that cannot run yet: no held-out probes, training goes on
            return None, f"the validation loaders could not be obtained ({type(err).__name__}: {err})"
    if not loaders:
        return None, "no validation loader"
    loader = loaders[0]
    if loader.dataset is None:
        return None, "the validation loader has no dataset"
    if not read_iterable and not is_map_style(loader.dataset):
        return None, "the validation data is an IterableDataset, which the monitor does not read a second time"
    where = "validation" if len(loaders) == 1 else f"validation (first of {len(loaders)} loaders)"
    return SampleSource(loader, pool_size), where


def _validation_data_source(trainer: Any) -> Any:
    """Lightning's ``_DataLoaderSource`` of the validation loop (None if it holds nothing or a
    module without ``val_dataloader``)."""
    source = validation_data_source(trainer)
    if source is None:
        return None
    instance = unwrap_module(source.instance)
    if instance is not source.instance:  # a wrapped module: ask the module inside
        return source if _overridden("val_dataloader", instance) else None
    if source.is_module() and not source.is_defined():
        return None
    return source


def _source_loaders(source: Any) -> list[DataLoader]:
    """The loaders a ``_DataLoaderSource`` gives: its module's (or DataModule's) hook, called the
    way Lightning calls it, or the loaders it holds; a wrapped module's hook is called on the
    module inside."""
    instance = unwrap_module(source.instance)
    if instance is not source.instance:
        return loaders_of(instance.val_dataloader())
    return loaders_of(source.dataloader() if source.is_module() else source.instance)
