"""The one video-decoding module (PyAV): opening and probing files, sequential decoding with clear errors, the
frame-rate policies and the resize geometries that feature extraction, dataset conversion and evaluation use.

    from streamformer_jax.video import VideoReader
    with VideoReader("clip.mp4", size=224, fps=5) as reader:     # feature extraction
        for t, frame in reader:      # t: seconds (float), frame: uint8 [224, 224, 3] RGB
            ...
    for t, rgb in iter_frames("clip.mp4", fps=8, short_side=256):  # dataset conversion
        ...

Decoding is sequential (no seeking, so deterministic) and lazy: one decoded frame (plus the previous one, for
frame-rate selection) is held at a time, so a video of any length runs in bounded memory. `.npy` inputs of
`VideoReader` are memory-mapped.

Timestamps. A frame's timestamp is its presentation time `pts x time_base` in seconds from the start of its
stream (`start_time`, normally 0), i.e. what a player's clock shows. Frames without a pts get `index / rate`.
An `.npy` array `[T, H, W, 3]` has no clock: frame i is at `i / npy_fps` seconds (default 1, so indices).

Frame-rate policies (what a target rate `fps` keeps):
  * `nearest_to_grid` (feature extraction, `VideoReader(fps=...)`): the grid is `t0 + k / fps` (t0 = the first
    frame's time, up to the last frame); for each grid time the frame whose timestamp is nearest is kept (ties
    to the earlier one), never twice. The output is a subset of the source frames with their true timestamps,
    about `1 / fps` apart; `fps` above the source rate keeps every frame. Timestamps are first forced
    non-decreasing (a broken pts never goes backwards).
  * `first_at_each_tick` (dataset conversion, `iter_frames`): the first frame at or after each tick `k / fps`
    of a grid from 0; frames whose time is not after the last kept one are dropped (times strictly increase).
    `plan` lowers the rate so that `max_frames` covers the whole video.
  * `index_resample` (the original online-action-detection protocol): indices
    `linspace(0, n - 1, int(n / fps * target))` over the n decoded frames, frames repeated as they come
    (`take_indices`).

Geometries:
  * `resize_center_crop` / `VideoReader(size=S)`: shorter side -> S (aspect kept, longer side rounded),
    bicubic, then the centre S x S crop; frames already S x S pass through untouched.
  * `downscale_size` / `iter_frames(short_side=S)`: the shorter side scaled down to S (never up), even sizes
    (exact 4:2:0 chroma for JPEG), area filter.
  * `resize_short_side`: shorter side -> S, aspect kept, any interpolation (evaluation's views).
All resizing is FFmpeg's swscale through PyAV (`VideoFrame.reformat`; swscale widens the filter when it shrinks,
so downscaling is antialiased). Sample aspect ratios (anamorphic pixels) are ignored: pixels are taken as square.

Truncation. A video whose decoded frames end before 90% of the duration the container announces (or, without a
duration, decode fewer than 90% of the announced frames) is truncated: `iter_frames` raises, `VideoReader` still
yields its frames and warns (`TruncatedVideoWarning`). Time, not count, because AVI "drop frames" legitimately
decode to far fewer frames than announced.

Errors. A missing, empty, unreadable or corrupt file, a file without a video stream, a file from which no frame
decodes, or an `.npy` array of the wrong dtype or shape raises `VideoReadError`, whose message starts with the
file name and says what is wrong.
"""
from __future__ import annotations

import collections
import dataclasses
import math
import os
import pathlib
import warnings
from typing import Iterable, Iterator

import av
import numpy as np

NPY_MAGIC = b"\x93NUMPY"
_EPS = 1e-9
MIN_COVERAGE = 0.9  # decoded frames must cover this fraction of the announced duration (or frame count)


class TruncatedVideoWarning(UserWarning):
    """The decoded frames stop well before the duration the container announces (a cut-off file?)."""


class VideoReadError(Exception):
    """A frame source that cannot be used. `str(err)` is `"<path>: <reason>"`."""

    def __init__(self, path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    source_fps: float  # average frame rate of the stream (0.0 when unknown)
    duration: float  # seconds (container metadata; 0.0 when unknown)
    num_frames: int  # frames announced by the container (0 when unknown)
    width: int
    height: int
    start: float = 0.0  # the stream's start time, seconds (timestamps are relative to it)


# ------------------------------------------------------------------------------------------------- geometry
def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) after scaling the shorter side to `size`, aspect kept (longer side rounded, >= size)."""
    scale = size / min(height, width)
    if height <= width:
        return size, max(size, int(round(width * scale)))
    return max(size, int(round(height * scale))), size


def downscale_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(width, height) with the short side scaled down to `short_side` (never up), aspect kept, even sizes."""
    if not short_side or min(width, height) <= short_side:
        return width, height
    scale = short_side / min(width, height)
    # Even sizes keep 4:2:0 chroma planes exact in the JPEG encoder.
    w = short_side if width <= height else max(2, int(round(width * scale / 2)) * 2)
    h = short_side if height < width else max(2, int(round(height * scale / 2)) * 2)
    return w, h


def _rgb(frame: av.VideoFrame, width: int, height: int, interpolation: str) -> np.ndarray:
    """A decoded (or wrapped) frame -> uint8 RGB of the given size, in one swscale call."""
    return frame.reformat(width=width, height=height, format="rgb24", interpolation=interpolation).to_ndarray()


def _center_crop(rgb: np.ndarray, size: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(rgb[top:top + size, left:left + size])


def _frame_to_rgb(frame: av.VideoFrame, size: int | None) -> np.ndarray:
    """av.VideoFrame -> uint8 [size, size, 3] RGB (shorter-side resize + centre crop)."""
    if size is None or (frame.width, frame.height) == (size, size):
        return frame.to_ndarray(format="rgb24")
    h, w = resized_shape(frame.height, frame.width, size)
    return _center_crop(_rgb(frame, w, h, "BICUBIC"), size)


def resize_short_side(frame: np.ndarray, size: int, interpolation: str = "BILINEAR") -> np.ndarray:
    """uint8 [H, W, 3] -> short side = size, aspect kept (long side rounded), via FFmpeg swscale."""
    h, w = resized_shape(frame.shape[0], frame.shape[1], size)
    if (h, w) == frame.shape[:2]:
        return np.ascontiguousarray(frame)
    return _rgb(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24"), w, h, interpolation)


def resize_center_crop(frame: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] RGB -> uint8 [size, size, 3]: the same resize + crop as for decoded video frames."""
    frame = np.asarray(frame)
    if frame.shape[:2] == (size, size):
        return np.ascontiguousarray(frame)
    return _center_crop(resize_short_side(frame, size, "BICUBIC"), size)


# ---------------------------------------------------------------------------------------- frame-rate policies
def nearest_to_grid(items: Iterable[tuple[float, object]], fps: float) -> Iterator[tuple[float, object]]:
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


select_nearest = nearest_to_grid  # the name feature extraction documents


def first_at_each_tick(items: Iterable[tuple[float, object]], fps: float) -> Iterator[tuple[float, object]]:
    """Keep the first item at or after each tick k/fps of a grid from 0; times strictly increase."""
    next_tick, last_time = 0, -math.inf
    for t, payload in items:
        if t <= last_time:  # duplicated/out-of-order timestamps
            continue
        tick = math.floor(t * fps + 1e-6)
        if tick < next_tick:
            continue
        next_tick, last_time = tick + 1, t
        yield t, payload


def strictly_increasing(items: Iterable[tuple[float, object]]) -> Iterator[tuple[float, object]]:
    """Every item whose time is after the previous kept one (drops duplicated/out-of-order timestamps)."""
    last_time = -math.inf
    for t, payload in items:
        if t > last_time:
            last_time = t
            yield t, payload


def non_decreasing(items: Iterable[tuple[float, object]]) -> Iterator[tuple[float, object]]:
    """Times forced non-decreasing (a broken pts never goes backwards)."""
    prev = -math.inf
    for t, payload in items:
        prev = max(t, prev)
        yield prev, payload


def index_resample(n: int, fps: float, target_fps: float) -> np.ndarray:
    """The original OAD resampling: linspace(0, n-1, int(n / fps * target_fps)).astype(int) (repeats frames)."""
    return np.linspace(0, n - 1, int(n / fps * target_fps)).astype(int)


def take_indices(frames: Iterable[np.ndarray], indices: np.ndarray) -> Iterator[np.ndarray]:
    """Frame i of `frames` as often as i appears in (sorted) `indices`; stops once every index is served, and
    repeats the last frame when the source ends early (fewer decodable frames than counted)."""
    want = collections.Counter(np.asarray(indices).tolist())
    emitted, last = 0, None
    for i, frame in enumerate(frames):
        last = frame
        for _ in range(want.get(i, 0)):
            emitted += 1
            yield frame
        if emitted == len(indices):
            return
    for _ in range(len(indices) - emitted):
        yield last


# ---------------------------------------------------------------------------------------- opening, decoding
def open_video(path) -> av.container.InputContainer:
    """An open container with a video stream; `VideoReadError` naming the file otherwise."""
    p = pathlib.Path(path)
    if not p.exists():
        raise VideoReadError(p, "missing file")
    if p.is_dir():
        raise VideoReadError(p, "is a directory, not a video file or .npy array")
    if p.stat().st_size == 0:
        raise VideoReadError(p, "empty file")
    try:
        container = av.open(str(p))
    except (av.error.FFmpegError, UnicodeDecodeError, OSError) as err:
        # strerror, not str(err): the latter repeats the (machine-specific) path.
        reason = getattr(err, "strerror", None) or str(err)
        raise VideoReadError(p, f"cannot open container ({type(err).__name__}: {reason})") from None
    if not container.streams.video:
        container.close()
        raise VideoReadError(p, "no video stream")
    return container


def video_info(container) -> VideoInfo:
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if stream.duration and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    elif container.duration:
        duration = container.duration / av.time_base
    else:
        duration = 0.0
    if stream.start_time is not None and stream.time_base is not None:
        start = float(stream.start_time * stream.time_base)
    else:
        start = container.start_time / av.time_base if container.start_time is not None else 0.0
    ctx = stream.codec_context
    return VideoInfo(float(rate) if rate and float(rate) > 0 else 0.0, duration, int(stream.frames or 0),
                     ctx.width, ctx.height, start)


def probe(path) -> VideoInfo:
    """Container metadata without decoding; a video without a known frame rate is an error."""
    with open_video(path) as container:
        info = video_info(container)
    if not info.source_fps:
        raise VideoReadError(path, "unknown frame rate")
    return info


class Decoding:
    """(time, av.VideoFrame) of every frame of an open container, in decoding order, counting what it decoded
    (`decoded`, `last_time`: the latest timestamp) for the truncation check."""

    def __init__(self, path, container, threads: int | str = "AUTO"):
        self.path, self.container = path, container
        self.info = video_info(container)
        self.stream = container.streams.video[0]
        if threads == "AUTO":
            self.stream.thread_type = "AUTO"
        else:
            self.stream.thread_count = threads
        self.decoded, self.last_time = 0, None

    def __iter__(self) -> Iterator[tuple[float, av.VideoFrame]]:
        rate = self.info.source_fps or 1.0
        frames = self.container.decode(self.stream)
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                return
            except av.error.FFmpegError as err:
                reason = getattr(err, "strerror", None) or str(err)
                raise VideoReadError(self.path, f"decoding failed after {self.decoded} frames ({reason})") from None
            if frame.pts is not None and frame.time_base is not None:
                t = float(frame.pts * frame.time_base) - self.info.start
            else:
                t = self.decoded / rate
            self.decoded += 1
            self.last_time = t if self.last_time is None else max(self.last_time, t)
            yield t, frame

    def truncation(self) -> str | None:
        """Why the decoded frames look cut off (None when they cover the announced video)."""
        info = self.info
        if info.duration > 0 and self.last_time is not None:
            covered = self.last_time + (1.0 / info.source_fps if info.source_fps else 0.0)
            if covered < MIN_COVERAGE * info.duration:
                return f"truncated: frames cover {covered:.2f} s of {info.duration:.2f} s"
        elif not info.duration and info.num_frames and self.decoded < MIN_COVERAGE * info.num_frames:
            return f"truncated: decoded {self.decoded} of {info.num_frames} frames"
        return None


def count_frames(path) -> int:
    """Frames in a file: its demuxed video packets (no decoding); an `.npy` array: its length."""
    path = pathlib.Path(path)
    if path.suffix.lower() == ".npy":
        return int(np.load(path, mmap_mode="r").shape[0])
    with open_video(path) as container:
        stream = container.streams.video[0]
        return sum(1 for p in container.demux(stream) if p.size)


# ------------------------------------------------------------------------------------------ conversion
@dataclasses.dataclass(frozen=True)
class DecodePlan:
    """What `iter_frames` keeps: frames on a `fps` grid, at most `max_frames`, resized to `size`."""

    fps: float  # rate of the kept frames (<= source_fps)
    size: tuple[int, int]  # (width, height) of the kept frames


def plan(info: VideoInfo, fps: float | None, max_frames: int | None, short_side: int | None) -> DecodePlan:
    """Pick the kept-frame rate: the target (or source) fps, lowered so the whole video fits `max_frames`.

    Lowering the rate instead of cutting the video keeps whole-video coverage, which the localization and
    grounding samplers need (they sample over the full duration).
    """
    rate = info.source_fps if not fps else min(fps, info.source_fps)
    if max_frames and info.duration > 0 and rate * info.duration > max_frames:
        rate = max_frames / info.duration
    return DecodePlan(fps=rate, size=downscale_size(info.width, info.height, short_side))


def iter_frames(path, fps: float | None = None, max_frames: int | None = None,
                short_side: int | None = None, threads: int = 1) -> Iterator[tuple[float, np.ndarray]]:
    """Yield `(time_seconds, rgb uint8 [H, W, 3])` of the frames dataset conversion keeps, in order.

    * `fps`: `first_at_each_tick` of a `fps` grid (None: every decoded frame, as decord counts them; the original
      loaders sample by frame index).
    * `max_frames`: lower the grid rate so the whole video fits (see `plan`), then hard cap.
    * `short_side`: downscale (area filter) so min(H, W) == short_side; smaller videos stay as they are.

    Raises `VideoReadError` (naming the file) if the file is missing, cannot be opened, has no known frame rate,
    decodes no frame, fails mid-stream, or is truncated.
    """
    with open_video(path) as container:
        decoding = Decoding(path, container, threads)
        if not decoding.info.source_fps:
            raise VideoReadError(path, "unknown frame rate")
        p = plan(decoding.info, fps, max_frames, short_side)
        width, height = p.size
        kept = 0
        # No target rate and no cap lowering it: every decoded frame, as decord indexes them (a millisecond time
        # base, e.g. WebM's, puts frame 1 of 12 fps at 0.083 s, below the 1/12 s grid tick).
        every_frame = not fps and p.fps >= decoding.info.source_fps
        for t, frame in (strictly_increasing(decoding) if every_frame else first_at_each_tick(decoding, p.fps)):
            yield t, _rgb(frame, width, height, "AREA")
            kept += 1
            if max_frames and kept >= max_frames:
                return
        if kept == 0:
            raise VideoReadError(path, "no decodable frame")
        problem = decoding.truncation()
        if problem:
            raise VideoReadError(path, problem)


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
    with open_video(path) as container:
        try:
            frame = next(container.decode(video=0), None)
        except av.error.FFmpegError as err:
            raise VideoReadError(path, f"undecodable image ({getattr(err, 'strerror', None) or err})") from None
        if frame is None:
            raise VideoReadError(path, "undecodable image")
        width, height = downscale_size(frame.width, frame.height, short_side)
        return _rgb(frame, width, height, "AREA")


# ------------------------------------------------------------------------------------------ extraction
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
        self._decoding = None
        self._array = None
        self._used = False
        if self.path.is_file() and self.path.stat().st_size:
            try:
                with open(self.path, "rb") as f:
                    head = f.read(len(NPY_MAGIC))
            except OSError as err:
                raise VideoReadError(self.path, f"cannot read file ({err.strerror or err})") from None
            if head == NPY_MAGIC or self.path.suffix.lower() == ".npy":
                self._open_npy()
                return
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
        self.kind = "video"
        self._container = open_video(self.path)
        self._decoding = Decoding(self.path, self._container)
        info = self._decoding.info
        self.width, self.height, self.num_frames = info.width, info.height, info.num_frames
        self.source_fps, self.duration = info.source_fps, info.duration

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
        raw = ((i / self.npy_fps, i) for i in range(self.num_frames)) if self.kind == "npy" \
            else non_decreasing(self._decoding)
        items = raw if self.fps is None else nearest_to_grid(raw, self.fps)
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
        problem = self._decoding.truncation() if complete and self.kind == "video" else None
        if problem:
            warnings.warn(f"{self.path}: {problem} (a cut-off file?)", TruncatedVideoWarning, stacklevel=2)

    def _convert(self, payload) -> np.ndarray:
        if self.kind == "npy":
            frame = np.array(self._array[payload])  # a copy: detach from the memory map
            return frame if self.size is None else resize_center_crop(frame, self.size)
        try:
            return _frame_to_rgb(payload, self.size)
        except Exception as err:  # noqa: BLE001 - swscale/pixel-format failures
            raise VideoReadError(self.path, f"cannot convert a decoded frame to RGB ({err})") from None

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
