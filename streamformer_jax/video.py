"""Streaming frame sources for feature extraction: video files (PyAV) and `.npy` arrays.

    from streamformer_jax.video import VideoReader
    with VideoReader("clip.mp4", size=224, fps=5) as reader:
        for t, frame in reader:      # t: seconds (float), frame: uint8 [224, 224, 3] RGB
            ...

Decoding is sequential and lazy: one decoded frame (plus the previous one, for frame-rate selection) is held
at a time, so a video of any length runs in bounded memory. `.npy` inputs are memory-mapped.

Geometry. Each frame is resized so that its shorter side equals `size` (aspect ratio kept, the longer side
rounded to the nearest pixel) and then centre-cropped to `size x size`. Resizing uses FFmpeg's swscale through
PyAV (`VideoFrame.reformat`, bicubic; swscale widens the filter when it shrinks, so downscaling is
antialiased). Frames that already are `size x size` are passed through untouched. Sample aspect ratios
(anamorphic pixels) are ignored: pixels are taken as square. `size=None` keeps the frames as decoded.

Timestamps. A video frame's timestamp is its presentation time `pts x time_base` in seconds, measured from the
start of the file's timeline (the container's `start_time`, normally 0), i.e. what a player's clock shows.
Frames without a pts get `index / average_rate` of the stream. Timestamps are forced non-decreasing (a broken
pts never goes backwards). An `.npy` array `[T, H, W, 3]` has no clock: frame i is at `i / npy_fps` seconds,
`npy_fps` defaulting to 1.0 (so timestamps are frame indices).

Frame rate (`fps`). `fps=None` keeps every frame. Otherwise the target times are the grid
`t0 + k / fps` (t0 = the first frame's timestamp, k = 0, 1, ... while the grid time is not later than the
last frame) and for each grid time the frame whose timestamp is nearest is kept (ties go to the earlier frame).
A frame is never emitted twice: when several grid times select the same frame (a target rate above the
source rate, or the gaps of a variable-frame-rate / "drop-frame" video) it is kept once. So the output is a
subset of the source frames, in order, with their true timestamps, spaced about `1 / fps` apart, and
`fps` above the source rate simply keeps every frame. The same rule applies to `.npy` inputs (on the
`i / npy_fps` clock).

A video whose decoded frames end before 90% of the duration the container announces (a cut-off download, say)
still yields its frames but raises a `TruncatedVideoWarning`.

Errors. A missing, empty, unreadable or corrupt file, a file without a video stream, a file from which no
frame decodes, or an `.npy` array of the wrong dtype or shape raises `VideoReadError`, whose message starts with
the file name and says what is wrong.
"""
from __future__ import annotations

import math
import os
import pathlib
import warnings
from typing import Iterator

import numpy as np

NPY_MAGIC = b"\x93NUMPY"
_EPS = 1e-9
# Decoded frames ending before this fraction of the announced duration trigger a `TruncatedVideoWarning`.
MIN_COVERAGE = 0.9


class TruncatedVideoWarning(UserWarning):
    """The decoded frames stop well before the duration the container announces (a cut-off file?)."""


class VideoReadError(Exception):
    """A frame source that cannot be used. `str(err)` is `"<path>: <reason>"`."""

    def __init__(self, path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) after scaling the shorter side to `size`, aspect kept (longer side rounded, >= size)."""
    scale = size / min(height, width)
    if height <= width:
        return size, max(size, int(round(width * scale)))
    return max(size, int(round(height * scale))), size


def _center_crop(rgb: np.ndarray, size: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(rgb[top:top + size, left:left + size])


def _frame_to_rgb(frame, size: int | None) -> np.ndarray:
    """av.VideoFrame -> uint8 [size, size, 3] RGB (shorter-side resize + centre crop)."""
    if size is None or (frame.width, frame.height) == (size, size):
        return frame.to_ndarray(format="rgb24")
    h, w = resized_shape(frame.height, frame.width, size)
    rgb = frame.reformat(width=w, height=h, format="rgb24", interpolation="BICUBIC").to_ndarray()
    return _center_crop(rgb, size)


def resize_center_crop(frame: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] RGB -> uint8 [size, size, 3]: the same resize + crop as for decoded video frames."""
    frame = np.asarray(frame)
    if frame.shape[:2] == (size, size):
        return np.ascontiguousarray(frame)
    import av

    vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
    h, w = resized_shape(frame.shape[0], frame.shape[1], size)
    rgb = vf.reformat(width=w, height=h, interpolation="BICUBIC").to_ndarray(format="rgb24")
    return _center_crop(rgb, size)


def select_nearest(items: Iterator[tuple[float, object]], fps: float) -> Iterator[tuple[float, object]]:
    """Keep, for each grid time t0 + k/fps, the item with the nearest time; never the same item twice.

    `items` yields (time, payload) in presentation order; payloads are passed through unconverted, so
    dropped frames are never converted. Holds at most two items at a time.
    """
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    step = 1.0 / fps
    t0 = None
    k = 0
    prev = None  # (time, payload, serial)
    last_serial = -1
    for serial, (t, payload) in enumerate(items):
        if t0 is None:
            t0 = t
        while True:
            grid = t0 + k * step
            if grid > t + _EPS:
                break
            if prev is not None and grid - prev[0] <= t - grid + _EPS:
                chosen = prev
            else:
                chosen = (t, payload, serial)
            if chosen[2] != last_serial:
                last_serial = chosen[2]
                yield chosen[0], chosen[1]
            k += 1
        prev = (t, payload, serial)


class VideoReader:
    """Lazy (timestamp_seconds, uint8 RGB frame) source over a video file or an `.npy` array; see module doc.

    The file is opened (and checked) on construction, so errors surface before any model work. Iterate once;
    use as a context manager or call `close()` to release the file early.

    Attributes: `path`, `kind` ("video" | "npy"), `width`, `height` (source frame size), `num_frames`
    (frames announced by the container / array length; 0 when unknown), `source_fps` (0.0 when unknown),
    `duration` (seconds; 0.0 when unknown).
    """

    def __init__(self, path: str | os.PathLike, size: int | None = None, *, fps: float | None = None,
                 npy_fps: float = 1.0, max_frames: int | None = None):
        self.path = pathlib.Path(path)
        self.size = None if size is None else int(size)
        if fps is not None and not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        if not npy_fps > 0:
            raise ValueError(f"npy_fps must be > 0, got {npy_fps}")
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        self.fps, self.npy_fps, self.max_frames = fps, float(npy_fps), max_frames
        self._container = None
        self._array = None
        self._used = False
        self._last_time = None
        self.truncated = False  # set when iteration ends with a TruncatedVideoWarning
        if not self.path.exists():
            raise VideoReadError(self.path, "no such file")
        if self.path.is_dir():
            raise VideoReadError(self.path, "is a directory, not a video file or .npy array")
        try:
            with open(self.path, "rb") as f:
                head = f.read(len(NPY_MAGIC))
        except OSError as err:
            raise VideoReadError(self.path, f"cannot read file ({err.strerror or err})") from None
        if not head:
            raise VideoReadError(self.path, "empty file")
        if head == NPY_MAGIC or self.path.suffix.lower() == ".npy":
            self._open_npy()
        else:
            self._open_video()

    # -- opening ---------------------------------------------------------------------------------------------
    def _open_npy(self) -> None:
        self.kind = "npy"
        try:
            arr = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except Exception as err:  # noqa: BLE001 - numpy raises ValueError/OSError/EOFError/... for bad files
            raise VideoReadError(self.path, f"not a readable .npy array ({type(err).__name__}: {err})") from None
        if not isinstance(arr, np.ndarray):
            raise VideoReadError(self.path, "expected a single .npy array, not an .npz archive")
        if arr.dtype != np.uint8:
            raise VideoReadError(self.path, f"expected dtype uint8 (RGB frames 0..255), got {arr.dtype}")
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise VideoReadError(self.path, f"expected shape [T, H, W, 3] (RGB frames, time first), "
                                            f"got {list(arr.shape)}")
        if arr.shape[0] == 0 or arr.shape[1] == 0 or arr.shape[2] == 0:
            raise VideoReadError(self.path, f"empty video array of shape {list(arr.shape)}")
        self._array = arr
        self.num_frames, self.height, self.width = arr.shape[:3]
        self.source_fps = self.npy_fps
        self.duration = self.num_frames / self.npy_fps

    def _open_video(self) -> None:
        import av

        self.kind = "video"
        try:
            container = av.open(str(self.path))
        except (av.error.FFmpegError, UnicodeDecodeError, OSError) as err:
            # strerror, not str(err): the latter repeats the path.
            reason = getattr(err, "strerror", None) or str(err)
            raise VideoReadError(self.path, f"not a readable video file ({reason})") from None
        if not container.streams.video:
            container.close()
            raise VideoReadError(self.path, "contains no video stream")
        self._container = container
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        self._stream = stream
        self.width, self.height = stream.codec_context.width, stream.codec_context.height
        self.num_frames = int(stream.frames or 0)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        self.source_fps = float(rate) if rate else 0.0
        if stream.duration is not None and stream.time_base is not None:
            self.duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            self.duration = container.duration / 1e6
        else:
            self.duration = 0.0
        self._start = container.start_time / 1e6 if container.start_time is not None else 0.0

    # -- info ------------------------------------------------------------------------------------------------
    def expected_frames(self) -> int | None:
        """Best guess of how many frames iteration yields (for a progress bar); None when unknown."""
        n = self.num_frames or None
        if self.fps is not None:
            if n is not None and self.source_fps > 0:  # grid up to the last frame, at (n - 1) / source_fps
                n = min(n, int(math.floor((n - 1) / self.source_fps * self.fps + _EPS)) + 1)
            elif self.duration > 0:
                n = int(math.floor(self.duration * self.fps + _EPS)) + 1
        if self.max_frames is not None:
            n = self.max_frames if n is None else min(n, self.max_frames)
        return n

    # -- iteration -------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[float, np.ndarray]]:
        if self._used:
            raise RuntimeError("a VideoReader can be iterated only once; open a new one")
        self._used = True
        return self._frames()

    def _frames(self) -> Iterator[tuple[float, np.ndarray]]:
        raw = self._raw_npy() if self.kind == "npy" else self._raw_video()
        items = raw if self.fps is None else select_nearest(raw, self.fps)
        count = 0
        complete = True
        try:
            for t, payload in items:
                yield float(t), self._convert(payload)
                count += 1
                if self.max_frames is not None and count >= self.max_frames:
                    complete = False
                    break
        finally:
            items.close()
            self.close()
        if count == 0:
            raise VideoReadError(self.path, "no frame could be decoded")
        if complete and self.kind == "video" and self.duration > 0 and self._last_time is not None:
            end = self._last_time + (1.0 / self.source_fps if self.source_fps else 0.0)
            if end < MIN_COVERAGE * self.duration:
                self.truncated = True
                warnings.warn(f"{self.path}: decoded frames end at {end:.2f} s but the file announces "
                              f"{self.duration:.2f} s; it may be truncated", TruncatedVideoWarning,
                              stacklevel=2)

    def _convert(self, payload) -> np.ndarray:
        if self.kind == "npy":
            frame = np.array(self._array[payload])  # a copy: detach from the memory map
            return frame if self.size is None else resize_center_crop(frame, self.size)
        try:
            return _frame_to_rgb(payload, self.size)
        except Exception as err:  # noqa: BLE001 - swscale/pixel-format failures
            raise VideoReadError(self.path, f"cannot convert a decoded frame to RGB ({err})") from None

    def _raw_npy(self) -> Iterator[tuple[float, int]]:
        for i in range(self.num_frames):
            yield i / self.npy_fps, i

    def _raw_video(self):
        import av

        stream = self._stream
        rate = self.source_fps or 1.0
        prev_t = -math.inf
        index = 0
        try:
            frames = self._container.decode(stream)
            while True:
                try:
                    frame = next(frames)
                except StopIteration:
                    break
                except av.error.FFmpegError as err:
                    reason = getattr(err, "strerror", None) or str(err)
                    raise VideoReadError(self.path, f"decoding failed after {index} frames ({reason})") from None
                if frame.pts is not None and frame.time_base is not None:
                    t = float(frame.pts * frame.time_base) - self._start
                else:
                    t = index / rate
                t = max(t, prev_t)
                prev_t = self._last_time = t
                index += 1
                yield t, frame
        finally:
            self.close()

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_frames(path: str | os.PathLike, size: int | None = None, *, fps: float | None = None,
                npy_fps: float = 1.0, max_frames: int | None = None) -> Iterator[tuple[float, np.ndarray]]:
    """Generator of (timestamp_seconds, uint8 [size, size, 3]) frames; see `VideoReader` and the module doc."""
    return iter(VideoReader(path, size, fps=fps, npy_fps=npy_fps, max_frames=max_frames))
