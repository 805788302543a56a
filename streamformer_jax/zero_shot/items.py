"""What zero-shot evaluation reads: one `EvalItem` per video, from converted records or from an original
annotation file with its videos.

An item holds the task's annotation fields (captions / windows / segments + segment_labels) and a loader for its
frames (`Frames`); the pixels are read only when the feature pass reaches the item, so a large test set costs
only its annotations in memory.
"""
from __future__ import annotations

import dataclasses
import io
import os
import pathlib
from typing import Callable, Mapping, Sequence

import numpy as np
from PIL import Image

from data_pipelines import annotations
from data_pipelines.records import schema, sources
from streamformer_jax import video

# The annotation fields each zero-shot task reads from a record or an annotation item, and those it uses when
# present (retrieval: each caption's annotation row, DiDeMo's 30 s trim; localization: a row's several windows).
TASK_FIELDS = {"retrieval": ("captions",), "grounding": ("captions", "windows"),
               "localization": ("segments", "segment_labels")}
OPTIONAL_FIELDS = {"retrieval": ("caption_row", "trim_seconds"), "grounding": (),
                   "localization": ("relevant_windows", "relevant_window_caption")}
FORMATS = ("auto", "records", "annotations")


class EvalDataError(ValueError):
    """Unusable evaluation data (reported as one `error:` line)."""


class VideoLoadError(Exception):
    """One unreadable video: skipped, listed under "failed" and counted."""


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


def _jpeg_decoder(jpegs: Sequence[bytes]) -> Callable[[np.ndarray], list]:
    def decode(indices):
        out = []
        for i in indices:
            with Image.open(io.BytesIO(jpegs[int(i)])) as img:
                out.append(img.convert("RGB"))
        return out

    return decode


def record_items(directory: str | os.PathLike, task: str, start_index: int = 0) -> list[EvalItem]:
    """Items of one converted task directory (`metadata.json` + shards). Only the annotations are kept in
    memory; a record is read again when its frames are needed."""
    source = sources.open_source(directory)
    items = []
    for i in range(len(source)):
        ex = schema.decode_record(source[i])
        if ex["task"] != task:
            raise EvalDataError(f"{directory}: holds {ex['task']!r} records, not {task!r}")
        fields = {k: ex[k] for k in TASK_FIELDS[task] + OPTIONAL_FIELDS[task] if k in ex}

        def load(i=i):
            rec = schema.decode_record(source[i])
            times = np.asarray(rec["frame_times"], np.float64)
            duration = float(rec.get("duration") or (times[-1] + 1.0 / max(rec["fps"], 1e-6)))
            return Frames(times, float(rec["fps"]), duration, _jpeg_decoder(rec["frames"]))

        items.append(EvalItem(start_index + i, ex["video_id"], ex.get("dataset", ""), f"{directory}[{i}]", fields,
                              load))
    return items


def _video_loader(path: str, max_frames: int, short_side: int | None) -> Callable[[], Frames]:
    def load():
        try:
            times, frames = video.read_video(path, max_frames=max_frames, short_side=short_side)
            info = video.probe(path)
        except video.VideoReadError as e:
            raise VideoLoadError(str(e)) from None
        fps = video.plan(info, None, max_frames, short_side).fps  # the source rate, lowered for long videos
        duration = info.duration if info.duration > 0 else len(times) / fps
        return Frames(np.asarray(times, np.float64), float(fps), float(duration),
                      lambda idx: [Image.fromarray(frames[int(i)]) for i in idx])

    return load


def annotation_items(path: str | os.PathLike, task: str, video_root: str | os.PathLike, *,
                     class_names: annotations.ClassNames | None = None, max_frames: int = 1024,
                     short_side: int | None = 256, parse_options: Mapping | None = None) -> list[EvalItem]:
    """Items of an original annotation file (the formats the task's parser reads, `data_pipelines.annotations`);
    videos are decoded when needed, at most `max_frames` frames spread over the whole video (the rate is lowered
    for long videos, as the converter stores them), short side at most `short_side`."""
    try:
        parsed = annotations.parse_annotations(task, path, video_root, class_names, **dict(parse_options or {}))
    except annotations.AnnotationError as e:  # "FILE:LINE: message"
        raise EvalDataError(str(e)) from None
    items = []
    for i, it in enumerate(parsed):
        fields = dict(it.fields)
        if task == "grounding":
            fields["windows"] = np.asarray(fields["windows"], np.float32).reshape(-1, 2)
        if task == "localization":
            fields["segments"] = np.asarray(fields["segments"], np.float32).reshape(-1, 2)
            fields["segment_labels"] = np.asarray(fields["segment_labels"], np.int32)
            if "relevant_windows" in fields:
                fields["relevant_windows"] = np.asarray(fields["relevant_windows"], np.float32).reshape(-1, 2)
        items.append(EvalItem(i, it.video_id, it.dataset, it.source, fields,
                              _video_loader(it.source, max_frames, short_side)))
    return items


def find_items(data: str | os.PathLike, task: str, *, video_root: str | None = None, fmt: str = "auto",
               class_names: annotations.ClassNames | None = None, max_frames: int = 1024,
               parse_options: Mapping | None = None) -> tuple[list[EvalItem], dict]:
    """Records (a task directory, or a root holding `<task>/`) or an annotation file (+ `video_root`).

    Returns (items, info): info["kind"] is "records" or "annotations", info["path"] what was read, and for
    records info["metadata"] is the directory's `metadata.json` (class names)."""
    p = pathlib.Path(data)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or directory")
    if fmt not in FORMATS:
        raise EvalDataError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if p.is_dir() and fmt != "annotations":
        d = p / task if (p / task).is_dir() else p
        try:
            meta = sources.load_metadata(d)
            if meta.get("task") not in (None, task):
                raise EvalDataError(f"{d}: metadata.json says task {meta.get('task')!r}, not {task!r}")
            items = record_items(d, task)
        except FileNotFoundError as e:
            raise EvalDataError(f"{d}: not a record directory of {task} ({e.strerror or e})") from None
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
                            parse_options=parse_options), {"kind": "annotations", "path": str(p)}
