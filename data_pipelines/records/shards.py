"""Shard layout and atomic shard writing.

A shard is written under ``<name>.tmp`` and renamed when complete, then a small completion marker
(``_progress/<name>.json``) is written, also atomically. A shard counts as done only when its marker exists
and matches the current input (fingerprint), which is what makes a re-run after a crash resume safely.
"""
from __future__ import annotations

import json
import os

from array_record.python.array_record_module import ArrayRecordWriter

from data_pipelines.records import tfrecord

FORMATS = ("arrayrecord", "tfrecord")
# group_size:1 keeps single-record reads cheap (grain's recommendation for random access).
ARRAY_RECORD_OPTIONS = "group_size:1"
PROGRESS_DIR = "_progress"


def shard_name(task: str, fmt: str, index: int, count: int) -> str:
    suffix = "array_record" if fmt == "arrayrecord" else "tfrecord"
    return f"{task}.{suffix}-{index:05d}-of-{count:05d}"


def shard_bounds(num_items: int, num_shards: int) -> list[tuple[int, int]]:
    """Balanced contiguous item ranges; depends only on the item count (never on the worker count)."""
    return [(k * num_items // num_shards, (k + 1) * num_items // num_shards) for k in range(num_shards)]


def num_shards_for(num_items: int, shard_size: int | None, num_shards: int | None) -> int:
    if num_shards:
        return max(1, min(num_shards, num_items))
    size = shard_size or 256
    return max(1, -(-num_items // size))


def shard_entry(name: str, num_examples: int, fmt: str) -> dict:
    """A shard's entry in metadata.json (TFRecord shards name their `.idx` sidecar)."""
    return {"file": name, "num_examples": num_examples, **({"index": name + ".idx"} if fmt == "tfrecord" else {})}


def write_text(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: str, obj) -> None:
    write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


class ShardWriter:
    """Context manager: records go to ``path.tmp``; on clean exit the file is renamed to ``path``."""

    def __init__(self, path: str, fmt: str):
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
        self.path, self.fmt, self.tmp = path, fmt, path + ".tmp"
        self.count = 0

    def __enter__(self):
        if self.fmt == "arrayrecord":
            self._w = ArrayRecordWriter(self.tmp, ARRAY_RECORD_OPTIONS)
        else:
            self._w = tfrecord.TFRecordWriter(self.tmp)
        return self

    def write(self, data: bytes) -> None:
        self._w.write(data)
        self.count += 1

    def __exit__(self, exc_type, exc, tb):
        self._w.close()
        if exc_type is not None:  # leave nothing half-written under a final name
            os.remove(self.tmp)
            return False
        if self.fmt == "tfrecord":
            tfrecord.write_index(self.path + ".idx.tmp", self._w.offsets)
            os.replace(self.path + ".idx.tmp", self.path + ".idx")
        with open(self.tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(self.tmp, self.path)
        return False


def remove_stale_temps(out_dir: str) -> None:
    """Delete ``*.tmp`` files a crashed run left behind (only ours: shard, index and marker temps)."""
    for d in (out_dir, os.path.join(out_dir, PROGRESS_DIR)):
        if os.path.isdir(d):
            for name in os.listdir(d):
                if name.endswith(".tmp"):
                    os.remove(os.path.join(d, name))
