"""Convert every task of the original metadata file (`all.yaml`) into `OUT/<task>/`, which the trainer reads with
`--config.data_dir=OUT` (`python -m data_pipelines.convert from-metadata`, docs/data_convert.md).

Each task's block is read by its `TaskSpec.read_original` exactly as the original loader reads it (annotation
rows, per-dataset roots and path rules, label2id tables); all blocks are read before anything is written, so a
malformed annotation stops the command before any output. Then each task is converted like the single-task
command (resumable shards, skipped videos listed in its metadata.json and report.txt).
"""
from __future__ import annotations

import os
from typing import Sequence

from streamformer_jax.tasks import registry

from data_pipelines.annotations import load_metadata
from data_pipelines.convert.build import Options
from data_pipelines.convert.pipeline import Summary, convert_items


def original_tasks(blocks) -> dict[str, str]:
    """{metadata task key: registered task} for the keys a registered task reads (e.g. TaskVIS -> vis)."""
    by_official = {s.official_name: s.name for s in registry.specs() if s.read_original is not None}
    return {key: by_official[key] for key in blocks if key in by_official}


def convert_metadata(metadata: str, out_dir: str, *, tasks: Sequence[str] | None = None, fmt: str = "arrayrecord",
                     workers: int = 1, opts: Options = Options(), shard_size: int | None = None,
                     num_shards: int | None = None, progress: bool = True, runner: str | None = None,
                     log=print) -> dict[str, Summary]:
    """Convert the tasks of `metadata` (all that a registered task reads, or `tasks`) into `out_dir/<task>`."""
    blocks = load_metadata(metadata)
    known = original_tasks(blocks)
    for key in blocks:
        if key not in known:
            log(f"note: {metadata}: datasets.{key} is not a registered task; left out")
    chosen = list(known.values()) if not tasks else list(tasks)
    missing = [t for t in chosen if t not in known.values()]
    if missing:
        raise ValueError(f"--tasks {','.join(missing)}: not in {metadata} (it has {', '.join(known.values())})")
    read = {}
    for key, task in known.items():  # the file's order, which is the original's mixture order
        if task in chosen:
            read[task] = registry.get(task).read_original(blocks[key])
    summaries = {}
    for task, got in read.items():
        labels = got.labels if got.labels is not None else []
        summaries[task] = convert_items(task, got.items, os.path.join(out_dir, task), labels=labels,
                                        annotations=got.annotations, fmt=fmt, workers=workers, opts=opts,
                                        shard_size=shard_size, num_shards=num_shards, progress=progress,
                                        runner=runner)
    return summaries
