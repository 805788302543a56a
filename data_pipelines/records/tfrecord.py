"""TFRecord framing without TensorFlow, plus the ``.idx`` offset sidecar that makes a shard randomly accessible.

Record framing (TensorFlow's ``tensorflow/core/lib/io/record_writer``)::

    uint64 length | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)   (little-endian)

Sidecar ``<shard>.idx``: little-endian int64 byte offset of each record's start, one per record, nothing else.
"""
from __future__ import annotations

import os
import struct

import numpy as np

try:  # C implementation (google-crc32c); the pure-Python fallback is ~100x slower but exact.
    import google_crc32c as _gcrc

    def crc32c(data: bytes) -> int:
        return _gcrc.value(data)

except ImportError:  # pragma: no cover - exercised via crc32c_py in tests
    _gcrc = None

    def crc32c(data: bytes) -> int:
        return crc32c_py(data)


def _table() -> tuple[int, ...]:
    poly = 0x82F63B78  # Castagnoli, reflected
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_TABLE = _table()


def crc32c_py(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
    """One framed TFRecord record."""
    header = struct.pack("<Q", len(data))
    return b"".join((header, struct.pack("<I", masked_crc(header)), data, struct.pack("<I", masked_crc(data))))


class TFRecordWriter:
    """Writes framed records to a file object and remembers each record's offset (for the ``.idx``)."""

    def __init__(self, path):
        self._f = open(path, "wb")
        self.offsets: list[int] = []
        self._pos = 0

    def write(self, data: bytes) -> None:
        rec = frame(data)
        self.offsets.append(self._pos)
        self._f.write(rec)
        self._pos += len(rec)

    def close(self) -> None:
        self._f.close()


def write_index(path, offsets) -> None:
    np.asarray(offsets, "<i8").tofile(path)


def read_index(path) -> np.ndarray:
    return np.fromfile(path, "<i8")


def read_record_at(f, offset: int, verify: bool = False, name: str = "") -> bytes:
    """Read the record starting at ``offset`` from an open binary file."""
    f.seek(offset)
    header = f.read(12)
    if len(header) != 12:
        raise IOError(f"{name}: truncated record header at offset {offset}")
    (length,) = struct.unpack("<Q", header[:8])
    body = f.read(length + 4)
    if len(body) != length + 4:
        raise IOError(f"{name}: truncated record at offset {offset}")
    data = body[:length]
    if verify:
        (hcrc,) = struct.unpack("<I", header[8:])
        (dcrc,) = struct.unpack("<I", body[length:])
        if hcrc != masked_crc(header[:8]) or dcrc != masked_crc(data):
            raise IOError(f"{name}: CRC mismatch in record at offset {offset}")
    return data


def iter_records(path, verify: bool = True):
    """Sequential scan, yielding (offset, data); needs no index (used to check or rebuild one)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        offset = 0
        while offset < size:
            data = read_record_at(f, offset, verify, str(path))
            yield offset, data
            offset += 16 + len(data)  # 8 length + 4 crc + data + 4 crc
