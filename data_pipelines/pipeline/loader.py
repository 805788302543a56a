"""Builds the per-task grain chains, mixes them, and turns host batches into global jax.Arrays.

Chain per task (each a random-access `grain.MapDataset`, so nothing is read before it is needed):

  records -> samples (one per annotation row, `samples.SampleSource`) -> TaskStream (the original sampler's
  per-epoch shuffles of the balanced samples) -> random_map(decode + sample + augment) -> [host::hosts]
  -> batch(B / hosts)

then `CycleMixMapDataset` over the mixture plan's epoch order (`mixture.original_plan`: one task per micro-batch,
the original's cycles) -> to_iter_dataset -> mp_prefetch (workers do the decoding).
`random_map` sits before the per-host slice so its per-example RNG is keyed by the position in the global
stream: the same example gets the same crop whatever the number of hosts or worker processes. It is still
evaluated lazily, inside the worker that reads that element.

The iterator state is {"next_batch": k}: resuming rebuilds the chain over batches [k:], which is exact because
every batch is a pure function of its index, and it does not depend on the worker count.
"""
from __future__ import annotations

import os
import zlib
from typing import Any, Mapping, Sequence

import grain
import jax
import numpy as np
from absl import flags
from jax.sharding import Mesh

from data_pipelines.pipeline import label_tables, mixture, samples, transforms
from data_pipelines.pipeline.builtin import build_builtin_dataset
from data_pipelines.records import sources
from streamformer_jax.sharding import batch_sharding
from streamformer_jax.tasks import registry


def derive_seed(seed: int, *names: str | int) -> int:
    """A 32-bit seed for one stage of one task, stable under changes elsewhere in the chain."""
    words = [int(seed)] + [zlib.crc32(str(n).encode()) for n in names]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint32)[0])


def task_dataset(
    source: Any,
    transform: grain.transforms.RandomMap,
    *,
    seed: int,
    host_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    train: bool = True,
    copies: int = 1,
    epoch_batches: int | None = None,
) -> grain.MapDataset:
    """Batches of one task for this host. `source`: records or samples (`samples.SampleSource`). Training draws
    the samples epoch after epoch (`samples.TaskStream`: `copies` = the balancing's replication, `epoch_batches`
    = global batches per epoch, the rest of each epoch's permutation dropped; None: batches straddle epochs);
    evaluation reads each sample once, unshuffled (its last, partial batch is kept)."""
    ds = grain.MapDataset.source(source)
    if train:
        global_batch = host_batch_size * process_count
        ds = samples.TaskStream(ds, seed=derive_seed(seed, transform.task, "shuffle"), copies=copies,
                        epoch_elements=None if epoch_batches is None else epoch_batches * global_batch)
    ds = ds.random_map(transform, seed=derive_seed(seed, transform.task, "augment"))
    ds = ds[process_index::process_count]
    return ds.batch(host_batch_size, drop_remainder=train)


def mixed_dataset(task_datasets: Mapping[str, grain.MapDataset], cycle: Sequence[str]) -> grain.MapDataset:
    return mixture.CycleMixMapDataset(task_datasets, cycle)


def _ensure_absl_flags_parsed() -> None:
    """grain's mp_prefetch reads an absl flag when it starts workers; outside `absl.app.run` nobody parsed the
    flags and that read raises. Marking them parsed keeps every flag at its default."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class BatchIterator(grain.DatasetIterator):
    """Host batches from a `MapDataset` of batches, with worker processes and a checkpointable position.

    A `grain.DatasetIterator` whose state is a small JSON dict, so `grain.checkpoint.CheckpointHandler` (and
    orbax, through it) saves and restores it like grain's own iterators.
    """

    def __init__(
        self,
        dataset: grain.MapDataset,
        *,
        worker_count: int = 0,
        worker_buffer_size: int = 2,
        read_threads: int = 1,
        read_buffer_size: int = 2,
        start: int = 0,
    ):
        super().__init__()
        self._dataset = dataset
        self._mp = grain.MultiprocessingOptions(num_workers=worker_count, per_worker_buffer_size=worker_buffer_size)
        self._read = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=read_buffer_size)
        self._next = start
        self._it = None

    def _open(self):
        ds = self._dataset[self._next :].to_iter_dataset(self._read)
        if self._mp.num_workers > 0:
            _ensure_absl_flags_parsed()
            ds = ds.mp_prefetch(self._mp)
        return iter(ds)

    def __next__(self) -> dict:
        if self._it is None:
            self._it = self._open()
        batch = next(self._it)
        self._next += 1
        # Worker batches arrive in shared memory; a plain copy frees the segment now rather than whenever the
        # caller drops the batch (or never, if it is still referenced at interpreter exit).
        return {k: np.array(v) if isinstance(v, np.ndarray) else v for k, v in batch.items()}

    def start_prefetch(self) -> None:
        """Start workers now (e.g. right after restoring), to overlap their start-up with other work."""
        if self._it is None:
            self._it = self._open()
            self._it.start_prefetch()

    def get_state(self) -> dict:
        return {"next_batch": self._next}

    def set_state(self, state: Mapping[str, int]) -> None:
        self.close()
        self._next = int(state["next_batch"])

    def close(self) -> None:
        if self._it is not None and hasattr(self._it, "close"):
            self._it.close()
        self._it = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def to_global_batch(host_batch: Mapping[str, Any], mesh: Mesh, data_axes: Sequence[str]) -> dict[str, Any]:
    """Numeric arrays become global jax.Arrays (this host's rows are its share of the batch); strings (task,
    captions, ids) stay host-local numpy, for the text tokenizer and logging."""
    sharding = batch_sharding(mesh, axes=data_axes)
    out = {}
    for key, value in host_batch.items():
        if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
            out[key] = jax.make_array_from_process_local_data(sharding, value)
        else:
            out[key] = value
    return out


class GlobalBatchIterator(grain.DatasetIterator):
    """Wraps a `BatchIterator`; yields batches of global jax.Arrays on `mesh`. Same state as the wrapped one."""

    def __init__(self, host_iterator: BatchIterator, mesh: Mesh, data_axes: Sequence[str] = ("data",)):
        super().__init__()
        self.host_iterator = host_iterator
        self._mesh, self._axes = mesh, tuple(data_axes)

    def __next__(self) -> dict:
        return to_global_batch(next(self.host_iterator), self._mesh, self._axes)

    def start_prefetch(self) -> None:
        self.host_iterator.start_prefetch()

    def get_state(self) -> dict:
        return self.host_iterator.get_state()

    def set_state(self, state) -> None:
        self.host_iterator.set_state(state)

    def close(self) -> None:
        self.host_iterator.close()


# ------------------------------------------------------------------------------------------- from a config
def task_options(config, task: str, train: bool = True) -> transforms.ClipOptions:
    t = config.tasks[task]
    datasets = label_tables.dataset_order(directory_metadata(t.data_dir)) if t.get("data_dir") else ()
    return transforms.ClipOptions(
        num_frames=config.num_frames, size=config.image_size, train=train, flip=t.flip, crop=t.crop,
        rrc_scale=tuple(t.rrc_scale), rrc_ratio=tuple(t.rrc_ratio), scale_jitter=tuple(t.scale_jitter),
        clip_seconds=t.clip_seconds, patch_size=t.patch_size,
        randaugment=t.randaugment, randaugment_interpolation=t.randaugment_interpolation,
        # Optional keys (VIS only): COCO pseudo-video rotation range in degrees (0 = off); target resolution.
        pseudo_video_max_angle=float(t.get("pseudo_video_max_angle", transforms.ClipOptions.pseudo_video_max_angle)),
        mask_resolution=str(t.get("mask_resolution", transforms.ClipOptions.mask_resolution)), datasets=datasets,
    )


def task_dirs(config) -> dict[str, str]:
    """{task: record directory} for the tasks in the mix (the built-in dataset when `builtin_dir` is set)."""
    if config.get("builtin_dir"):
        return {k: str(v) for k, v in build_builtin_dataset(config.builtin_dir).items()}
    return {name: t.data_dir for name, t in config.tasks.items() if t.data_dir}


def directory_metadata(directory) -> dict:
    """A record directory's metadata.json, or {} when it has none (a directory of bare shards)."""
    return sources.load_metadata(directory) if os.path.exists(os.path.join(directory, "metadata.json")) else {}


def task_samples(directory) -> samples.SampleSource:
    """The samples of a converted task directory (`samples.SampleSource`: one per annotation row)."""
    meta = directory_metadata(directory)
    records = sources.open_source(directory)
    return samples.SampleSource(records, record_samples(meta, len(records), directory))


def record_samples(meta, num_records: int, directory="") -> list[int] | None:
    """Samples per record from metadata.json (None: one each). Conversions before schema version 2 did not
    count them; their multi-row tasks must be converted again."""
    if "record_samples" in meta:
        return list(meta["record_samples"])
    task = meta.get("task")
    if meta and int(meta.get("schema_version", 0)) < 2 and task in registry.names() \
            and registry.get(task).record_samples is not None:
        raise ValueError(f"{directory}: converted before samples were counted (schema version "
                         f"{meta.get('schema_version')}); run the converter again to get one sample per annotation row")
    return None


def num_samples(directory) -> int:
    """The task's dataset length as the original counts it (metadata.json `num_samples`)."""
    meta = directory_metadata(directory)
    if "num_samples" in meta:
        return int(meta["num_samples"])
    return len(task_samples(directory))


def mixture_plan(config, dirs: Mapping[str, Any] | None = None) -> mixture.MixturePlan:
    """The run's mixture (`mixture.MixturePlan`): the original sampler's epochs over the tasks' samples, or the
    explicit `task_weights` cycle."""
    dirs = task_dirs(config) if dirs is None else dirs
    sizes = {name: num_samples(d) for name, d in dirs.items()}
    if dict(config.task_weights):
        return mixture.weighted_plan(sizes, dict(config.task_weights), tuple(config.task_order))
    return mixture.original_plan(sizes, int(config.global_batch_size), tuple(config.task_order),
                                 float(config.balance_scale))


def build_train_dataset(config, process_index: int | None = None, process_count: int | None = None):
    """The mixed training `MapDataset` of host batches for this process (see module docstring)."""
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    if config.global_batch_size % pc:
        raise ValueError(f"global_batch_size {config.global_batch_size} is not divisible by {pc} processes")
    dirs = task_dirs(config)
    plan = mixture_plan(config, dirs)
    per_task = {}
    for name in sorted(plan.tasks):
        options = task_options(_with_dir(config, name, dirs[name]), name)
        per_task[name] = task_dataset(
            task_samples(dirs[name]), transforms.make_transform(name, options), seed=config.seed,
            host_batch_size=config.global_batch_size // pc, process_index=pi, process_count=pc,
            copies=plan.copies[name], epoch_batches=None if plan.batches is None else plan.batches[name])
    return mixed_dataset(per_task, plan.order)


def _with_dir(config, task: str, directory):
    """`config` with the task's data directory filled in (the built-in dataset's come from `task_dirs`)."""
    if config.tasks[task].get("data_dir") == str(directory):
        return config
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.tasks[task].data_dir = str(directory)
    return config


def make_train_iterator(config, mesh: Mesh | None = None, start: int = 0):
    """Batches for training: host numpy batches, or global jax.Arrays on `mesh` when given."""
    it = BatchIterator(
        build_train_dataset(config), worker_count=config.worker_count, worker_buffer_size=config.worker_buffer_size,
        read_threads=config.read_threads, read_buffer_size=config.read_buffer_size, start=start,
    )
    return GlobalBatchIterator(it, mesh, config.data_axes) if mesh is not None else it
