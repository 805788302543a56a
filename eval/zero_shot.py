"""Zero-shot evaluation of the pretraining tasks: retrieval, temporal grounding, temporal action localization.

The model is the pretraining wrapper (backbone + task heads + frozen SigLIP text tower, `eval.pretrained`); the
inputs are converted records (`data_pipelines.convert`) or the original annotation files with their videos; the
metrics are the original's (`eval.metrics`). The CLIs (`python -m eval.retrieval|grounding|localization`) and
the trainer's periodic evaluation (`eval.pretrain_eval`) call the `evaluate_*` functions here.

Protocol (the original's evaluation settings, spec §6.4-6.6, `datasets/task_*.py` in test mode):

* retrieval: T frames per video, one from each of the T intervals `linspace(0, n, T+1).astype(int)` (the
  interval's middle frame, `(a + b - 1) // 2`, the UMT "middle" rule; videos shorter than T frames give every
  frame once, then the last one repeated); DiDeMo keeps only the first 30 s (`trimmed30s`: n = int(30 fps));
  each frame resized to S x S (bicubic, antialiased, aspect not kept). The video is the last frame's pooled
  vector (the retrieval head's input), compared by cosine similarity with the caption's text embedding.
  Queries: each caption of MSRVTT-style data (with one caption per video this is the 1k-A protocol);
  ActivityNet and DiDeMo are paragraph retrieval: the video's captions joined with spaces are one query.
  Text->video R@K: the rank of the paired video; video->text: the best-ranked caption of the video.
* grounding: T frames `linspace(0, n-1, T).astype(int)` over the whole video, timestamps round(idx / fps, 2)
  (record frames carry their source times), short side resized to S (bilinear) and centre-cropped. Per query,
  the grounding head's per-frame logits s*cos(v_t, u) + b -> `metrics.grounding_results` (sigmoid, windows for
  factors 0.5/0.6/0.7, the original IoU).
* localization: frames as grounding; per frame and class the localization head's s*<n(v_t), E_c> + b with the
  template-mean label embeddings E_c (spec §5.3), sigmoid -> `metrics.localization_segments` -> ActivityNet mAP
  at tIoU 0.5:0.05:0.95 and its average.

Scale-out: every host takes items h, h+H, ...; each batch of clips is split over the host's devices (padded to a
multiple of them); features are gathered across hosts before the metrics. Per-video features are saved to a
cache next to the output as they are computed, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import io
import json
import os
import pathlib
import sys
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from eval import metrics as M

PARAGRAPH_DATASETS = ("ActivityNet", "DiDeMo")  # captions joined into one paragraph query per video
TRIM30_DATASETS = ("DiDeMo",)  # only the first 30 s are used (the original's `trimmed30s`)
TASK_FIELDS = {"retrieval": ("captions",), "grounding": ("captions", "windows"),
               "localization": ("segments", "segment_labels")}


class EvalDataError(ValueError):
    """Unusable evaluation data (reported as one `error:` line)."""


# ----------------------------------------------------------------------------------------------- items
@dataclasses.dataclass
class Frames:
    """A decoded (or decodable) video: frame times, rate, and a decoder for selected frames."""

    times: np.ndarray  # float64 [n] seconds
    fps: float
    duration: float
    decode: Callable[[np.ndarray], list]  # indices -> list of PIL images (RGB)


@dataclasses.dataclass
class EvalItem:
    index: int
    video_id: str
    dataset: str
    source: str  # where the pixels come from (file or record), for error messages
    fields: dict  # captions / windows / segments + segment_labels
    load: Callable[[], Frames]


def _pil_decoder(jpegs: Sequence[bytes]) -> Callable[[np.ndarray], list]:
    from PIL import Image

    def decode(indices):
        out = []
        for i in indices:
            with Image.open(io.BytesIO(jpegs[int(i)])) as img:
                out.append(img.convert("RGB"))
        return out

    return decode


def record_items(directory: str | os.PathLike, task: str, start_index: int = 0) -> list[EvalItem]:
    """Items of one converted task directory (`metadata.json` + shards). Only the metadata is kept in memory;
    a record is read again when its frames are needed."""
    from data_pipelines import schema
    from data_pipelines.pipeline import sources

    source = sources.open_source(directory)
    items = []
    for i in range(len(source)):
        ex = schema.decode_record(source[i])
        if ex["task"] != task:
            raise EvalDataError(f"{directory}: holds {ex['task']!r} records, not {task!r}")
        fields = {k: ex[k] for k in TASK_FIELDS[task]}

        def load(i=i):
            rec = schema.decode_record(source[i])
            times = np.asarray(rec["frame_times"], np.float64)
            duration = float(rec.get("duration") or (times[-1] + 1.0 / max(rec["fps"], 1e-6)))
            return Frames(times, float(rec["fps"]), duration, _pil_decoder(rec["frames"]))

        items.append(EvalItem(start_index + i, ex["video_id"], ex.get("dataset", ""), f"{directory}[{i}]", fields,
                              load))
    return items


def _video_loader(path: str, max_frames: int, short_side: int | None):
    def load():
        from PIL import Image

        from data_pipelines import video

        try:
            times, frames = video.read_video(path, max_frames=max_frames, short_side=short_side)
            info = video.probe(path)
        except video.VideoDecodeError as e:
            raise VideoLoadError(str(e)) from None
        n = len(times)
        fps = video.plan(info, None, max_frames, short_side).fps  # the source rate, lowered for long videos
        duration = info.duration if info.duration > 0 else n / fps
        return Frames(np.asarray(times, np.float64), float(fps), float(duration),
                      lambda idx: [Image.fromarray(frames[int(i)]) for i in idx])

    return load


class VideoLoadError(Exception):
    """One unreadable video: skipped, listed under "failed" and counted."""


def annotation_items(path: str | os.PathLike, task: str, video_root: str | os.PathLike, *,
                     class_names=None, max_frames: int = 1024, short_side: int | None = 256,
                     parse_kwargs: Mapping | None = None) -> list[EvalItem]:
    """Items of an original annotation file (the formats `data_pipelines.annotations` parses); videos are
    decoded when needed, at most `max_frames` frames spread over the whole video (the rate is lowered for
    long videos, as the converter stores them), short side at most `short_side`."""
    from data_pipelines.annotations import grounding, localization, retrieval

    parser = {"retrieval": retrieval, "grounding": grounding, "localization": localization}[task]
    try:
        parsed = parser.parse(path, video_root, classes=class_names, **dict(parse_kwargs or {}))
    except ValueError as e:  # AnnotationError is a ValueError with "FILE:LINE: message"
        raise EvalDataError(str(e)) from None
    items = []
    for i, it in enumerate(parsed):
        fields = dict(it.fields)
        if task == "grounding":
            fields["windows"] = np.asarray(fields["windows"], np.float32).reshape(-1, 2)
        if task == "localization":
            fields["segments"] = np.asarray(fields["segments"], np.float32).reshape(-1, 2)
            fields["segment_labels"] = np.asarray(fields["segment_labels"], np.int32)
        items.append(EvalItem(i, it.video_id, it.dataset, it.source, fields,
                              _video_loader(it.source, max_frames, short_side)))
    return items


def find_items(data: str | os.PathLike, task: str, *, video_root: str | None = None, fmt: str = "auto",
               class_names=None, max_frames: int = 1024, parse_kwargs: Mapping | None = None
               ) -> tuple[list[EvalItem], dict]:
    """Records (a task directory, or a root holding `<task>/`) or an annotation file (+ `video_root`).

    Returns (items, info) where info holds "kind" ("records" | "annotations") and, for records, the
    directory's `metadata.json` (class names)."""
    p = pathlib.Path(data)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or directory")
    if fmt not in ("auto", "records", "annotations"):
        raise EvalDataError(f"--format must be auto, records or annotations, got {fmt!r}")
    if p.is_dir() and fmt != "annotations":
        from data_pipelines.pipeline import sources

        d = p / task if (p / task).is_dir() else p
        meta = sources.metadata(d)
        if meta.get("task") not in (None, task):
            raise EvalDataError(f"{d}: metadata.json says task {meta.get('task')!r}, not {task!r}")
        try:
            items = record_items(d, task)
        except FileNotFoundError as e:
            raise EvalDataError(f"{d}: {e}") from None
        if not items:
            raise EvalDataError(f"{d}: no records")
        return items, {"kind": "records", "metadata": meta, "path": str(d)}
    if p.is_dir():
        raise EvalDataError(f"{p}: a directory; --format annotations needs an annotation file")
    if fmt == "records":
        raise EvalDataError(f"{p}: not a record directory")
    if not video_root:
        raise EvalDataError(f"{p}: an annotation file needs --video-root (the directory holding its videos)")
    return annotation_items(p, task, video_root, class_names=class_names, max_frames=max_frames,
                            parse_kwargs=parse_kwargs), {"kind": "annotations", "path": str(p)}


# -------------------------------------------------------------------------------------------- sampling
def retrieval_indices(n: int, num_frames: int) -> np.ndarray:
    """UMT/StreamFormer "middle" sampling: intervals linspace(0, n, k+1).astype(int) with k = min(T, n), the
    middle frame (a + b - 1) // 2 of each, padded with the last index to T."""
    if n < 1:
        raise ValueError("video has no frames")
    k = min(num_frames, n)
    edges = np.linspace(0, n, k + 1).astype(np.int64)
    idx = (edges[:-1] + edges[1:] - 1) // 2
    return np.concatenate([idx, np.full(num_frames - k, idx[-1], np.int64)])


def uniform_indices(n: int, num_frames: int) -> np.ndarray:
    """The grounding/localization loaders in test mode: np.linspace(0, n - 1, T, dtype=int)."""
    if n < 1:
        raise ValueError("video has no frames")
    return np.linspace(0, n - 1, num_frames).astype(np.int64)


def trimmed_length(frames: Frames, seconds: float = 30.0) -> int:
    """The original's `trimmed30s`: if the video is longer than `seconds`, vlen = int(seconds * fps)."""
    n = len(frames.times)
    if frames.duration > seconds:
        return max(1, min(n, int(seconds * frames.fps)))
    return n


def square_resize(img, size: int) -> np.ndarray:
    """Retrieval's test transform: Resize((S, S)), bicubic with antialiasing (PIL widens the filter when
    shrinking), aspect ratio not kept."""
    from PIL import Image

    if img.size == (size, size):
        return np.asarray(img)
    return np.asarray(img.resize((size, size), Image.BICUBIC))


def short_side_center_crop(img, size: int) -> np.ndarray:
    """Grounding/localization's validation transform: short side -> S (bilinear), centre crop S x S."""
    from PIL import Image

    w, h = img.size
    if min(w, h) != size:
        scale = size / min(w, h)
        w2, h2 = max(size, int(round(w * scale))), max(size, int(round(h * scale)))
        img = img.resize((w2, h2), Image.BILINEAR)
        w, h = w2, h2
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)))


@dataclasses.dataclass
class Clip:
    frames: np.ndarray  # uint8 [T, S, S, 3]
    timestamps: np.ndarray  # float64 [T]
    duration: float


def make_clip(task: str, item: EvalItem, num_frames: int, size: int,
              trim_datasets: Sequence[str] = TRIM30_DATASETS) -> Clip:
    frames = item.load()
    if task == "retrieval":
        n = trimmed_length(frames) if item.dataset in trim_datasets else len(frames.times)
        idx = retrieval_indices(n, num_frames)
        transform = square_resize
    else:
        idx = uniform_indices(len(frames.times), num_frames)
        transform = short_side_center_crop
    uniq, inverse = np.unique(idx, return_inverse=True)
    imgs = frames.decode(uniq)
    pixels = np.stack([transform(im, size) for im in imgs])[inverse]
    return Clip(pixels, np.round(frames.times[idx], 2), frames.duration)


# ------------------------------------------------------------------------------------------------ model
class FeatureRunner:
    """Backbone -> per-frame pooled vectors `pooler_output` [B, T, D] (float32), data-parallel over a mesh."""

    def __init__(self, pretrained, mesh=None):
        import jax
        from flax import nnx

        from streamformer_jax import sharding
        from streamformer_jax.models.streamformer import normalize_pixels

        self.mesh = mesh if mesh is not None else sharding.make_mesh()
        graphdef, _ = nnx.split(pretrained.model.backbone)
        self.update(pretrained)

        def run(state, frames):
            out = nnx.merge(graphdef, state)(normalize_pixels(frames))
            return out["pooler_output"].astype(jax.numpy.float32)

        self._run = jax.jit(run)

    def update(self, pretrained) -> None:
        """Evaluate another model of the same architecture (the compiled program is reused)."""
        from flax import nnx

        from streamformer_jax import sharding

        self.pretrained = pretrained
        self.config = pretrained.model.config
        self._state = sharding.shard_state(nnx.state(pretrained.model.backbone), self.mesh, "dp")

    @property
    def batch_devices(self) -> int:
        import jax

        from streamformer_jax.sharding import BATCH_AXES

        n = int(np.prod([self.mesh.shape[a] for a in BATCH_AXES]))
        return max(1, n // jax.process_count())

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        import jax

        from streamformer_jax.sharding import batch_sharding

        x = jax.make_array_from_process_local_data(batch_sharding(self.mesh, frames.ndim), frames)
        out = self._run(self._state, x)
        rows, seen = [], set()
        for s in sorted(out.addressable_shards, key=lambda s: s.index[0].start or 0):
            start = s.index[0].start or 0
            if start not in seen:  # replicated axes hold the same rows more than once
                seen.add(start)
                rows.append(np.asarray(s.data))
        return np.concatenate(rows).astype(np.float32)


def encode_texts(pretrained, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    from streamformer_jax.text.embeddings import encode_texts as _encode

    return _encode(pretrained.model.text_encoder, pretrained.tokenizer, list(texts), truncation=True,
                   batch_size=batch_size)


def normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


# ---------------------------------------------------------------------------------------- feature pass
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
    """This host's share of `items` (h, h+H, ...) through the backbone; returns the cache holding them."""
    import jax
    from tqdm.auto import tqdm

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

    bar = tqdm(total=len(mine), unit="video", desc=desc or f"{task} features", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    pending: list[tuple[EvalItem, Clip]] = []
    batches = 0

    def flush():
        nonlocal batches
        if not pending:
            return
        frames = np.zeros((batch, num_frames, size, size, 3), np.uint8)
        for k, (_, clip) in enumerate(pending):
            frames[k] = clip.frames
        feats = runner(frames)
        for k, (it, clip) in enumerate(pending):
            cache.feats[it.index], cache.times[it.index] = feats[k], clip.timestamps
            cache.durations[it.index] = clip.duration
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
            from jax.experimental import multihost_utils

            most = int(np.max(multihost_utils.process_allgather(np.asarray([batches], np.int64))))
            for _ in range(most - batches):
                runner(np.zeros((batch, num_frames, size, size, 3), np.uint8))
    finally:
        bar.close()
        cache.save()
    return cache


def _bounded_map(fn, items, workers: int, ahead: int):
    """`map(fn, items)` in order on a thread pool, with at most `ahead` results loaded ahead (bounded memory)."""
    import collections

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
    import jax

    if jax.process_count() == 1:
        return cache.feats, cache.times, cache.durations, cache.failed
    from jax.experimental import multihost_utils

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


# --------------------------------------------------------------------------------------------- metrics
def _by_dataset(items: Sequence[EvalItem], ok: Mapping[int, Any]) -> dict[str, list[EvalItem]]:
    groups: dict[str, list[EvalItem]] = {}
    for it in items:
        if it.index in ok:
            groups.setdefault(it.dataset or "default", []).append(it)
    return groups


def retrieval_metrics(pretrained, items: Sequence[EvalItem], feats: Mapping[int, np.ndarray], *,
                      paragraph_datasets: Sequence[str] = PARAGRAPH_DATASETS, ks=(1, 5, 10)) -> dict:
    out = {}
    for dataset, group in _by_dataset(items, feats).items():
        paragraph = dataset in paragraph_datasets
        texts, owner = [], []
        for j, it in enumerate(group):
            caps = [str(c) for c in it.fields["captions"]]
            if paragraph:
                texts.append(" ".join(caps))
                owner.append(j)
            else:
                texts.extend(caps)
                owner.extend([j] * len(caps))
        if not texts:
            continue
        text = encode_texts(pretrained, texts)
        video = np.stack([feats[it.index][-1] for it in group])  # the last frame's pooled vector
        res = M.retrieval_recall(text, video, np.asarray(owner), ks=ks)
        out[dataset] = {"t2v": res["t2v"], "v2t": res["v2t"], "num_videos": len(group), "num_queries": len(texts),
                        "paragraph": paragraph}
    return out


def grounding_metrics(pretrained, items: Sequence[EvalItem], feats, times, *, method: str = "original") -> dict:
    s, b = pretrained.head_scalars("grounding")
    out = {}
    for dataset, group in _by_dataset(items, feats).items():
        captions, logits, stamps, gts = [], [], [], []
        for it in group:
            for c, w in zip(it.fields["captions"], np.asarray(it.fields["windows"]).reshape(-1, 2)):
                captions.append(str(c))
                stamps.append(times[it.index])
                gts.append((float(w[0]), float(w[1])))
        if not captions:
            continue
        text = normalize(encode_texts(pretrained, captions))
        qi = 0
        for it in group:
            v = normalize(feats[it.index])  # [T, D]
            for _ in range(len(it.fields["captions"])):
                logits.append((s * (v @ text[qi]) + b).astype(np.float32))
                qi += 1
        res = M.grounding_results(logits, stamps, gts, method=method)
        res["num_videos"] = len(group)
        out[dataset] = res
    return out


def dataset_classes(class_names: Sequence[str], dataset: str) -> list[str]:
    """The class table of one dataset. Converted multi-dataset tables list names as "<dataset>/<name>" in
    (dataset, id) order, with per-dataset ids in the records: select that dataset's names and drop the prefix."""
    prefix = f"{dataset}/"
    own = [n[len(prefix):] for n in class_names if dataset and n.startswith(prefix)]
    return own if own else list(class_names)


def localization_metrics(pretrained, items: Sequence[EvalItem], feats, times, durations,
                         class_names: Sequence[str], *, tious: Sequence[float] = M.ACTIVITYNET_TIOUS) -> dict:
    from streamformer_jax.text.embeddings import compute_label_embeddings
    from streamformer_jax.train.templates import TASK_TEMPLATES

    if not class_names:
        raise EvalDataError("localization needs class names (--class-names, the records' metadata.json, or the "
                            "label set recorded in the checkpoint)")
    s, b = pretrained.head_scalars("localization")
    out = {}
    for dataset, group in _by_dataset(items, feats).items():
        names = dataset_classes(class_names, dataset)
        emb = compute_label_embeddings(pretrained.model.text_encoder, pretrained.tokenizer, names,
                                       TASK_TEMPLATES["localization"], batch_size=64).astype(np.float64)
        preds, gts = [], []
        for it in group:
            v = normalize(feats[it.index])
            probs = M.sigmoid(s * (v @ emb.T) + b)  # [T, C]
            for c, st, en, sc in M.localization_segments(probs, times[it.index], durations.get(it.index)):
                preds.append((it.index, c, st, en, sc))
            for (st, en), c in zip(np.asarray(it.fields["segments"]).reshape(-1, 2), it.fields["segment_labels"]):
                gts.append((it.index, int(c), float(st), float(en)))
        if not gts:
            continue
        res = M.localization_map(preds, gts, tious)
        res.pop("per_class")
        res["num_videos"] = len(group)
        res["num_segments"] = len(gts)
        out[dataset] = res
    return out


def fingerprint(*parts) -> str:
    return hashlib.sha1(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:16]


def evaluate(task: str, pretrained, items: Sequence[EvalItem], *, num_frames: int | None = None,
             batch_size: int | None = None, workers: int = 1, progress: bool = True,
             cache_path: pathlib.Path | None = None, cache_key: str = "", class_names: Sequence[str] = (),
             method: str = "original", paragraph_datasets: Sequence[str] = PARAGRAPH_DATASETS,
             trim_datasets: Sequence[str] = TRIM30_DATASETS, runner: FeatureRunner | None = None) -> dict:
    """Features (resumable) then the task's metrics, per dataset. Returns the result dict (JSON-able)."""
    if task not in TASK_FIELDS:
        raise ValueError(f"task must be one of {sorted(TASK_FIELDS)}, got {task!r}")
    runner = runner or FeatureRunner(pretrained)
    t = int(num_frames or runner.config.num_frames)
    cache = FeatureCache(cache_path, fingerprint(task, cache_key, t, len(items), sorted(trim_datasets)))
    cache = compute_features(runner, task, items, num_frames=t, batch_size=batch_size, workers=workers,
                             progress=progress, cache=cache, trim_datasets=trim_datasets)
    feats, times, durations, failed = gather_features(cache, len(items))
    if task == "retrieval":
        datasets = retrieval_metrics(pretrained, items, feats, paragraph_datasets=paragraph_datasets)
    elif task == "grounding":
        datasets = grounding_metrics(pretrained, items, feats, times, method=method)
    else:
        datasets = localization_metrics(pretrained, items, feats, times, durations, class_names)
    return {"task": task, "num_frames": t, "num_items": len(items), "num_evaluated": len(feats),
            "num_failed": len(failed), "datasets": datasets,
            "failed": [{"item": items[i].source, "error": e} for i, e in sorted(failed.items())]}


def flat_summary(task: str, result: Mapping) -> dict[str, float]:
    """Headline numbers as one flat dict (for logs): retrieval t2v/v2t R@1,5,10; grounding R@0.3/0.5/0.7 and
    mIoU per factor; localization average mAP and mAP@0.5."""
    out = {}
    for ds, r in result.get("datasets", {}).items():
        if task == "retrieval":
            for side in ("t2v", "v2t"):
                for k in ("R@1", "R@5", "R@10"):
                    if k in r[side]:
                        out[f"{task}/{ds}/{side}_{k}"] = r[side][k]
        elif task == "grounding":
            for key, res in r.items():
                if isinstance(res, dict):
                    for m, v in res.items():
                        out[f"{task}/{ds}/{key}/{m}"] = v
        else:
            out[f"{task}/{ds}/average_mAP"] = r["average_mAP"]
            out[f"{task}/{ds}/mAP@0.5"] = r["mAP@0.5"]
    return out


def write_json(path: str | os.PathLike, obj) -> pathlib.Path:
    """Atomic write (process 0 only in multi-host runs: every host holds the same gathered result)."""
    import jax

    path = pathlib.Path(path)
    if jax.process_index() != 0:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_plain) + "\n")
    os.replace(tmp, path)
    return path


def _plain(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(type(v).__name__)
