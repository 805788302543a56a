"""A tiny built-in dataset covering every task, made from real encoded videos (quickstart and tests).

`build_builtin_dataset(out_dir)` encodes short synthetic clips with PyAV (MPEG-4 in .mp4, so the converter
path really decodes compressed video), decodes them back, stores the frames as JPEG records and writes one
ArrayRecord shard per task. Nothing is downloaded. The content is designed so that the labels are learnable
and checkable: a coloured square (colour = class) moves left-to-right or right-to-left (direction = the SSv2
label, which a horizontal flip would invert) and is visible only inside the annotated time window.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from fractions import Fraction
from typing import Sequence

import av
import numpy as np

from data_pipelines.records import frames as jpeg
from data_pipelines.records import schema, sources
from streamformer_jax import video
from streamformer_jax.tasks import registry

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


@dataclasses.dataclass(frozen=True)
class BuiltinClip:
    """One synthetic clip: what a task's `builtin_fields` may read to annotate it."""

    num_frames: int
    size: tuple[int, int]  # (width, height)
    fps: int
    cls: int  # index into CLASS_NAMES (the square's colour)
    reverse: bool  # the square moves right to left
    window: tuple[int, int]  # the square shows in frames [window[0], window[1])

    @property
    def class_name(self) -> str:
        return CLASS_NAMES[self.cls]

    @property
    def direction(self) -> str:
        return DIRECTIONS[int(self.reverse)]

    @property
    def seconds(self) -> tuple[float, float]:
        """The window in seconds: (first frame with the square, last frame with the square)."""
        return self.window[0] / self.fps, (self.window[1] - 1) / self.fps

    def masks(self) -> np.ndarray:
        """uint8 [1, T, H, W]: the square's mask in every frame (one instance)."""
        width, height = self.size
        masks = np.zeros((1, self.num_frames, height, width), np.uint8)
        for i in range(*self.window):
            top, left, side = _square(i, self.num_frames, width, height, self.reverse)
            masks[0, i, top : top + side, left : left + side] = 1
        return masks


def _example(spec, vid: str, times: np.ndarray, frames: np.ndarray, clip: BuiltinClip) -> dict:
    h, w = frames.shape[1:3]
    ex = dict(task=spec.name, video_id=vid, frames=[jpeg.encode_jpeg(f) for f in frames], frame_times=times,
              fps=float(clip.fps), source_fps=float(clip.fps), height=h, width=w,
              duration=clip.num_frames / clip.fps, dataset="builtin")
    return {**ex, **spec.builtin_fields(clip)}


def build_builtin_dataset(
    out_dir,
    *,
    videos_per_task: int = 8,
    num_frames: int = 40,
    size: tuple[int, int] = (96, 72),
    fps: int = 8,
    tasks: Sequence[str] | None = None,
    fmt: str = "arrayrecord",
) -> dict[str, pathlib.Path]:
    """Build (or reuse, when already built with the same settings) the dataset; returns {task: shard dir}.

    Every task (default: every registered task) gets `videos_per_task` clips of `num_frames` frames of
    `size` = (width, height) at `fps`, written as one shard per task in `fmt` ("arrayrecord" or "tfrecord"), with a converter-style metadata.json.
    """
    out = pathlib.Path(out_dir)
    tasks = registry.names() if tasks is None else tuple(tasks)
    settings = dict(version=VERSION, videos_per_task=videos_per_task, num_frames=num_frames, size=list(size),
                    fps=fps, tasks=list(tasks), fmt=fmt)
    marker = out / "builtin.json"
    dirs = {t: out / t for t in tasks}
    if marker.exists() and json.loads(marker.read_text()) == settings:
        return dirs
    (out / "videos").mkdir(parents=True, exist_ok=True)
    for ti, task in enumerate(tasks):
        spec = registry.get(task)
        records = []
        for i in range(videos_per_task):
            cls, reverse = i % len(CLASS_NAMES), bool((i // 2) % 2)
            start = 0 if spec.builtin_whole_clip else (3 * i + ti) % (num_frames // 2)
            window = (0, num_frames) if spec.builtin_whole_clip else (start, start + num_frames // 3)
            vid = f"{task}_{i:03d}"
            path = write_clip(out / "videos" / f"{vid}.mp4", num_frames, size, fps, COLOURS[CLASS_NAMES[cls]],
                              reverse, window)
            times, frames = video.read_video(path)  # Real decode of the compressed clip.
            clip = BuiltinClip(num_frames, size, fps, cls, reverse, window)
            records.append(schema.encode_record(_example(spec, vid, times, frames, clip)))
        sources.write_task_records(dirs[task], task, records, fmt=fmt, class_names=spec.builtin_class_names)
    marker.write_text(json.dumps(settings))
    return dirs
