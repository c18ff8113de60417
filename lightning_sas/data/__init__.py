"""Data helpers: neighbouring datasets, the held-out split, replacements and probe sets."""

from lightning_sas.data.indexed import IndexedDataset
from lightning_sas.data.neighbouring import (
    DEFAULT_SWAPS,
    NeighbouringDataset,
    auto_holdout_size,
    auto_swaps,
    choose_replacements,
    choose_swaps,
    resolve_swaps,
    split_holdout,
)
from lightning_sas.data.probes import ProbeSet, SwapLayout, make_probe_set

__all__ = ["DEFAULT_SWAPS", "IndexedDataset", "auto_holdout_size", "NeighbouringDataset", "ProbeSet", "SwapLayout", "auto_swaps", "choose_replacements",
           "choose_swaps", "make_probe_set", "resolve_swaps", "split_holdout"]
