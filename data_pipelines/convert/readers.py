"""Random-access readers over converted shards (``__len__`` / ``__getitem__`` -> record bytes).

Both follow grain's ``RandomAccessDataSource`` protocol, so ``grain.MapDataset.source(open_shards(out))``
works; they are picklable (files are opened lazily in each process). Decode records with
``data_pipelines.schema.decode_record``.
"""
from __future__ import annotations

import bisect
import json
import os
from typing import Sequence

import numpy as np

from . import tfrecord


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
        from array_record.python import array_record_module as ar

        lengths = []
        for p in paths:
            r = ar.ArrayRecordReader(str(p))
            lengths.append(r.num_records())
            r.close()
        super().__init__(paths, lengths)
        self._handles = {}

    def __getitem__(self, index: int) -> bytes:
        from array_record.python import array_record_module as ar

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


def load_metadata(out_dir) -> dict:
    with open(os.path.join(out_dir, "metadata.json"), encoding="utf-8") as f:
        return json.load(f)


def open_shards(out_dir, verify_crc: bool = False):
    """The reader for a converter output directory (format and shard list from its ``metadata.json``)."""
    meta = load_metadata(out_dir)
    paths = [os.path.join(out_dir, s["file"]) for s in meta["shards"]]
    if meta["format"] == "arrayrecord":
        return ArrayRecordSource(paths)
    if meta["format"] == "tfrecord":
        return TFRecordSource(paths, verify_crc)
    raise ValueError(f"{out_dir}: unknown format {meta['format']!r}")
