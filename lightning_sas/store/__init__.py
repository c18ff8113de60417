"""Append-only, chunked, crash-safe stream files in the run directory, and ``read_run``."""

from lightning_sas.store.reader import FORMAT_VERSION, RunData, StoreProblem, find_store, read_run
from lightning_sas.store.writer import RunWriter, StoreInUseError

__all__ = ["FORMAT_VERSION", "RunData", "RunWriter", "StoreInUseError", "StoreProblem", "find_store", "read_run"]
