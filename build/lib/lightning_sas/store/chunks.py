"""Chunk files: ``magic | header length | JSON header | raw little-endian column bytes``.

The header names every column (dtype, shape), the payload length and its CRC-32, so a torn or
corrupted chunk is detected and never read. No pickle anywhere.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Mapping

import numpy as np

__all__ = ["MAGIC", "ChunkError", "encode_chunk", "decode_chunk"]

MAGIC = b"SASCHNK1"


class ChunkError(ValueError):
    """A chunk that cannot be trusted; ``kind`` is "torn", "corrupt" or "bad_magic"."""

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
    return MAGIC + struct.pack("<Q", len(header)) + header + payload


def decode_chunk(data: bytes) -> dict[str, np.ndarray]:
    """Columns of a chunk; raises :class:`ChunkError` for torn, corrupt or foreign files."""
    if len(data) < len(MAGIC) + 8:
        raise ChunkError("torn", f"file too short ({len(data)} bytes)")
    if data[: len(MAGIC)] != MAGIC:
        raise ChunkError("bad_magic", "not a lightning-sas chunk")
    (header_len,) = struct.unpack("<Q", data[len(MAGIC) : len(MAGIC) + 8])
    start = len(MAGIC) + 8
    if start + header_len > len(data):
        raise ChunkError("torn", "header runs past the end of the file")
    try:
        header = json.loads(data[start : start + header_len].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ChunkError("corrupt", f"unreadable header: {err}") from err
    payload = data[start + header_len :]
    if len(payload) != header["payload_length"]:
        raise ChunkError("torn", f"payload has {len(payload)} of {header['payload_length']} bytes")
    if zlib.crc32(payload) != header["crc32"]:
        raise ChunkError("corrupt", "payload checksum mismatch")
    out: dict[str, np.ndarray] = {}
    offset = 0
    for col in header["columns"]:
        dtype = np.dtype(col["dtype"])
        shape = tuple(col["shape"])
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        out[col["name"]] = np.frombuffer(payload, dtype=dtype, count=size // max(dtype.itemsize, 1), offset=offset).reshape(shape).copy()
        offset += size
    return out
