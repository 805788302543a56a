"""The conversion driver: annotations -> items -> records (in worker processes) -> shards + metadata.

Determinism: items keep annotation order, shard k always holds the same item range, and records are written
in item order (``imap`` is ordered), so the output does not depend on ``workers``.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import pickle
from typing import Iterable, Iterator

from tqdm import tqdm

from streamformer_jax.tasks import registry

from data_pipelines.annotations import Item, class_names_for, load_class_names, parse_annotations
from data_pipelines.convert import tfds_info
from data_pipelines.convert.build import Options, Result, run_item
from data_pipelines.records import schema, shards


WINDOW_PER_WORKER = 16  # records in flight per worker process


@dataclasses.dataclass
class Summary:
    num_annotations: int
    num_examples: int
    skipped: list[dict]
    out_dir: str
    resumed_shards: int
    num_samples: int = 0

    def line(self) -> str:
        return (f"wrote {self.num_examples} of {self.num_annotations} examples ({self.num_samples} samples) to "
                f"{self.out_dir} ({len(self.skipped)} skipped, {self.resumed_shards} shards reused)")


def _fingerprint(task: str, fmt: str, opts: Options, items: list[Item]) -> str:
    """Identifies a shard's inputs, so a re-run with other inputs or options rebuilds instead of reusing."""
    h = hashlib.sha256()
    h.update(pickle.dumps((schema.SCHEMA_VERSION, task, fmt, dataclasses.astuple(opts)), protocol=4))
    for it in items:
        h.update(pickle.dumps(dataclasses.astuple(it), protocol=4))
    return h.hexdigest()


def _rel(path: str, root: str) -> str:
    if not root:
        return path
    rel = os.path.relpath(path, root)
    return path if rel.startswith("..") else rel


def _results(items: list[Item], task: str, opts: Options, workers: int) -> Iterator[Result]:
    work = functools.partial(run_item, task=task, opts=opts)
    if workers <= 1:
        yield from map(work, items)
        return
    # spawn: safe even when the parent has threads (tqdm, JAX); workers only import numpy/av/protobuf.
    ctx = multiprocessing.get_context("spawn")
    window = WINDOW_PER_WORKER * workers
    with ctx.Pool(workers) as pool:
        # imap in windows: one slow (long) video cannot make the finished records behind it pile up in memory.
        for start in range(0, len(items), window):
            yield from pool.imap(work, items[start:start + window], chunksize=1)


def _load_marker(path: str, fingerprint: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return None
    return marker if marker.get("fingerprint") == fingerprint else None


def convert(task: str, annotations: str, video_root: str, out_dir: str, *, class_names: str | None = None,
            fmt: str = "arrayrecord", workers: int = 1, opts: Options = Options(),
            shard_size: int | None = None, num_shards: int | None = None, progress: bool = True,
            subset: str | None = None, dataset: str | None = None, runner: str | None = None) -> Summary:
    """Convert one annotation file. Raises AnnotationError for malformed annotations (before any output).

    ``runner`` (e.g. "DirectRunner") runs the pending shards as an Apache Beam pipeline instead of the local
    process pool (needs the ``beam`` extra); the output is the same bytes.
    """
    registry.get(task)  # an unknown task is an error before any output
    if fmt not in shards.FORMATS:
        raise ValueError(f"format must be one of {shards.FORMATS}, got {fmt!r}")
    classes = load_class_names(class_names) if class_names else None
    items = parse_annotations(task, annotations, video_root, classes, subset=subset, dataset=dataset)
    names = class_names_for(task, annotations, classes, subset=subset)
    return convert_items(task, items, out_dir, labels=names, annotations=[annotations], video_root=video_root,
                         fmt=fmt, workers=workers, opts=opts, shard_size=shard_size, num_shards=num_shards,
                         progress=progress, runner=runner)


def convert_items(task: str, items: list[Item], out_dir: str, *, labels, annotations: list[str],
                  video_root: str | dict | None = None, fmt: str = "arrayrecord", workers: int = 1,
                  opts: Options = Options(), shard_size: int | None = None, num_shards: int | None = None,
                  progress: bool = True, runner: str | None = None) -> Summary:
    """Convert parsed items into ``out_dir`` (shards, metadata.json, report.txt). ``labels``: the label table
    (names by id), per-dataset tables ``{dataset: names by id}``, or [] (caption tasks). ``video_root``: what
    skipped paths are reported relative to (a single root; None or per-dataset roots: as resolved)."""
    video_root = video_root if isinstance(video_root, str) else ""
    os.makedirs(os.path.join(out_dir, shards.PROGRESS_DIR), exist_ok=True)
    shards.remove_stale_temps(out_dir)
    n_shards = shards.num_shards_for(len(items), shard_size, num_shards)
    bounds = shards.shard_bounds(len(items), n_shards)
    plan = []  # (shard index, file name, items, fingerprint, marker or None)
    for k, (a, b) in enumerate(bounds):
        name = shards.shard_name(task, fmt, k, n_shards)
        fp = _fingerprint(task, fmt, opts, items[a:b])
        marker_path = os.path.join(out_dir, shards.PROGRESS_DIR, name + ".json")
        marker = _load_marker(marker_path, fp) if os.path.exists(os.path.join(out_dir, name)) else None
        plan.append((k, name, items[a:b], fp, marker))

    if runner:
        markers = _run_beam(plan, out_dir, fmt, task, opts, video_root, runner, workers)
        return _finish(out_dir, task, fmt, annotations, labels, opts, items, markers,
                       resumed=sum(m is not None for *_, m in plan))
    todo = [it for _, _, its, _, marker in plan if marker is None for it in its]
    done_items = len(items) - len(todo)
    bar = tqdm(total=len(items), initial=done_items, desc=f"convert {task}", unit="video", disable=not progress,
               dynamic_ncols=True)
    results = _results(todo, task, opts, workers)
    markers, tally = [], collections.Counter(written=0, skipped=0)
    try:
        for k, name, shard_items, fp, marker in plan:
            if marker is None:
                marker = _write_shard(out_dir, name, fmt, task, shard_items, results, fp, video_root, bar, tally)
            markers.append(marker)
    finally:
        results.close()  # stops the pool if a shard failed half-way
        bar.close()
    return _finish(out_dir, task, fmt, annotations, labels, opts, items, markers,
                   resumed=sum(m is not None for *_, m in plan))


def write_shard_job(job: tuple, out_dir: str, fmt: str, task: str, opts: Options, video_root: str) -> dict:
    """Build one whole shard in this process (the unit of work of the Beam runner). ``job`` is
    ``(name, items, fingerprint)``; returns the completion marker, also written to ``_progress/``."""
    name, shard_items, fingerprint = job
    results = (run_item(item, task, opts) for item in shard_items)
    bar = tqdm(disable=True)
    return _write_shard(out_dir, name, fmt, task, shard_items, results, fingerprint, video_root, bar,
                        collections.Counter())


def _run_beam(plan, out_dir, fmt, task, opts, video_root, runner, workers) -> list[dict]:
    from data_pipelines.convert.beam_runner import run_jobs  # optional dependency (apache_beam)

    jobs = [(name, its, fp) for _, name, its, fp, marker in plan if marker is None]
    run_jobs(jobs, out_dir=out_dir, fmt=fmt, task=task, opts=opts, video_root=video_root, runner=runner,
             workers=workers)
    markers = []
    for _, name, _, fp, marker in plan:
        marker = marker or _load_marker(os.path.join(out_dir, shards.PROGRESS_DIR, name + ".json"), fp)
        if marker is None:
            raise RuntimeError(f"the Beam pipeline finished without writing shard {name}")
        markers.append(marker)
    return markers


def _write_shard(out_dir, name, fmt, task, shard_items, results: Iterator[Result], fingerprint, video_root,
                 bar, tally: collections.Counter) -> dict:
    spec = registry.get(task)
    skipped, counts, frames, record_samples = [], collections.Counter(), 0, []
    datasets: dict[str, collections.Counter] = {}
    with shards.ShardWriter(os.path.join(out_dir, name), fmt) as writer:
        for item in shard_items:
            res = next(results)
            n = spec.samples_in(item.fields) if item.problem is None else 0
            ds = datasets.setdefault(item.dataset, collections.Counter(videos=0, samples=0, skipped=0,
                                                                       skipped_samples=0))
            if res.data is None:
                skipped.append({"path": _rel(item.source, video_root), "video_id": item.video_id,
                                "dataset": item.dataset, "reason": res.reason})
                ds.update(skipped=1, skipped_samples=n)
            else:
                writer.write(res.data)
                frames += res.num_frames
                counts.update(spec.counts(item.fields))
                record_samples.append(n)
                ds.update(videos=1, samples=n)
            tally["skipped" if res.data is None else "written"] += 1
            bar.set_postfix(tally, refresh=False)
            bar.update(1)
    counts["frames"] = frames
    marker = {"file": name, "num_examples": writer.count, "num_annotations": len(shard_items),
              "skipped": skipped, "counts": dict(counts), "fingerprint": fingerprint,
              "record_samples": record_samples, "datasets": {k: dict(v) for k, v in datasets.items()}}
    shards.write_json(os.path.join(out_dir, shards.PROGRESS_DIR, name + ".json"), marker)
    return marker


def _finish(out_dir, task, fmt, annotations, labels, opts, items, markers: Iterable[dict], resumed) -> Summary:
    markers = list(markers)
    skipped = [s for m in markers for s in m["skipped"]]
    counts, datasets = collections.Counter(), {}
    for m in markers:
        counts.update(m["counts"])
        for ds, c in m["datasets"].items():
            datasets.setdefault(ds, collections.Counter()).update(c)
    record_samples = [n for m in markers for n in m["record_samples"]]
    num_examples = sum(m["num_examples"] for m in markers)
    per_dataset = isinstance(labels, dict)
    names = [] if per_dataset else list(labels)
    meta = {
        "schema_version": schema.SCHEMA_VERSION,
        "task": task,
        "format": fmt,
        "annotations": [os.path.basename(a) for a in annotations] if len(annotations) > 1
        else os.path.basename(annotations[0]),
        "num_annotations": len(items),
        "num_examples": num_examples,
        # The original's dataset length for this task (one sample per annotation row), of the converted records.
        "num_samples": int(sum(record_samples)),
        "num_skipped": len(skipped),
        "skipped": skipped,
        "counts": dict(sorted(counts.items())),
        # Per source dataset: converted videos (or images), their samples, skipped videos and their samples.
        "datasets": {ds: dict(sorted(c.items())) for ds, c in datasets.items()},
        "class_names": names,
        **({"label_tables": {ds: list(t) for ds, t in labels.items()}} if per_dataset else {}),
        **({"record_samples": record_samples} if any(n != 1 for n in record_samples) else {}),
        "options": dataclasses.asdict(opts),
        "shards": [shards.shard_entry(m["file"], m["num_examples"], fmt) for m in markers],
    }
    shards.write_json(os.path.join(out_dir, "metadata.json"), meta)
    # tfds metadata last, from the same markers: a resumed run rewrites it like metadata.json.
    tfds_info.write(out_dir, task, fmt, [m["file"] for m in markers], [m["num_examples"] for m in markers],
                    class_names=names,
                    description=f"StreamFormer {task} records converted from {meta['annotations']} "
                                f"by data_pipelines.convert (schema_version {schema.SCHEMA_VERSION}).")
    summary = Summary(len(items), num_examples, skipped, out_dir, resumed, meta["num_samples"])
    # No paths or run-specific numbers in the report: same input -> same bytes, wherever it was written.
    head = (f"{task}: wrote {num_examples} of {len(items)} examples, {meta['num_samples']} samples "
            f"({len(skipped)} skipped)")
    lines = [head] + [f"SKIPPED {s['path']}" + (f" ({s['dataset']})" if s.get("dataset") else "")
                      + f": {s['reason']}" for s in skipped]
    shards.write_text(os.path.join(out_dir, "report.txt"), "\n".join(lines) + "\n")
    return summary
