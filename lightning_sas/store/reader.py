"""Read a run directory without pickle, as untrusted input: every complete chunk, and a report
of the rest.

Only regular files inside the run directory are read (a symlink, FIFO, device or directory
where a file should be is reported, never opened), never more bytes than a checked header
promises; ``meta.json`` and ``summary.json`` are schema-checked. Each damaged file becomes one
:class:`StoreProblem` naming it, and everything else is still read.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lightning_sas.store.chunks import ChunkError, read_chunk, read_trusted_bytes

__all__ = ["FORMAT_VERSION", "RunData", "StoreProblem", "read_run", "read_stream", "find_store"]

#: 2: chunk headers carry their own CRC-32 (format 1 chunks are still read)
FORMAT_VERSION = 2
#: the largest ``meta.json`` / ``summary.json`` read
MAX_JSON_BYTES = 64 << 20
_CHUNK_NAME = re.compile(r"^[0-9]{1,12}\.chunk$")
#: the columns' number of dimensions in the streams the callbacks write
_STREAM_NDIM: dict[str, dict[str, int]] = {
    "loss": {"step": 1, "loss": 1, "lr": 1},
    "probes": {"step": 1, "losses": 2},
    "sketch": {"step": 1, "sketch": 2},
    "weights": {"step": 1, "layer_norms": 2},
}
#: the largest count a stored size may be (probe counts, windows, blocks): far above any real run
_MAX_COUNT = 1 << 31


@dataclass
class StoreProblem:
    """A file (or field) that was not read. ``kind``: ``torn``, ``corrupt``, ``bad_magic``,
    ``not_regular``, ``unreadable``, ``too_large``, ``schema`` (a JSON field of the wrong
    type or out of range), ``orphan_tmp``, ``earlier_run`` (chunks of another run in the same
    store) or ``version``."""

    path: str
    kind: str
    message: str

    def line(self) -> str:
        """The problem as one line: ``damaged file PATH (kind): message``."""
        return f"damaged file {self.path} ({self.kind}): {self.message}"


@dataclass
class RunData:
    """A stored run: ``streams[name][column]`` arrays (chunks concatenated in order)."""

    root: Path
    meta: dict[str, Any]
    summary: dict[str, Any] | None
    streams: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    problems: list[StoreProblem] = field(default_factory=list)


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None


def _is_real_dir(path: Path) -> bool:
    info = _lstat(path)
    return info is not None and stat.S_ISDIR(info.st_mode)


def _entries(folder: Path) -> list[str]:
    try:
        return sorted(os.listdir(folder))
    except OSError:
        return []


def _chunk_files(folder: Path) -> list[Path]:
    """The ``NNNNNNNN.chunk`` entries of a real (not symlinked) stream folder, in order
    (whatever their type: the reader refuses the ones that are not regular files)."""
    if not _is_real_dir(folder):
        return []
    return sorted((folder / n for n in _entries(folder) if _CHUNK_NAME.match(n)), key=lambda p: int(p.stem))


def find_store(path: str | Path) -> Path:
    """The store folder for ``path``: itself, or its ``sas/`` child (a Lightning version dir).
    A ``sas`` that is a symbolic link is not followed."""
    path = Path(path)
    info = _lstat(path)
    if info is None:
        raise FileNotFoundError(f"{path} does not exist: not a lightning-sas run directory")
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is a file, not a lightning-sas run directory (pass a run's store or its "
                                "Lightning version directory)")
    if os.path.lexists(path / "meta.json") or os.path.lexists(path / "streams"):
        return path
    child = path / "sas"
    if os.path.lexists(child):
        if not _is_real_dir(child):
            raise FileNotFoundError(f"{child} is not a directory (a symbolic link or a file): pass the run directory itself")
        return child
    raise FileNotFoundError(f"{path} is not a lightning-sas run directory (no meta.json, streams/ or sas/)")


#: what :func:`_read_json` returns for a file that is absent or could not be read
_MISSING: Any = object()


def _read_json(path: Path, problems: list[StoreProblem]) -> Any:
    """The parsed JSON of a regular file, or ``_MISSING`` (with a problem when it exists but
    cannot be trusted). ``NaN`` is accepted (the writer stores a non-finite float so),
    ``Infinity`` is not."""
    if not os.path.lexists(path):
        return _MISSING
    try:
        text = read_trusted_bytes(path, MAX_JSON_BYTES).decode("utf-8")
        return json.loads(text, parse_constant=_json_constant)
    except ChunkError as err:
        problems.append(StoreProblem(str(path), err.kind, str(err)))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        problems.append(StoreProblem(str(path), "corrupt", f"not valid JSON ({str(err)[:80]})"))
    return _MISSING


def _json_constant(name: str) -> float:
    if name == "NaN":
        return float("nan")
    raise ValueError(f"{name} is not a stored value")


def _is_int(value: Any, low: int = 0, high: int = _MAX_COUNT) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_int_list(value: Any) -> bool:
    return isinstance(value, list) and all(_is_int(v) for v in value)


#: meta.json fields the reader uses, and the test each must pass (others are kept as they are)
_META_FIELDS: dict[str, Callable[[Any], bool]] = {
    "format_version": lambda v: _is_int(v, 1, 1000),
    "config": lambda v: isinstance(v, dict),
    "run_id": lambda v: isinstance(v, str) and len(v) <= 200,
    "created": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
    "probe_num_train": _is_int,
    "probe_num_test": _is_int,
    "probe_num_swap": lambda v: v is None or _is_int(v),
    "probe_train_indices": _is_int_list,
    "probe_test_indices": _is_int_list,
    "ergodic_gap_source": lambda v: v is None or isinstance(v, str),
    "plan_run": lambda v: v is None or _is_int(v),
    "plan_swaps": lambda v: v is None or (isinstance(v, list) and all(isinstance(s, list) and all(
        isinstance(p, list) and len(p) == 2 and _is_int(p[0]) and _is_int(p[1]) for p in s) for s in v)),
    "automatic_optimization": lambda v: isinstance(v, bool),
    "layer_names": lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v),
}
#: config fields the report uses to rebuild the statistics
_CONFIG_FIELDS: dict[str, Callable[[Any], bool]] = {
    "max_blocks": lambda v: _is_int(v, 4, 1 << 20) and v % 2 == 0,
    "probe_max_blocks": lambda v: _is_int(v, 4, 1 << 20) and v % 2 == 0,
    "window": lambda v: _is_int(v, 1, 1 << 30),
    "late_phase_start": lambda v: v is None or _is_int(v, 0, 1 << 62),
}


def check_meta(meta: Any, path: Path, problems: list[StoreProblem]) -> dict[str, Any]:
    """``meta`` without the fields that fail their check (one problem naming them all)."""
    if not isinstance(meta, dict):
        problems.append(StoreProblem(str(path), "schema", f"holds {'null' if meta is None else 'a ' + type(meta).__name__}, "
                                                          "not an object; meta ignored"))
        return {}
    bad = [key for key, ok in _META_FIELDS.items() if key in meta and not ok(meta[key])]
    out = {k: v for k, v in meta.items() if k not in bad}
    config = out.get("config")
    if isinstance(config, dict):
        bad_cfg = [key for key, ok in _CONFIG_FIELDS.items() if key in config and not ok(config[key])]
        out["config"] = {k: v for k, v in config.items() if k not in bad_cfg}
        bad += [f"config.{k}" for k in bad_cfg]
    if bad:
        problems.append(StoreProblem(str(path), "schema", f"fields of the wrong type or out of range ignored: {', '.join(bad)}"))
    return out


def _summary_value_ok(value: Any) -> bool:
    if value is None or isinstance(value, (bool, str)):
        return True
    if isinstance(value, int):
        return abs(value) < 1 << 62
    if isinstance(value, float):
        return math.isnan(value) or abs(value) < 1e300
    if isinstance(value, dict):
        return all(isinstance(k, str) and not isinstance(v, (dict, list)) and _summary_value_ok(v) for k, v in value.items())
    return False


#: summary keys that hold counts or steps (integers); ``unavailable`` and ``layers`` hold dicts
_SUMMARY_INTS = ("steps", "late_phase_start", "late_phase_steps", "nonfinite_losses", "nonfinite_probe_losses",
                 "ergodic_mean_start", "swaps", "replicas")


#: summary keys that hold numbers (text there is damage)
_SUMMARY_NUMBERS = frozenset((
    "loss_mean", "loss_se", "loss_std", "iat", "ess", "dominant_period", "power_fraction", "geweke_z", "lr", "weight_norm",
    "update_size", "distance_from_init", "distance_to_ergodic_mean", "grad_norm", "ergodic_gap", "probe_train_loss",
    "probe_test_loss", "sas_max", "sas_mean", "sas_replaced", "stability_gap", "stability_gap_removed",
    "stability_gap_added", "paper_coefficient", "sas_critical_t", "sas_mean_critical_t"))


def _summary_key_ok(key: str, value: Any, numeric_keys: Any) -> bool:
    if value is None:
        return True
    if key == "unavailable":
        return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    if key == "layers":
        return isinstance(value, dict) and all(isinstance(k, str) and _summary_value_ok(v) and isinstance(v, (int, float))
                                               and not isinstance(v, bool) for k, v in value.items())
    if key in _SUMMARY_INTS:
        return _is_int(value, -1, 1 << 62)
    if not _summary_value_ok(value):
        return False
    if isinstance(value, (bool, str)):
        return isinstance(value, bool) or not (key in numeric_keys or key.endswith(("_se", "_null", "_loss", "_lower", "_upper")))
    return not isinstance(value, dict)


def check_summary(summary: Any, path: Path, problems: list[StoreProblem]) -> dict[str, Any] | None:
    """``summary`` without the values that are not what the report reads there (a count that is
    not an integer, text where a number goes, a non-finite or absurd number: beyond 1e300; one
    problem naming them all); None (with a problem) when it is not an object."""
    if summary is _MISSING:
        return None
    if not isinstance(summary, dict):
        problems.append(StoreProblem(str(path), "schema", f"holds {'null' if summary is None else 'a ' + type(summary).__name__}, "
                                                          "not an object; summary ignored"))
        return None
    bad = [key for key, value in summary.items() if not isinstance(key, str) or not _summary_key_ok(key, value, _SUMMARY_NUMBERS)]
    if bad:
        problems.append(StoreProblem(str(path), "schema", f"values of the wrong type or out of range ignored: {', '.join(bad)}"))
    return {k: v for k, v in summary.items() if k not in bad}


def _check_stream_columns(name: str, columns: dict[str, np.ndarray]) -> str | None:
    """Why a decoded chunk does not fit its stream (None: it does)."""
    for column, ndim in _STREAM_NDIM.get(name, {}).items():
        if column in columns and columns[column].ndim != ndim:
            return f"column {column!r} has {columns[column].ndim} dimensions, the {name} stream has {ndim}"
    step = columns.get("step")
    if step is not None and (step.ndim != 1 or step.dtype.kind not in "iu"):
        return "column 'step' is not a 1-d integer column"
    return None


def _check_probe_layout(meta: dict[str, Any], probes: dict[str, np.ndarray] | None, path: Path,
                        problems: list[StoreProblem]) -> None:
    """The probe counts of ``meta`` must add up to the width of the probe rows; if not, they
    are dropped (the report then leaves the probe statistics out)."""
    losses = (probes or {}).get("losses")
    keys = ("probe_num_train", "probe_num_test", "probe_num_swap")
    if losses is None or losses.ndim != 2 or not any(k in meta for k in keys):
        return
    width = sum(int(meta.get(k) or 0) for k in keys)
    if width != losses.shape[1]:
        problems.append(StoreProblem(str(path), "schema", f"probe counts add up to {width} but the probe rows have "
                                                          f"{losses.shape[1]} values; probe statistics left out"))
        for key in keys:
            meta.pop(key, None)


def read_stream(folder: Path, problems: list[StoreProblem], progress: Callable[[int, int], None] | None = None,
                done: list[int] | None = None, total: int = 0) -> dict[str, np.ndarray]:
    """Concatenate the complete chunks of one stream folder; bad ones go to ``problems``.

    A chunk is skipped (and reported) when it is damaged, when its columns differ from those of
    most chunks of the stream, or when it belongs to an earlier run in the same store (its steps
    restart below the steps of the chunks before it: only the latest run is kept)."""
    parts: list[tuple[Path, dict[str, np.ndarray]]] = []
    for path in _chunk_files(folder):
        try:
            columns = read_chunk(path)
            why = _check_stream_columns(folder.name, columns)
            if why is not None:
                raise ChunkError("schema", why)
            parts.append((path, columns))
        except ChunkError as err:
            problems.append(StoreProblem(str(path), err.kind, str(err)))
        if progress is not None and done is not None:
            done[0] += 1
            progress(done[0], total)
    if not parts:
        return {}
    signatures = Counter(tuple(sorted(p)) for _, p in parts)
    best = max(signatures.values())
    common = [s for _, p in parts if signatures[s := tuple(sorted(p))] == best][-1]
    kept = []
    for path, columns in parts:
        if tuple(sorted(columns)) != common:
            problems.append(StoreProblem(str(path), "schema", f"columns {sorted(columns)} differ from the stream's "
                                                              f"{list(common)}; chunk skipped"))
        else:
            kept.append((path, columns))
    restart = 0
    for i in range(1, len(kept)):
        before, now = kept[i - 1][1].get("step"), kept[i][1].get("step")
        if before is not None and now is not None and before.size and now.size and now[0] < before[-1]:
            restart = i
    if restart:
        problems.append(StoreProblem(str(kept[restart][0]), "earlier_run",
                                     f"steps restart at {int(kept[restart][1]['step'][0])} after "
                                     f"{int(kept[restart - 1][1]['step'][-1])}: the {restart} chunk(s) before it belong to "
                                     "an earlier run in this store and are not read"))
        kept = kept[restart:]
    blocks = [columns for _, columns in kept]
    out = {}
    for n in common:
        try:
            out[n] = np.concatenate([p[n] for p in blocks])
        except ValueError:  # trailing shapes changed (e.g. probe set resized): keep the last shape
            last = blocks[-1][n].shape[1:]
            out[n] = np.concatenate([p[n] for p in blocks if p[n].shape[1:] == last])
    return out


def read_run(path: str | Path, progress: Callable[[int, int], None] | None = None) -> RunData:
    """Load a run's meta, summary and streams. Damaged files (torn, corrupt, not regular,
    unreadable), fields of the wrong type and orphan temporary files are listed in ``problems``
    (:meth:`StoreProblem.line`) and skipped; everything else loads. Raises
    ``FileNotFoundError`` only when ``path`` is not a run directory at all."""
    root = find_store(path)
    problems: list[StoreProblem] = []
    meta_json = _read_json(root / "meta.json", problems)
    meta = check_meta({} if meta_json is _MISSING else meta_json, root / "meta.json", problems)
    version = meta.get("format_version", FORMAT_VERSION)
    if version > FORMAT_VERSION:
        problems.append(StoreProblem(str(root / "meta.json"), "version",
                                     f"format {version} is newer than this reader ({FORMAT_VERSION}): upgrade lightning-sas"))
    summary = check_summary(_read_json(root / "summary.json", problems), root / "summary.json", problems)
    streams_dir = root / "streams"
    if os.path.lexists(streams_dir) and not _is_real_dir(streams_dir):
        problems.append(StoreProblem(str(streams_dir), "not_regular", "not a directory (a symbolic link or a file); no streams read"))
    folders = []
    for name in _entries(streams_dir) if _is_real_dir(streams_dir) else []:
        folder = streams_dir / name
        if name.startswith(".tmp-"):
            continue
        if _is_real_dir(folder):
            folders.append(folder)
        else:
            problems.append(StoreProblem(str(folder), "not_regular", "a stream that is not a directory (a symbolic link or a file)"))
    for folder in [root, *folders]:
        for name in _entries(folder):
            if name.startswith(".tmp-"):
                problems.append(StoreProblem(str(folder / name), "orphan_tmp",
                                             "temporary file left by an interrupted write (ignored)"))
    total = sum(len(_chunk_files(f)) for f in folders)
    done = [0]
    streams = {f.name: read_stream(f, problems, progress, done, total) for f in folders}
    _check_probe_layout(meta, streams.get("probes"), root / "meta.json", problems)
    return RunData(root=root, meta=meta, summary=summary, streams=streams, problems=problems)
