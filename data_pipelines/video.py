"""Streaming video decoding with PyAV: target frame rate, frame cap, short-side resize, clear errors.

Frames are decoded sequentially (no seeking, so the result is deterministic) and yielded one at a time, so a
long video never has to fit in memory.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Iterator

import av
import numpy as np

# A decoded video is "truncated" when its frames cover less than this fraction of the announced duration
# (or, without a duration, of the announced frame count). Time, not count, because AVI "drop frames"
# legitimately decode to far fewer frames than announced.
MIN_COVERAGE = 0.9


class VideoDecodeError(Exception):
    """A video is missing, truncated or undecodable. ``str(err)`` names the file and the reason."""

    def __init__(self, path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    source_fps: float  # average frame rate of the stream
    duration: float  # seconds (container metadata; 0.0 when unknown)
    num_frames: int  # frames announced by the container (0 when unknown)
    width: int
    height: int


@dataclasses.dataclass(frozen=True)
class DecodePlan:
    """What :func:`iter_frames` keeps: frames on a ``fps`` grid, at most ``max_frames``, resized to ``size``."""

    fps: float  # rate of the kept frames (<= source_fps)
    size: tuple[int, int]  # (width, height) of the kept frames


def resized_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(width, height) with the short side scaled down to ``short_side`` (never up), aspect kept, even sizes."""
    if not short_side or min(width, height) <= short_side:
        return width, height
    scale = short_side / min(width, height)
    # Even sizes keep 4:2:0 chroma planes exact in the JPEG encoder.
    w = short_side if width <= height else max(2, int(round(width * scale / 2)) * 2)
    h = short_side if height < width else max(2, int(round(height * scale / 2)) * 2)
    return w, h


def plan(info: VideoInfo, fps: float | None, max_frames: int | None, short_side: int | None) -> DecodePlan:
    """Pick the kept-frame rate: the target (or source) fps, lowered so the whole video fits ``max_frames``.

    Lowering the rate instead of cutting the video keeps whole-video coverage, which the localization and
    grounding samplers need (they sample over the full duration).
    """
    rate = info.source_fps if not fps else min(fps, info.source_fps)
    if max_frames and info.duration > 0 and rate * info.duration > max_frames:
        rate = max_frames / info.duration
    return DecodePlan(fps=rate, size=resized_size(info.width, info.height, short_side))


def _open(path) -> av.container.InputContainer:
    if not os.path.exists(path):
        raise VideoDecodeError(path, "missing file")
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(path, "empty file")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as err:
        # strerror, not str(err): the latter repeats the (machine-specific) path.
        reason = getattr(err, "strerror", None) or str(err)
        raise VideoDecodeError(path, f"cannot open container ({type(err).__name__}: {reason})") from None
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(path, "no video stream")
    return container


def _info(container, path) -> VideoInfo:
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or float(rate) <= 0:
        raise VideoDecodeError(path, "unknown frame rate")
    if stream.duration and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    elif container.duration:
        duration = container.duration / av.time_base
    else:
        duration = 0.0
    ctx = stream.codec_context
    return VideoInfo(float(rate), duration, int(stream.frames or 0), ctx.width, ctx.height)


def probe(path) -> VideoInfo:
    """Container metadata without decoding (raises :class:`VideoDecodeError`)."""
    with _open(path) as container:
        return _info(container, path)


def iter_frames(path, fps: float | None = None, max_frames: int | None = None,
                short_side: int | None = None, threads: int = 1) -> Iterator[tuple[float, np.ndarray]]:
    """Yield ``(time_seconds, rgb uint8 [H, W, 3])`` for the kept frames, in order.

    * ``fps``: keep the first frame at or after each tick of a ``fps`` grid starting at 0 (never duplicates
      frames, so the kept rate is at most the source rate). None keeps every decoded frame (as decord counts
      them; the original loaders sample by frame index).
    * ``max_frames``: lower the grid rate so the whole video fits (see :func:`plan`), then hard cap.
    * ``short_side``: downscale (area filter) so min(H, W) == short_side; smaller videos stay as they are.
    * Times are the frames' presentation times relative to the stream start (index / fps when a frame has no
      timestamp).

    Raises :class:`VideoDecodeError` (naming the file) if the file is missing, cannot be opened, decodes no
    frame, fails mid-stream, or covers < 90% of the duration its container announces (truncated download).
    """
    with _open(path) as container:
        info = _info(container, path)
        p = plan(info, fps, max_frames, short_side)
        stream = container.streams.video[0]
        stream.thread_count = threads
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        width, height = p.size
        next_tick, kept, decoded, last_time, last_decoded_time = 0, 0, 0, -math.inf, 0.0
        # No target rate and no cap lowering it: keep every frame, as decord indexes them (a millisecond time
        # base, e.g. WebM's, puts frame 1 of 12 fps at 0.083 s, below the 1/12 s grid tick).
        every_frame = not fps and p.fps >= info.source_fps
        try:
            for frame in container.decode(stream):
                t = frame.time - start if frame.time is not None else decoded / info.source_fps
                decoded += 1
                last_decoded_time = max(last_decoded_time, t)
                if t <= last_time:  # duplicated/out-of-order timestamps: keep times strictly increasing
                    continue
                tick = math.floor(t * p.fps + 1e-6)
                if tick < next_tick and not every_frame:
                    continue
                next_tick, last_time = tick + 1, t
                rgb = frame.reformat(width=width, height=height, format="rgb24",
                                     interpolation="AREA").to_ndarray()
                yield t, rgb
                kept += 1
                if max_frames and kept >= max_frames:
                    return
        except av.error.FFmpegError as err:
            reason = getattr(err, "strerror", None) or str(err)
            raise VideoDecodeError(path, f"decoding failed after {decoded} frames ({reason})") from None
        if kept == 0:
            raise VideoDecodeError(path, "no decodable frame")
        _check_complete(path, info, decoded, last_decoded_time)


def _check_complete(path, info: VideoInfo, decoded: int, last_time: float) -> None:
    if info.duration > 0:
        covered = last_time + 1.0 / info.source_fps
        if covered < MIN_COVERAGE * info.duration:
            raise VideoDecodeError(path, f"truncated: frames cover {covered:.2f} s of {info.duration:.2f} s")
    elif info.num_frames and decoded < MIN_COVERAGE * info.num_frames:
        raise VideoDecodeError(path, f"truncated: decoded {decoded} of {info.num_frames} frames")


def read_video(path, fps: float | None = None, max_frames: int | None = None,
               short_side: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode into memory: (times float64 [n], frames uint8 [n, H, W, 3]). For tests and short clips."""
    times, frames = [], []
    for t, rgb in iter_frames(path, fps, max_frames, short_side):
        times.append(t)
        frames.append(rgb)
    return np.asarray(times, np.float64), np.stack(frames)


def read_image(path, short_side: int | None = None) -> np.ndarray:
    """Decode one image file (JPEG/PNG, via FFmpeg) -> RGB uint8 [H, W, 3], short side downscaled."""
    with _open(path) as container:
        try:
            frame = next(container.decode(video=0), None)
        except av.error.FFmpegError as err:
            raise VideoDecodeError(path, f"undecodable image ({getattr(err, 'strerror', None) or err})") from None
        if frame is None:
            raise VideoDecodeError(path, "undecodable image")
        width, height = resized_size(frame.width, frame.height, short_side)
        return frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA").to_ndarray()
