"""Record shards as random-access sources (``__len__`` / ``__getitem__`` -> record bytes), and small datasets
written in the converter's layout.

The readers (ArrayRecord shards; TFRecord shards through their ``.idx`` offset sidecars) follow grain's
``RandomAccessDataSource`` protocol, so ``grain.MapDataset.source(open_source(out))`` works; they are picklable
(files are opened lazily in each process, e.g. each grain worker). Decode records with
``data_pipelines.records.schema.decode_record``.
"""
from __future__ import annotations

import bisect
import json
import os
import pathlib
from typing import Sequence

import numpy as np
from array_record.python import array_record_module as ar

from data_pipelines.records import schema, shards, tfrecord
from streamformer_jax.tasks import registry


class _MultiShard:
    """Global index -> (shard, local index) over shards of known lengths."""

    def __init__(self, paths: Sequence[str], lengths: Sequence[int]):
        self.paths = [str(p) for p in paths]
        self._starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64).tolist()

    def __len__(self) -> int:
        return self._starts[-1]

    def _locate(self, index: int) -> tuple[int, int]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} out of range [0, {len(self)})")
        shard = bisect.bisect_right(self._starts, index) - 1
        return shard, index - self._starts[shard]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"] = {}  # open files do not pickle; reopen lazily in the new process
        return state


class ArrayRecordSource(_MultiShard):
    """Random access over ArrayRecord shards."""

    def __init__(self, paths: Sequence[str]):
        lengths = []
        for p in paths:
            r = ar.ArrayRecordReader(str(p))
            lengths.append(r.num_records())
            r.close()
        super().__init__(paths, lengths)
        self._handles = {}

    def __getitem__(self, index: int) -> bytes:
        shard, local = self._locate(int(index))
        reader = self._handles.get(shard)
        if reader is None:
            # No readahead: records are read one at a time in random order.
            reader = ar.ArrayRecordReader(self.paths[shard], "readahead_buffer_size:0")
            self._handles[shard] = reader
        return reader.read([local])[0]

    def __repr__(self) -> str:
        return f"ArrayRecordSource({len(self.paths)} shards, {len(self)} records)"


class TFRecordSource(_MultiShard):
    """Random access over TFRecord shards through their ``.idx`` offset sidecars."""

    def __init__(self, paths: Sequence[str], verify_crc: bool = False):
        self._offsets = [tfrecord.read_index(str(p) + ".idx") for p in paths]
        super().__init__(paths, [len(o) for o in self._offsets])
        self.verify_crc = verify_crc
        self._handles = {}

    def __getitem__(self, index: int) -> bytes:
        shard, local = self._locate(int(index))
        f = self._handles.get(shard)
        if f is None:
            f = open(self.paths[shard], "rb")
            self._handles[shard] = f
        return tfrecord.read_record_at(f, int(self._offsets[shard][local]), self.verify_crc, self.paths[shard])

    def __repr__(self) -> str:
        return f"TFRecordSource({len(self.paths)} shards, {len(self)} records)"


def load_metadata(directory) -> dict:
    """A record directory's metadata.json (task, format, class_names, shards, ...)."""
    with open(os.path.join(directory, "metadata.json"), encoding="utf-8") as f:
        return json.load(f)


def open_source(directory, verify_crc: bool = False):
    """The record source of one directory: format and shard list from its ``metadata.json`` (the converter's
    output), or, without one, whatever shards it holds (ArrayRecord first)."""
    directory = pathlib.Path(directory)
    if (directory / "metadata.json").exists():
        meta = load_metadata(directory)
        paths = [str(directory / s["file"]) for s in meta["shards"]]
        if meta["format"] == "arrayrecord":
            return ArrayRecordSource(paths)
        if meta["format"] == "tfrecord":
            return TFRecordSource(paths, verify_crc)
        raise ValueError(f"{directory}: unknown format {meta['format']!r}")
    array_records = sorted(str(p) for p in directory.glob("*.array_record-*") if not p.name.endswith(".tmp"))
    if array_records:
        return ArrayRecordSource(array_records)
    tfrecords = sorted(str(p) for p in directory.glob("*.tfrecord-*") if p.suffix not in (".idx", ".tmp"))
    if tfrecords:
        return TFRecordSource(tfrecords, verify_crc)
    raise FileNotFoundError(f"no record shards in {directory}")


def write_task_records(directory, task: str, records: Sequence[bytes], *, fmt: str = "arrayrecord",
                       num_shards: int = 1, class_names: Sequence[str] | dict = ()) -> pathlib.Path:
    """Write encoded records as `num_shards` shards plus a metadata.json that `open_source` understands (the
    converter's layout, minus its resume markers). `class_names`: names by id, or {dataset: names by id}."""
    spec = registry.get(task)
    counts = [spec.samples_in(schema.decode_record(r)) for r in records]
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    entries = []
    for k, (a, b) in enumerate(shards.shard_bounds(len(records), num_shards)):
        name = shards.shard_name(task, fmt, k, num_shards)
        with shards.ShardWriter(str(directory / name), fmt) as writer:
            for r in records[a:b]:
                writer.write(r)
        entries.append(shards.shard_entry(name, b - a, fmt))
    per_dataset = isinstance(class_names, dict)
    meta = {"schema_version": schema.SCHEMA_VERSION, "task": task, "format": fmt, "num_examples": len(records),
            "num_samples": int(sum(counts)), "class_names": [] if per_dataset else list(class_names),
            **({"label_tables": {k: list(v) for k, v in class_names.items()}} if per_dataset else {}),
            **({"record_samples": counts} if any(c != 1 for c in counts) else {}), "shards": entries}
    shards.write_json(str(directory / "metadata.json"), meta)
    return directory
