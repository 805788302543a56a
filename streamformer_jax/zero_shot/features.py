"""The feature pass of zero-shot evaluation: every item's test clip through the backbone, sharded over devices
and hosts, resumable.

Every host takes items h, h+H, ...; each batch of clips is split over the host's devices (padded to a multiple
of them, and to the same number of batches on every host); the per-frame pooled vectors are gathered across
hosts before the metrics. Per-video features are saved to a cache as they are computed, so an interrupted run
resumes where it stopped.
"""
from __future__ import annotations

import collections
import concurrent.futures
import json
import os
import pathlib
import sys
from typing import Sequence

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from streamformer_jax import sharding
from streamformer_jax.models.streamformer import normalize_pixels
from streamformer_jax.zero_shot.clips import TRIM30_DATASETS, Clip, make_clip
from streamformer_jax.zero_shot.items import EvalItem, VideoLoadError


class FeatureRunner:
    """Backbone -> per-frame pooled vectors `pooler_output` [B, T, D] (float32), data-parallel over a mesh."""

    def __init__(self, backbone: nnx.Module, mesh: jax.sharding.Mesh | None = None):
        self.mesh = mesh if mesh is not None else sharding.make_mesh()
        graphdef, _ = nnx.split(backbone)
        self.update(backbone)

        def run(state, frames):
            out = nnx.merge(graphdef, state)(normalize_pixels(frames))
            return out["pooler_output"].astype(jax.numpy.float32)

        self._run = jax.jit(run)

    def update(self, backbone: nnx.Module) -> None:
        """Evaluate another backbone of the same architecture (the compiled program is reused)."""
        self.config = backbone.config
        self._state = sharding.shard_state(nnx.state(backbone), self.mesh, "dp")

    @property
    def batch_devices(self) -> int:
        return sharding.batch_devices(self.mesh)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """This host's clips uint8 [B, T, S, S, 3] (B a multiple of `batch_devices`) -> [B, T, D]."""
        out = self._run(self._state, sharding.from_host_rows(frames, self.mesh))
        return sharding.host_rows(out).astype(np.float32)


class FeatureCache:
    """Per-host features of finished items, saved atomically (npz) so a rerun continues where it stopped."""

    def __init__(self, path: pathlib.Path | None, fingerprint: str):
        self.path, self.fingerprint = path, fingerprint
        self.feats: dict[int, np.ndarray] = {}
        self.times: dict[int, np.ndarray] = {}
        self.durations: dict[int, float] = {}
        self.failed: dict[int, str] = {}
        if path is not None and path.is_file():
            try:
                with np.load(path, allow_pickle=False) as z:
                    if str(z["fingerprint"]) == fingerprint:
                        for k, i in enumerate(z["index"].tolist()):
                            self.feats[i], self.times[i] = z["feats"][k], z["times"][k]
                            self.durations[i] = float(z["durations"][k])
                        self.failed = {int(k): v for k, v in json.loads(str(z["failed"])).items()}
            except (OSError, ValueError, KeyError):
                pass  # an unreadable cache is recomputed

    def done(self, index: int) -> bool:
        return index in self.feats or index in self.failed

    def add(self, item: EvalItem, feats: np.ndarray, clip: Clip) -> None:
        self.feats[item.index], self.times[item.index] = feats, clip.timestamps
        self.durations[item.index] = clip.duration

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        order = sorted(self.feats)
        tmp = self.path.with_name(self.path.name + ".tmp.npz")
        np.savez(tmp, fingerprint=self.fingerprint, index=np.asarray(order, np.int64),
                 feats=np.stack([self.feats[i] for i in order]) if order else np.zeros((0, 0, 0), np.float32),
                 times=np.stack([self.times[i] for i in order]) if order else np.zeros((0, 0)),
                 durations=np.asarray([self.durations[i] for i in order], np.float64),
                 failed=json.dumps({str(k): v for k, v in self.failed.items()}))
        os.replace(tmp, self.path)


def compute_features(runner: FeatureRunner, task: str, items: Sequence[EvalItem], *, num_frames: int,
                     batch_size: int | None = None, workers: int = 1, progress: bool = True,
                     cache: FeatureCache | None = None, save_every: int = 20,
                     trim_datasets: Sequence[str] = TRIM30_DATASETS, desc: str = "") -> FeatureCache:
    """This host's share of `items` (h, h+H, ...) through the backbone; returns the cache holding them.
    `batch_size`: clips per batch per host (default 2 per device, rounded up to a multiple of the devices)."""
    cache = cache or FeatureCache(None, "")
    size = runner.config.image_size
    bd = runner.batch_devices
    batch = max(bd, ((batch_size or 2 * bd) + bd - 1) // bd * bd)
    mine = [it for it in items[jax.process_index()::jax.process_count()] if not cache.done(it.index)]

    def load(it):
        try:
            return it, make_clip(task, it, num_frames, size, trim_datasets), None
        except (VideoLoadError, OSError, ValueError) as e:
            return it, None, f"{it.source}: {e}" if it.source not in str(e) else str(e)

    def blank():
        return np.zeros((batch, num_frames, size, size, 3), np.uint8)

    bar = tqdm(total=len(mine), unit="video", desc=desc or f"{task} features", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    pending: list[tuple[EvalItem, Clip]] = []
    batches = 0

    def flush():
        nonlocal batches
        if not pending:
            return
        frames = blank()
        for k, (_, clip) in enumerate(pending):
            frames[k] = clip.frames
        feats = runner(frames)
        for k, (it, clip) in enumerate(pending):
            cache.add(it, feats[k], clip)
        bar.update(len(pending))
        pending.clear()
        batches += 1
        if batches % save_every == 0:
            cache.save()

    try:
        for it, clip, err in _bounded_map(load, mine, max(1, workers), ahead=2 * batch):
            if err is not None:
                cache.failed[it.index] = err
                bar.update(1)
                continue
            pending.append((it, clip))
            if len(pending) == batch:
                flush()
        flush()
        if jax.process_count() > 1:  # every host runs the (global) program equally often: pad with blank batches
            most = int(np.max(multihost_utils.process_allgather(np.asarray([batches], np.int64))))
            for _ in range(most - batches):
                runner(blank())
    finally:
        bar.close()
        cache.save()
    return cache


def _bounded_map(fn, items, workers: int, ahead: int):
    """`map(fn, items)` in order on a thread pool, with at most `ahead` results loaded ahead (bounded memory)."""
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        queue: collections.deque = collections.deque()
        for item in items:
            queue.append(pool.submit(fn, item))
            if len(queue) >= ahead:
                yield queue.popleft().result()
        while queue:
            yield queue.popleft().result()


def gather_features(cache: FeatureCache, num_items: int) -> tuple[dict, dict, dict, dict]:
    """Every host's features -> (feats, times, durations, failed) on every host (identity on one host)."""
    if jax.process_count() == 1:
        return cache.feats, cache.times, cache.durations, cache.failed
    order = sorted(cache.feats)
    shape = next(iter(cache.feats.values())).shape if order else None
    shapes = multihost_utils.process_allgather(np.asarray(shape or (0, 0), np.int64))
    t, d = (int(x) for x in np.max(np.asarray(shapes), axis=0))
    m = int(np.max(multihost_utils.process_allgather(np.asarray([len(order)], np.int64))))
    idx = np.full(m, -1, np.int64)
    f = np.zeros((m, t, d), np.float32)
    ts = np.zeros((m, t), np.float64)
    du = np.zeros(m, np.float64)
    for k, i in enumerate(order):
        idx[k], f[k], ts[k], du[k] = i, cache.feats[i], cache.times[i], cache.durations[i]
    all_idx = np.asarray(multihost_utils.process_allgather(idx)).reshape(-1)
    all_f = np.asarray(multihost_utils.process_allgather(f)).reshape(-1, t, d)
    all_t = np.asarray(multihost_utils.process_allgather(ts)).reshape(-1, t)
    all_d = np.asarray(multihost_utils.process_allgather(du)).reshape(-1)
    failed_local = np.zeros(num_items, bool)
    failed_local[list(cache.failed)] = True
    failed_any = np.asarray(multihost_utils.process_allgather(failed_local)).any(axis=0)
    feats = {int(i): all_f[k] for k, i in enumerate(all_idx) if i >= 0}
    times = {int(i): all_t[k] for k, i in enumerate(all_idx) if i >= 0}
    durs = {int(i): float(all_d[k]) for k, i in enumerate(all_idx) if i >= 0}
    failed = {int(i): cache.failed.get(int(i), "unreadable (reported on another host)")
              for i in np.flatnonzero(failed_any)}
    return feats, times, durs, failed
