"""Converted record shards as grain random-access data sources.

The readers themselves live with the converters (`data_pipelines.convert.readers`: ArrayRecord shards, and
TFRecord shards with `.idx` offset sidecars); they are picklable and reopen files lazily in each grain worker.
This module finds a task's shards, reads their `metadata.json`, and writes small datasets in the same layout.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any, Sequence

from data_pipelines import schema
from data_pipelines.convert import readers, shards


def open_source(directory, verify_crc: bool = False):
    """The record source (`__len__`, `__getitem__ -> bytes`) of one converted task directory.

    Uses the directory's `metadata.json` when present, else whatever shards it holds (ArrayRecord first).
    """
    directory = pathlib.Path(directory)
    if (directory / "metadata.json").exists():
        return readers.open_shards(str(directory), verify_crc=verify_crc)
    array_records = sorted(str(p) for p in directory.glob("*.array_record-*") if not p.name.endswith(".tmp"))
    if array_records:
        return readers.ArrayRecordSource(array_records)
    tfrecords = sorted(str(p) for p in directory.glob("*.tfrecord-*") if p.suffix not in (".idx", ".tmp"))
    if tfrecords:
        return readers.TFRecordSource(tfrecords, verify_crc)
    raise FileNotFoundError(f"no record shards in {directory}")


def metadata(directory) -> dict[str, Any]:
    """The directory's metadata.json (task, format, class_names, ...), or {} when it has none."""
    path = pathlib.Path(directory) / "metadata.json"
    return json.loads(path.read_text()) if path.exists() else {}


def write_task_records(directory, task: str, records: Sequence[bytes], *, fmt: str = "arrayrecord",
                       num_shards: int = 1, class_names: Sequence[str] | dict = ()) -> pathlib.Path:
    """Write encoded records as `num_shards` shards plus a metadata.json that `open_source` understands (the
    converter's layout, minus its resume markers). `class_names`: names by id, or {dataset: names by id}."""
    from streamformer_jax.tasks import registry

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
        entries.append({"file": name, "num_examples": b - a, **({"index": name + ".idx"} if fmt == "tfrecord" else {})})
    per_dataset = isinstance(class_names, dict)
    meta = {"schema_version": schema.SCHEMA_VERSION, "task": task, "format": fmt, "num_examples": len(records),
            "num_samples": int(sum(counts)), "class_names": [] if per_dataset else list(class_names),
            **({"label_tables": {k: list(v) for k, v in class_names.items()}} if per_dataset else {}),
            **({"record_samples": counts} if any(c != 1 for c in counts) else {}), "shards": entries}
    shards.write_json(str(directory / "metadata.json"), meta)
    return directory
