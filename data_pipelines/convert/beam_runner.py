"""Apache Beam execution of pending shards (optional: ``pip install streamformer_jax[beam]``).

One Beam element = one whole shard, built and written atomically by ``pipeline.write_shard_job``; the driver
then reads the completion markers and writes metadata.json exactly as the local runner does, so both runners
give the same bytes. With a distributed runner, ``out`` must be a filesystem every worker can write.
"""
from __future__ import annotations

import functools

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from data_pipelines.convert.pipeline import write_shard_job


def run_jobs(jobs: list, *, out_dir: str, fmt: str, task: str, opts, video_root: str, runner: str,
             workers: int = 1) -> None:
    if not jobs:
        return
    flags = [f"--runner={runner}"]
    if runner == "DirectRunner" and workers > 1:
        flags += [f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"]
    write = functools.partial(write_shard_job, out_dir=out_dir, fmt=fmt, task=task, opts=opts,
                              video_root=video_root)
    with beam.Pipeline(options=PipelineOptions(flags)) as p:
        _ = (p
             | "Shards" >> beam.Create(jobs, reshuffle=True)
             | "WriteShard" >> beam.Map(write)
             | "Names" >> beam.Map(lambda marker: marker["file"]))
