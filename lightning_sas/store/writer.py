"""Append-only writer of a run's streams: one crash-safe chunk per append."""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from lightning_sas.store.chunks import encode_chunk
from lightning_sas.store.reader import FORMAT_VERSION, _chunk_files

__all__ = ["RunWriter", "atomic_write"]


def atomic_write(path: Path, data: bytes, durable: bool = True) -> None:
    """Write ``data`` to a ``.tmp-`` file in the same folder, then ``os.replace``: a reader sees
    the old file or the new one, never a half-written one, even if the process is killed.

    ``durable`` also ``fsync``s before the rename, so the file survives a power loss. Stream
    chunks skip it (``durable=False``): each carries its length and CRC-32, so a chunk that a
    power loss left empty or torn is reported and skipped by the reader, never read, and an
    ``fsync`` per chunk would cost the training loop milliseconds a flush (far more on network
    file systems)."""
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        if durable:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


class RunWriter:
    """Writes ``meta.json``, ``summary.json`` and ``streams/<name>/<seq>.chunk`` under ``root``.

    Each :meth:`append` is one chunk file written atomically; numbering continues after the
    chunks already present (a resumed run appends to its store).

    With ``background=True`` the writes (encoding and file system calls) run in one worker
    thread, in order, so a flush only hands its arrays over (the callers pass arrays they no
    longer change); :meth:`close` waits for them. A write that fails is kept in :attr:`error`
    (the training loop never sees an exception from the store) and later writes are skipped.
    A run killed with pending writes loses at most those: every file is still written
    atomically.
    """

    def __init__(self, root: str | Path, config: Mapping[str, Any] | None = None, background: bool = False) -> None:
        self.root = Path(root)
        self.error: BaseException | None = None
        self._queue: queue.Queue[Any] | None = None
        self._worker: threading.Thread | None = None
        (self.root / "streams").mkdir(parents=True, exist_ok=True)
        meta_path = self.root / "meta.json"
        self.meta: dict[str, Any] = {}
        if meta_path.exists():
            try:
                self.meta = json.loads(meta_path.read_text())
            except json.JSONDecodeError:
                self.meta = {}
        self.meta.update({"format_version": FORMAT_VERSION, "config": dict(config or {})})
        self.meta.setdefault("created", time.time())
        self._write_meta()
        self._next: dict[str, int] = {}
        if background:
            self._queue = queue.Queue()
            self._worker = threading.Thread(target=self._work, name="lightning-sas-store", daemon=True)
            self._worker.start()

    # -- the worker ----------------------------------------------------------------------
    def _work(self) -> None:
        assert self._queue is not None
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                if self.error is None:
                    job()
            except BaseException as err:  # noqa: BLE001 - kept, reported by the owner
                self.error = err
            finally:
                self._queue.task_done()

    def _submit(self, job: Any) -> None:
        if self._queue is None:
            job()
        else:
            self._queue.put(job)

    def drain(self) -> None:
        """Wait until every write handed to the worker is on disk."""
        if self._queue is not None:
            self._queue.join()

    def _write_meta(self) -> None:
        atomic_write(self.root / "meta.json", json.dumps(self.meta, indent=1, default=_json_default).encode())

    def _seq(self, stream: str) -> int:
        if stream not in self._next:
            files = _chunk_files(self.root / "streams" / stream)
            self._next[stream] = (max(int(f.stem) for f in files) + 1) if files else 0
        return self._next[stream]

    def append(self, stream: str, columns: Mapping[str, np.ndarray]) -> Path:
        """Write one chunk of ``columns`` to ``stream`` (in the worker with ``background``);
        returns its path."""
        folder = self.root / "streams" / stream
        if stream not in self._next:
            folder.mkdir(parents=True, exist_ok=True)
        seq = self._seq(stream)
        path = folder / f"{seq:08d}.chunk"
        self._next[stream] = seq + 1
        columns = dict(columns)
        self._submit(lambda: atomic_write(path, encode_chunk(columns), durable=False))
        return path

    def write_summary(self, summary: Mapping[str, Any], durable: bool = False) -> None:
        """Replace ``summary.json`` atomically (a reader sees the old or the new one). Written at
        every flush without ``fsync`` (milliseconds a flush on some file systems) and
        ``durable=True`` at the end of training."""
        summary = dict(summary)
        self._submit(lambda: atomic_write(self.root / "summary.json", json.dumps(summary, default=_json_default).encode(),
                                          durable=durable))

    def update_meta(self, **fields: Any) -> None:
        self.meta.update(fields)
        meta = json.dumps(self.meta, indent=1, default=_json_default).encode()
        self._submit(lambda: atomic_write(self.root / "meta.json", meta))

    def truncate_after(self, step: int) -> None:
        """Drop rows with ``step > step`` from every stream (resume from an older checkpoint):
        later chunks are removed, the chunk that straddles ``step`` is rewritten atomically."""
        self.drain()
        streams = self.root / "streams"
        for folder in sorted(p for p in streams.iterdir() if p.is_dir()) if streams.exists() else []:
            for path in reversed(_chunk_files(folder)):
                try:
                    columns = read_stream_chunk(path)
                except Exception:
                    path.unlink()
                    continue
                steps = columns.get("step")
                if steps is None:
                    break
                if steps.size and steps.min() > step:
                    path.unlink()
                    continue
                keep = steps <= step
                if not keep.all():
                    atomic_write(path, encode_chunk({k: v[keep] for k, v in columns.items()}))
                break
            self._next.pop(folder.name, None)

    def close(self) -> None:
        """Wait for the pending writes and stop the worker (without one, every write is already
        on disk)."""
        if self._queue is not None and self._worker is not None:
            self._queue.put(None)
            self._worker.join()
            self._queue = None
            self._worker = None


def read_stream_chunk(path: Path) -> dict[str, np.ndarray]:
    from lightning_sas.store.chunks import decode_chunk

    return decode_chunk(path.read_bytes())



