"""Data helpers: neighbouring datasets, the held-out split, replacements and probe sets."""

from lightning_sas.data.indexed import IndexedDataset
from lightning_sas.data.neighbouring import NeighbouringDataset, choose_replacements, split_holdout
from lightning_sas.data.probes import ProbeSet, make_probe_set

__all__ = ["IndexedDataset", "NeighbouringDataset", "ProbeSet", "choose_replacements", "make_probe_set", "split_holdout"]
