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
from typing import Iterable, Sequence

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


def render_frame(i: int, n: int, size: tuple[int, int], colour, reverse: bool, visible: bool) -> np.ndarray:
    """Frame i of n (uint8 [H, W, 3], size = (width, height)): a horizontal gradient and, when `visible`, the
    square in `colour` at its place on the way across."""
    width, height = size
    img = np.empty((height, width, 3), np.uint8)
    img[:] = (np.linspace(60, 140, width)[None, :, None]).astype(np.uint8)  # A gradient, not a flat frame.
    if visible:
        top, left, side = _square(i, n, width, height, reverse)
        img[top : top + side, left : left + side] = colour
    return img


def encode_video(path, frames: Iterable[np.ndarray], size: tuple[int, int], fps: int) -> pathlib.Path:
    """Encode RGB frames of `size` = (width, height) as an MPEG-4 file at `fps` with PyAV."""
    path = pathlib.Path(path)
    rate = Fraction(fps)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.time_base = 1 / rate
        stream.options = {"qscale": "3"}
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def write_clip(path, n: int, size: tuple[int, int], fps: int, colour, reverse: bool, window: tuple[int, int]):
    """Encode one synthetic clip with PyAV; the square shows in frames [window[0], window[1])."""
    frames = (render_frame(i, n, size, colour, reverse, window[0] <= i < window[1]) for i in range(n))
    return encode_video(path, frames, size, fps)


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


def clip_example(task: str, vid: str, clip: BuiltinClip, video_dir, colour=None) -> dict:
    """Encode `clip` as `video_dir/<vid>.mp4` (the square in `colour`, default its class colour), decode it back
    (a real decode of the compressed clip) and return its record example: the common fields and the task's
    built-in fields (`TaskSpec.builtin_fields`)."""
    spec = registry.get(task)
    colour = COLOURS[clip.class_name] if colour is None else colour
    path = write_clip(pathlib.Path(video_dir) / f"{vid}.mp4", clip.num_frames, clip.size, clip.fps, colour,
                      clip.reverse, clip.window)
    times, frames = video.read_video(path)
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
            clip = BuiltinClip(num_frames, size, fps, cls, reverse, window)
            records.append(schema.encode_record(clip_example(task, f"{task}_{i:03d}", clip, out / "videos")))
        sources.write_task_records(dirs[task], task, records, fmt=fmt, class_names=spec.builtin_class_names)
    marker.write_text(json.dumps(settings))
    return dirs


# ------------------------------------------------------------------------------------------- held-out clips
def random_geometry(rng: np.random.Generator) -> tuple[tuple[int, int], int]:
    """((width, height), frames) of a held-out clip: even sizes (yuv420p) 64..128 x 48..96, 24..56 frames."""
    width, height = 2 * int(rng.integers(32, 65)), 2 * int(rng.integers(24, 49))
    return (width, height), int(rng.integers(24, 57))


def jittered_colour(cls: int, rng: np.random.Generator, jitter: int) -> tuple[int, int, int]:
    """A shade of class `cls`'s colour: each RGB channel moved by up to `jitter`."""
    shade = np.clip(np.array(COLOURS[CLASS_NAMES[cls]]) + rng.integers(-jitter, jitter + 1, 3), 0, 255)
    return tuple(int(c) for c in shade)


def build_heldout_records(out_dir, tasks: Sequence[str], *, per_class: int = 4, seed: int = 2,
                          colour_jitter: int = 20, fps: int = 8) -> dict[str, pathlib.Path]:
    """Records of clips the built-in dataset does not hold, for evaluating a model trained on it:
    `out_dir/records/<task>/` (ArrayRecord + metadata.json) and their videos in `out_dir/videos/`.

    Every clip draws (from `seed`) its own frame size, length and shade of its class colour (`random_geometry`,
    `jittered_colour`). A task whose built-in window is the whole clip (retrieval) gets one clip per (colour,
    direction) pair, with only its first caption, the one that tells it apart ("a red square moving left to
    right"): chance R@1 = 1 / 8 with the default classes. Other tasks (grounding, localization) get `per_class`
    clips per colour, the square visible only inside a random window of 25-45 % of the clip; their annotations
    are the task's built-in fields of that window.
    """
    rng = np.random.default_rng(seed)
    out = pathlib.Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    dirs = {}
    for task in tasks:
        spec = registry.get(task)
        if spec.builtin_whole_clip:
            plan = [(c, r) for c in range(len(CLASS_NAMES)) for r in (False, True)]
        else:
            plan = [(i % len(CLASS_NAMES), bool(rng.integers(2))) for i in range(per_class * len(CLASS_NAMES))]
        records = []
        for i, (cls, reverse) in enumerate(plan):
            size, frames = random_geometry(rng)
            colour = jittered_colour(cls, rng, colour_jitter)
            if spec.builtin_whole_clip:
                window = (0, frames)
            else:
                length = int(round(frames * rng.uniform(0.25, 0.45)))
                start = int(rng.integers(0, frames - length + 1))
                window = (start, start + length)
            clip = BuiltinClip(frames, size, fps, cls, reverse, window)
            ex = clip_example(task, f"heldout_{task}_{i:03d}", clip, out / "videos", colour)
            if spec.builtin_whole_clip and "captions" in ex:
                ex["captions"] = ex["captions"][:1]
            records.append(schema.encode_record(ex))
        dirs[task] = sources.write_task_records(out / "records" / task, task, records,
                                                class_names=spec.builtin_class_names)
    return dirs
