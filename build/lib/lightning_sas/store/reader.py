"""Read a run directory without pickle: every complete chunk, and a report of the rest."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lightning_sas.store.chunks import ChunkError, decode_chunk

__all__ = ["FORMAT_VERSION", "RunData", "StoreProblem", "read_run", "read_stream", "find_store"]

FORMAT_VERSION = 1


@dataclass
class StoreProblem:
    """A file that was not read: ``kind`` in torn, corrupt, bad_magic, orphan_tmp, version."""

    path: str
    kind: str
    message: str


@dataclass
class RunData:
    """A stored run: ``streams[name][column]`` arrays (chunks concatenated in order)."""

    root: Path
    meta: dict[str, Any]
    summary: dict[str, Any] | None
    streams: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    problems: list[StoreProblem] = field(default_factory=list)


def _chunk_files(folder: Path) -> list[Path]:
    if not folder.exists():
        return []
    return sorted((p for p in folder.iterdir() if p.suffix == ".chunk" and p.stem.isdigit()), key=lambda p: int(p.stem))


def find_store(path: str | Path) -> Path:
    """The store folder for ``path``: itself, or its ``sas/`` child (a Lightning version dir)."""
    path = Path(path)
    if (path / "meta.json").exists() or (path / "streams").exists():
        return path
    if (path / "sas").exists():
        return path / "sas"
    raise FileNotFoundError(f"{path} is not a lightning-sas run directory (no meta.json, streams/ or sas/)")


def read_stream(folder: Path, problems: list[StoreProblem], progress: Callable[[int, int], None] | None = None,
                done: list[int] | None = None, total: int = 0) -> dict[str, np.ndarray]:
    """Concatenate the complete chunks of one stream folder; bad ones go to ``problems``."""
    parts: list[dict[str, np.ndarray]] = []
    for path in _chunk_files(folder):
        try:
            parts.append(decode_chunk(path.read_bytes()))
        except ChunkError as err:
            problems.append(StoreProblem(str(path), err.kind, str(err)))
        if progress is not None and done is not None:
            done[0] += 1
            progress(done[0], total)
    if not parts:
        return {}
    names = [n for n in parts[0] if all(n in p for p in parts)]
    out = {}
    for n in names:
        try:
            out[n] = np.concatenate([p[n] for p in parts])
        except ValueError:  # trailing shapes changed (e.g. probe set resized): keep the last shape
            last = parts[-1][n].shape[1:]
            out[n] = np.concatenate([p[n] for p in parts if p[n].shape[1:] == last])
    return out


def read_run(path: str | Path, progress: Callable[[int, int], None] | None = None) -> RunData:
    """Load a run's meta, summary and streams; torn/corrupt chunks and orphan temporary files are
    listed in ``problems`` and skipped, everything else loads."""
    root = find_store(path)
    problems: list[StoreProblem] = []
    meta: dict[str, Any] = {}
    if (root / "meta.json").exists():
        try:
            meta = json.loads((root / "meta.json").read_text())
        except json.JSONDecodeError as err:
            problems.append(StoreProblem(str(root / "meta.json"), "corrupt", str(err)))
    version = meta.get("format_version", FORMAT_VERSION)
    if version > FORMAT_VERSION:
        problems.append(StoreProblem(str(root), "version", f"format {version} is newer than this reader ({FORMAT_VERSION})"))
    summary = None
    if (root / "summary.json").exists():
        try:
            summary = json.loads((root / "summary.json").read_text())
        except json.JSONDecodeError as err:
            problems.append(StoreProblem(str(root / "summary.json"), "corrupt", str(err)))
    for tmp in root.rglob(".tmp-*"):
        problems.append(StoreProblem(str(tmp), "orphan_tmp", "temporary file left by an interrupted write (ignored)"))
    streams_dir = root / "streams"
    folders = sorted(p for p in streams_dir.iterdir() if p.is_dir()) if streams_dir.exists() else []
    total = sum(len(_chunk_files(f)) for f in folders)
    done = [0]
    streams = {f.name: read_stream(f, problems, progress, done, total) for f in folders}
    return RunData(root=root, meta=meta, summary=summary, streams=streams, problems=problems)
