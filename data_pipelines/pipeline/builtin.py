"""A tiny built-in dataset covering every task, made from real encoded videos (quickstart and tests).

`build_builtin_dataset(out_dir)` encodes short synthetic clips with PyAV (MPEG-4 in .mp4, so the converter
path really decodes compressed video), decodes them back, stores the frames as JPEG records and writes one
ArrayRecord shard per task. Nothing is downloaded. The content is designed so that the labels are learnable
and checkable: a coloured square (colour = class) moves left-to-right or right-to-left (direction = the SSv2
label, which a horizontal flip would invert) and is visible only inside the annotated time window.
"""
from __future__ import annotations

import json
import pathlib
from fractions import Fraction
from typing import Sequence

import av
import numpy as np

from data_pipelines import schema, video
from data_pipelines.pipeline import sources

VERSION = 1  # Bump when the content changes, so cached copies are rebuilt.
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 70, 230), "yellow": (230, 210, 40)}
CLASS_NAMES = tuple(COLOURS)
DIRECTIONS = ("moving left to right", "moving right to left")


def _square(i: int, n: int, width: int, height: int, reverse: bool) -> tuple[int, int, int]:
    """(top, left, side) of the square in frame i of n."""
    side = max(4, height // 3)
    x = int(round((width - side) * i / max(n - 1, 1)))
    return (height - side) // 2, (width - side - x) if reverse else x, side


def _render(i: int, n: int, size: tuple[int, int], colour, reverse: bool, visible: bool) -> np.ndarray:
    width, height = size
    img = np.empty((height, width, 3), np.uint8)
    img[:] = (np.linspace(60, 140, width)[None, :, None]).astype(np.uint8)  # A gradient, not a flat frame.
    if visible:
        top, left, side = _square(i, n, width, height, reverse)
        img[top : top + side, left : left + side] = colour
    return img


def write_clip(path, n: int, size: tuple[int, int], fps: int, colour, reverse: bool, window: tuple[int, int]):
    """Encode one synthetic clip with PyAV; the square shows in frames [window[0], window[1])."""
    path = pathlib.Path(path)
    rate = Fraction(fps)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.time_base = 1 / rate
        stream.options = {"qscale": "3"}
        for i in range(n):
            rgb = _render(i, n, size, colour, reverse, window[0] <= i < window[1])
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def _vis_masks(n: int, size: tuple[int, int], reverse: bool, window: tuple[int, int]) -> np.ndarray:
    width, height = size
    masks = np.zeros((1, n, height, width), np.uint8)
    for i in range(*window):
        top, left, side = _square(i, n, width, height, reverse)
        masks[0, i, top : top + side, left : left + side] = 1
    return masks


def _example(task: str, vid: str, times: np.ndarray, frames: np.ndarray, fps: int, cls: int, reverse: bool,
             window: tuple[int, int]) -> dict:
    n = len(frames)
    h, w = frames.shape[1:3]
    t0, t1 = window[0] / fps, (window[1] - 1) / fps
    name, direction = CLASS_NAMES[cls], DIRECTIONS[int(reverse)]
    ex = dict(task=task, video_id=vid, frames=[schema.encode_jpeg(f) for f in frames], frame_times=times,
              fps=float(fps), source_fps=float(fps), height=h, width=w, duration=n / fps, dataset="builtin")
    if task == "kinetics":
        ex["label"] = cls
    elif task == "ssv2":
        ex["label"] = int(reverse)
    elif task == "retrieval":
        ex["captions"] = [f"a {name} square {direction}", f"a {name} block slides across"]
    elif task == "grounding":
        ex["captions"] = [f"the {name} square appears"]
        ex["windows"] = np.array([[t0, t1]], np.float32)
    elif task == "localization":
        ex["segments"] = np.array([[t0, t1]], np.float32)
        ex["segment_labels"] = np.array([cls], np.int32)
    elif task == "vis":
        ex["categories"] = np.array([cls], np.int32)
        ex["mask_rle_lengths"], ex["mask_rle_counts"] = schema.encode_masks(_vis_masks(n, (w, h), reverse, window))
    return ex


def build_builtin_dataset(
    out_dir,
    *,
    videos_per_task: int = 8,
    num_frames: int = 40,
    size: tuple[int, int] = (96, 72),
    fps: int = 8,
    tasks: Sequence[str] = schema.TASKS,
    fmt: str = "arrayrecord",
) -> dict[str, pathlib.Path]:
    """Build (or reuse, when already built with the same settings) the dataset; returns {task: shard dir}.

    Every task gets `videos_per_task` clips of `num_frames` frames of `size` = (width, height) at `fps`,
    written as one shard per task in `fmt` ("arrayrecord" or "tfrecord"), with a converter-style metadata.json.
    """
    out = pathlib.Path(out_dir)
    settings = dict(version=VERSION, videos_per_task=videos_per_task, num_frames=num_frames, size=list(size),
                    fps=fps, tasks=list(tasks), fmt=fmt)
    marker = out / "builtin.json"
    dirs = {t: out / t for t in tasks}
    if marker.exists() and json.loads(marker.read_text()) == settings:
        return dirs
    (out / "videos").mkdir(parents=True, exist_ok=True)
    for ti, task in enumerate(tasks):
        records = []
        for i in range(videos_per_task):
            cls, reverse = i % len(CLASS_NAMES), bool((i // 2) % 2)
            full = task in ("kinetics", "ssv2", "retrieval")
            start = 0 if full else (3 * i + ti) % (num_frames // 2)
            window = (0, num_frames) if full else (start, start + num_frames // 3)
            vid = f"{task}_{i:03d}"
            path = write_clip(out / "videos" / f"{vid}.mp4", num_frames, size, fps, COLOURS[CLASS_NAMES[cls]],
                              reverse, window)
            times, frames = video.read_video(path)  # Real decode of the compressed clip.
            records.append(schema.encode_record(_example(task, vid, times, frames, fps, cls, reverse, window)))
        names = {"kinetics": CLASS_NAMES, "localization": CLASS_NAMES, "vis": CLASS_NAMES, "ssv2": DIRECTIONS}
        sources.write_task_records(dirs[task], task, records, fmt=fmt, class_names=names.get(task, ()))
    marker.write_text(json.dumps(settings))
    return dirs
