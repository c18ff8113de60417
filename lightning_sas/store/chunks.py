"""Chunk files of a run's streams, and bounded reads of files that may not be trusted.

Format 2 (``FORMAT_VERSION = 2``)::

    b"SASCHNK2" | header length (u64, little-endian) | CRC-32 of the header (u32) | JSON header | payload

The header names every column (``name``, little-endian numeric ``dtype``, ``shape``), the
payload length and the payload's CRC-32. Both the header and the payload are checksummed, and
the header is schema-checked (every field present and of its type, a known dtype, shapes whose
sizes add up to the payload length), so a torn, truncated or edited chunk is detected and never
read. Format 1 chunks (``b"SASCHNK1"``, no header checksum) are still read, with the same schema
check. No pickle anywhere.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import struct
import zlib
from pathlib import Path
from typing import Any, Mapping

import numpy as np

__all__ = ["MAGIC", "MAGIC_V1", "MAX_HEADER_BYTES", "ChunkError", "encode_chunk", "decode_chunk", "read_chunk",
           "read_trusted_bytes"]

MAGIC = b"SASCHNK2"
MAGIC_V1 = b"SASCHNK1"
#: the largest chunk header read (a header lists a few columns: far below this)
MAX_HEADER_BYTES = 1 << 20
#: dtypes a chunk may hold (what :func:`encode_chunk` writes: little-endian numbers and bools)
ALLOWED_DTYPES = frozenset({"|b1", "|i1", "|u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8", "<f2", "<f4", "<f8"})
_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")


class ChunkError(ValueError):
    """A file that cannot be trusted. ``kind``: ``torn`` (shorter than its header says),
    ``corrupt`` (a checksum or the header's schema fails, or bytes follow the payload),
    ``bad_magic`` (not a chunk), ``not_regular`` (a symlink, directory, FIFO or device where a
    file should be), ``unreadable`` (the operating system refuses to open or read it) or
    ``too_large``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def encode_chunk(columns: Mapping[str, np.ndarray]) -> bytes:
    """Bytes of one chunk holding ``columns`` (equal leading length, any numeric dtype/shape)."""
    arrays = {name: np.ascontiguousarray(np.asarray(value)) for name, value in columns.items()}
    lengths = {a.shape[0] if a.ndim else 1 for a in arrays.values()}
    if len(lengths) > 1:
        raise ValueError(f"columns have different lengths: { {k: v.shape for k, v in arrays.items()} }")
    spec, parts = [], []
    for name, a in arrays.items():
        if a.dtype.kind not in "biuf":
            raise TypeError(f"column {name!r}: only numeric dtypes are stored, got {a.dtype}")
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        spec.append({"name": name, "dtype": a.dtype.str, "shape": list(a.shape)})
        parts.append(a.tobytes(order="C"))
    payload = b"".join(parts)
    header = json.dumps({"columns": spec, "payload_length": len(payload), "crc32": zlib.crc32(payload)}).encode()
    return MAGIC + _LENGTH.pack(len(header)) + _CRC.pack(zlib.crc32(header)) + header + payload


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_header(header: Any) -> list[tuple[str, np.dtype, tuple[int, ...], int]]:
    """The columns of a parsed chunk header as ``(name, dtype, shape, byte size)``; raises
    :class:`ChunkError` ("corrupt") for a header that lacks a field, has one of the wrong type,
    names a dtype outside :data:`ALLOWED_DTYPES`, repeats a column, gives columns different
    lengths or whose sizes do not add up to ``payload_length``."""
    if not isinstance(header, dict):
        raise ChunkError("corrupt", f"the header is a {type(header).__name__}, not an object")
    for key in ("columns", "payload_length", "crc32"):
        if key not in header:
            raise ChunkError("corrupt", f"the header lacks the field {key!r}")
    if not _is_count(header["payload_length"]) or not _is_count(header["crc32"]) or header["crc32"] >= 1 << 32:
        raise ChunkError("corrupt", "the header's payload_length or crc32 is not a non-negative integer")
    if not isinstance(header["columns"], list) or not header["columns"]:
        raise ChunkError("corrupt", "the header's columns are not a non-empty list")
    out, names, lengths, total = [], set(), set(), 0
    for col in header["columns"]:
        if not isinstance(col, dict) or not all(k in col for k in ("name", "dtype", "shape")):
            raise ChunkError("corrupt", f"a column of the header lacks name, dtype or shape: {str(col)[:80]}")
        name, dtype, shape = col["name"], col["dtype"], col["shape"]
        if not isinstance(name, str) or not name or name in names:
            raise ChunkError("corrupt", f"column name {str(name)[:40]!r} is empty, not a string or repeated")
        if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
            raise ChunkError("corrupt", f"column {name!r} names the dtype {str(dtype)[:20]!r}, not one a chunk holds")
        if not isinstance(shape, list) or len(shape) > 8 or not all(_is_count(s) for s in shape):
            raise ChunkError("corrupt", f"column {name!r} has the shape {str(shape)[:40]}, not a list of sizes")
        size = np.dtype(dtype).itemsize
        for s in shape:
            size *= s
            if size > header["payload_length"]:
                raise ChunkError("corrupt", f"column {name!r} of shape {shape} is larger than the payload")
        names.add(name)
        lengths.add(shape[0] if shape else 1)
        total += size
        out.append((name, np.dtype(dtype), tuple(shape), size))
    if len(lengths) > 1:
        raise ChunkError("corrupt", "the header's columns have different lengths")
    if total != header["payload_length"]:
        raise ChunkError("corrupt", f"the columns hold {total} bytes but payload_length is {header['payload_length']}")
    return out


def decode_chunk(data: bytes) -> dict[str, np.ndarray]:
    """Columns of a chunk held in memory; raises :class:`ChunkError` for torn, corrupt or
    foreign bytes."""
    view = memoryview(data)
    position = [0]

    def take(n: int) -> bytes:
        piece = bytes(view[position[0] : position[0] + n])
        position[0] += len(piece)
        return piece

    return _decode(take, len(data))


def _decode(take: Any, size: int) -> dict[str, np.ndarray]:
    """Decode from ``take(n)`` (at most ``n`` bytes) of a file of ``size`` bytes; reads no more
    than the header promises and checks that nothing follows the payload."""
    magic = take(len(MAGIC))
    if len(magic) < len(MAGIC):
        raise ChunkError("torn", f"file too short ({size} bytes)")
    if magic not in (MAGIC, MAGIC_V1):
        raise ChunkError("bad_magic", "not a lightning-sas chunk")
    prefix = take(_LENGTH.size + (_CRC.size if magic == MAGIC else 0))
    if len(prefix) < _LENGTH.size + (_CRC.size if magic == MAGIC else 0):
        raise ChunkError("torn", f"file too short ({size} bytes)")
    (header_len,) = _LENGTH.unpack(prefix[: _LENGTH.size])
    if header_len > MAX_HEADER_BYTES:
        raise ChunkError("corrupt", f"header length {header_len} is beyond {MAX_HEADER_BYTES} bytes")
    raw = take(header_len)
    if len(raw) < header_len:
        raise ChunkError("torn", "header runs past the end of the file")
    if magic == MAGIC and zlib.crc32(raw) != _CRC.unpack(prefix[_LENGTH.size :])[0]:
        raise ChunkError("corrupt", "header checksum mismatch")
    try:
        header = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise ChunkError("corrupt", f"unreadable header: {str(err)[:80]}") from None
    columns = check_header(header)
    length = header["payload_length"]
    if length > size:
        raise ChunkError("torn", f"the header promises a payload of {length} bytes, the file has {size} bytes in all")
    payload = take(length)
    if len(payload) != length:
        raise ChunkError("torn", f"payload has {len(payload)} of {length} bytes")
    if take(1):
        raise ChunkError("corrupt", "bytes follow the payload")
    if zlib.crc32(payload) != header["crc32"]:
        raise ChunkError("corrupt", "payload checksum mismatch")
    out: dict[str, np.ndarray] = {}
    offset = 0
    for name, dtype, shape, nbytes in columns:
        out[name] = np.frombuffer(payload, dtype=dtype, count=nbytes // dtype.itemsize, offset=offset).reshape(shape).copy()
        offset += nbytes
    return out


def _open_regular(path: Path) -> int:
    """A descriptor of ``path`` if it is a regular file (not a symlink, FIFO, device or
    directory): checked with ``lstat`` before opening, opened without following a symlink and
    without blocking, and checked again with ``fstat`` on the open descriptor."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise ChunkError("unreadable", "the file disappeared") from None
    except OSError as err:
        raise ChunkError("unreadable", f"cannot stat it ({err.strerror})") from None
    if stat.S_ISLNK(info.st_mode):
        raise ChunkError("not_regular", "a symbolic link (only regular files inside the run directory are read)")
    if not stat.S_ISREG(info.st_mode):
        raise ChunkError("not_regular", f"a {_file_type(info.st_mode)}, not a regular file")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ChunkError("not_regular", "a symbolic link (only regular files inside the run directory are read)") from None
        raise ChunkError("unreadable", f"cannot open it ({err.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced between lstat and open
        os.close(fd)
        raise ChunkError("not_regular", "not a regular file")
    return fd


def _file_type(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


class _Reader:
    """Bounded reads from a descriptor: never more than asked, never past ``limit`` bytes."""

    def __init__(self, fd: int, limit: int) -> None:
        self.fd, self.left = fd, limit

    def __call__(self, n: int) -> bytes:
        n = min(n, self.left)
        parts, got = [], 0
        while got < n:
            try:
                piece = os.read(self.fd, min(n - got, 1 << 24))
            except OSError as err:
                raise ChunkError("unreadable", f"read failed ({err.strerror})") from None
            if not piece:
                break
            parts.append(piece)
            got += len(piece)
        self.left -= got
        return b"".join(parts)


def read_chunk(path: str | Path, max_bytes: int = 1 << 32) -> dict[str, np.ndarray]:
    """Columns of the chunk file ``path``: a regular file only (see :class:`ChunkError` for the
    refusals), read in bounded pieces (the fixed prefix, then the header's length, then the
    payload length the checked header gives, then one byte to see that nothing follows)."""
    fd = _open_regular(Path(path))
    try:
        size = os.fstat(fd).st_size
        if size > max_bytes:
            raise ChunkError("too_large", f"{size} bytes, beyond the {max_bytes} a chunk may have")
        return _decode(_Reader(fd, size + 1), size)
    finally:
        os.close(fd)


def read_trusted_bytes(path: str | Path, max_bytes: int) -> bytes:
    """The bytes of a small regular file (``meta.json``, ``summary.json``), at most
    ``max_bytes``; raises :class:`ChunkError` as :func:`read_chunk` does."""
    fd = _open_regular(Path(path))
    try:
        data = _Reader(fd, max_bytes + 1)(max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise ChunkError("too_large", f"larger than {max_bytes} bytes")
    return data
