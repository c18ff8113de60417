"""Append-only writer of a run's streams: one crash-safe chunk per append."""

from __future__ import annotations

import json
import os
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
    """

    def __init__(self, root: str | Path, config: Mapping[str, Any] | None = None) -> None:
        self.root = Path(root)
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

    def _write_meta(self) -> None:
        atomic_write(self.root / "meta.json", json.dumps(self.meta, indent=1, default=_json_default).encode())

    def _seq(self, stream: str) -> int:
        if stream not in self._next:
            files = _chunk_files(self.root / "streams" / stream)
            self._next[stream] = (max(int(f.stem) for f in files) + 1) if files else 0
        return self._next[stream]

    def append(self, stream: str, columns: Mapping[str, np.ndarray]) -> Path:
        """Write one chunk of ``columns`` to ``stream``; returns its path."""
        folder = self.root / "streams" / stream
        folder.mkdir(parents=True, exist_ok=True)
        seq = self._seq(stream)
        path = folder / f"{seq:08d}.chunk"
        atomic_write(path, encode_chunk(columns), durable=False)
        self._next[stream] = seq + 1
        return path

    def write_summary(self, summary: Mapping[str, Any], durable: bool = False) -> None:
        """Replace ``summary.json`` atomically (a reader sees the old or the new one). Written at
        every flush without ``fsync`` (milliseconds a flush on some file systems) and
        ``durable=True`` at the end of training."""
        atomic_write(self.root / "summary.json", json.dumps(dict(summary), default=_json_default).encode(), durable=durable)

    def update_meta(self, **fields: Any) -> None:
        self.meta.update(fields)
        self._write_meta()

    def truncate_after(self, step: int) -> None:
        """Drop rows with ``step > step`` from every stream (resume from an older checkpoint):
        later chunks are removed, the chunk that straddles ``step`` is rewritten atomically."""
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
        """Nothing is buffered: every append is already on disk."""


def read_stream_chunk(path: Path) -> dict[str, np.ndarray]:
    from lightning_sas.store.chunks import decode_chunk

    return decode_chunk(path.read_bytes())



