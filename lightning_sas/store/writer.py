"""Append-only writer of a run's streams: one crash-safe chunk per append."""

from __future__ import annotations

import errno
import json
import os
import queue
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from lightning_sas.store.chunks import encode_chunk, read_trusted_bytes
from lightning_sas.store.reader import FORMAT_VERSION, _chunk_files

__all__ = ["RunWriter", "StoreInUseError", "atomic_write"]


class StoreInUseError(RuntimeError):
    """A run directory that this writer may not write: another writer holds it, or it holds
    the streams of another run."""


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

    One writer, one run: the writer holds an exclusive lock on the directory while it lives, and
    ``meta.json`` names the run (``run_id``). A store that holds chunks is continued only by the
    same run (``run_id`` equal to the stored one, or ``resume=True`` from a checkpoint without
    one); anything else raises :class:`StoreInUseError` before a byte is written.

    With ``background=True`` the writes (encoding and file system calls) run in one worker
    thread, in order, so a flush only hands its arrays over (the callers pass arrays they no
    longer change); :meth:`close` waits for them. A write that fails is kept in :attr:`error`
    (the training loop never sees an exception from the store) and later writes are skipped.
    A run killed with pending writes loses at most those: every file is still written
    atomically.
    """

    def __init__(self, root: str | Path, config: Mapping[str, Any] | None = None, background: bool = False,
                 run_id: str | None = None, resume: bool = False) -> None:
        self.root = Path(root)
        self.error: BaseException | None = None
        self._queue: queue.Queue[Any] | None = None
        self._worker: threading.Thread | None = None
        self._lock_fd: int | None = None
        (self.root / "streams").mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            self.meta = self._claim(run_id, resume)
        except BaseException:
            self._unlock()
            raise
        self.meta.update({"format_version": FORMAT_VERSION, "config": dict(config or {})})
        self.meta.setdefault("created", time.time())
        self._write_meta()
        self._next: dict[str, int] = {}
        if background:
            self._queue = queue.Queue()
            self._worker = threading.Thread(target=self._work, name="lightning-sas-store", daemon=True)
            self._worker.start()

    @property
    def run_id(self) -> str:
        """The id of the run this store holds (``meta.json``'s ``run_id``)."""
        return str(self.meta["run_id"])

    # -- one writer, one run -------------------------------------------------------------
    def _lock(self) -> None:
        """Hold an exclusive lock on ``<root>/.writer.lock`` while this writer lives (released by
        :meth:`close`, and by the operating system when the process dies): a second writer on the
        same directory, in this process or another, is refused."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory lock, the run id check remains
            return
        fd = os.open(self.root / ".writer.lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return  # a file system without locks: the run id check remains
            raise StoreInUseError(
                f"{self.root} is being written by another lightning-sas writer (a SASMonitor or a standalone "
                "LossStream/WeightSnapshots/ProbeLosses on the same run directory, here or in another process): "
                "give each its own directory (SASMonitor(store=<path>)), or pass the parts to one SASMonitor "
                "(loss_stream=, weights=, probes=)") from None
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _claim(self, run_id: str | None, resume: bool) -> dict[str, Any]:
        """The meta this writer continues: a store holding chunks is continued only by the run
        that wrote them (the same ``run_id``, or ``resume`` from a checkpoint that predates run
        ids); a new fit is refused rather than mixed into an older run's streams. An empty store
        starts afresh (its old meta and summary are dropped)."""
        meta_path = self.root / "meta.json"
        stored: dict[str, Any] = {}
        if os.path.lexists(meta_path):
            try:
                loaded = json.loads(read_trusted_bytes(meta_path, 64 << 20))
                stored = loaded if isinstance(loaded, dict) else {}
            except (OSError, ValueError):  # ChunkError is a ValueError: a damaged meta counts as none
                stored = {}
        stored_id = stored.get("run_id") if isinstance(stored.get("run_id"), str) else None
        streams = self.root / "streams"
        has_data = any(_chunk_files(folder) for folder in streams.iterdir() if folder.is_dir())
        if not has_data:
            (self.root / "summary.json").unlink(missing_ok=True)
            return {"run_id": run_id or uuid.uuid4().hex}
        if (run_id is not None and run_id == stored_id) or (resume and (run_id is None or stored_id is None)):
            stored["run_id"] = stored_id or run_id or uuid.uuid4().hex
            return stored
        created = stored.get("created")
        when = time.strftime(" created %Y-%m-%d %H:%M:%S", time.localtime(created)) if isinstance(created, (int, float)) else ""
        raise StoreInUseError(
            f"{self.root} already holds the streams of another run (run id {stored_id or 'unknown'}{when}); a new fit "
            "does not append to it: give this fit its own directory (a new logger version, or SASMonitor(store=<new "
            "path>)) or remove the old store. Resuming that run from its checkpoint (ckpt_path=...) continues it.")

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
        self._unlock()

    def __del__(self) -> None:  # a writer dropped without close() still releases its lock
        try:
            self._unlock()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def read_stream_chunk(path: Path) -> dict[str, np.ndarray]:
    from lightning_sas.store.chunks import read_chunk

    return read_chunk(path)



