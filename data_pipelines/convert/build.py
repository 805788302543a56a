"""Turn one annotation :class:`Item` into one encoded record (runs inside the worker processes)."""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from data_pipelines.annotations import Item
from data_pipelines.annotations.coco_rle import decode_segmentation
from data_pipelines.records import frames as jpeg
from data_pipelines.records import schema
from streamformer_jax import video


@dataclasses.dataclass(frozen=True)
class Options:
    fps: float | None = None  # target rate of stored frames (None: every source frame)
    max_frames: int | None = None  # cap; the rate is lowered so the whole video fits
    short_side: int | None = None  # downscale so min(H, W) equals this (never upscale)
    vis_fps: float = 6.0  # nominal rate of VIS image sequences (YouTube-VIS annotates every 5th of 30 fps)
    jpeg_quality: int = 90  # libjpeg quality 1..95

    def __post_init__(self):
        # Normalise types: Options(fps=4) and Options(fps=4.0) must fingerprint (and serialise) the same.
        for name in ("fps", "vis_fps"):
            value = getattr(self, name)
            object.__setattr__(self, name, None if value is None else float(value))
        for name in ("max_frames", "short_side", "jpeg_quality"):
            value = getattr(self, name)
            object.__setattr__(self, name, None if value is None else int(value))
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {self.max_frames}")


class SegmentationError(ValueError):
    """A VIS segmentation that does not decode to a mask of its frame (the item is skipped with this reason)."""


@dataclasses.dataclass(frozen=True)
class Result:
    """A record (``data``) or the reason the item was skipped. ``num_frames`` feeds the counts."""

    data: bytes | None
    reason: str | None = None
    num_frames: int = 0


def _video_example(item: Item, opts: Options) -> dict:
    info = video.probe(item.source)
    rate = video.plan(info, opts.fps, opts.max_frames, opts.short_side).fps
    times, frames = [], []
    for t, rgb in video.iter_frames(item.source, opts.fps, opts.max_frames, opts.short_side):
        times.append(t)
        frames.append(jpeg.encode_jpeg(rgb, opts.jpeg_quality))
        height, width = rgb.shape[:2]
    duration = item.duration if item.duration is not None else info.duration
    return {"frames": frames, "frame_times": np.asarray(times), "fps": rate, "source_fps": info.source_fps,
            "height": height, "width": width, "duration": duration or 0.0}


def _resize_nearest(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    rows = np.minimum((np.arange(height) + 0.5) * mask.shape[0] / height, mask.shape[0] - 1).astype(np.int64)
    cols = np.minimum((np.arange(width) + 0.5) * mask.shape[1] / width, mask.shape[1] - 1).astype(np.int64)
    return mask[rows][:, cols]


def _image_sequence_example(item: Item, opts: Options) -> dict:
    """Frames from image files (VIS sequences, COCO images), with the instance masks of ``item.masks``."""
    n = len(item.frame_files)
    keep = np.arange(n)
    if opts.max_frames and n > opts.max_frames:  # even subsample keeps the whole sequence covered
        keep = np.unique(np.round(np.linspace(0, n - 1, opts.max_frames)).astype(np.int64))
    frames, masks = [], []
    # Annotations refer to the original image size (polygons need it); frames may be stored smaller.
    src = video.probe(item.frame_files[int(keep[0])])
    for i in keep:
        rgb = video.read_image(item.frame_files[i], opts.short_side)
        frames.append(jpeg.encode_jpeg(rgb, opts.jpeg_quality))
        height, width = rgb.shape[:2]
    for k, segs in enumerate(item.masks):
        per_frame = []
        for i in keep:
            try:
                m = decode_segmentation(segs[i], src.height, src.width)
            except (ValueError, TypeError, KeyError) as err:
                raise SegmentationError(f"malformed segmentation (instance {k}, frame {int(i)}): {err}") from None
            if m is None:
                m = np.zeros((height, width), np.uint8)
            elif m.shape != (height, width):
                m = _resize_nearest(m, height, width)
            per_frame.append(m)
        masks.append(per_frame)
    lengths, counts = schema.encode_masks(np.asarray(masks, np.uint8).reshape(len(masks), len(keep), height, width))
    fps = opts.vis_fps
    return {"frames": frames, "frame_times": keep / fps, "fps": fps, "source_fps": fps, "height": height,
            "width": width, "duration": n / fps, "mask_rle_lengths": lengths, "mask_rle_counts": counts}


def build_example(item: Item, task: str, opts: Options) -> dict:
    """The schema dict of one item (raises VideoReadError / ValueError for unusable inputs)."""
    base = _image_sequence_example(item, opts) if item.frame_files else _video_example(item, opts)
    # What was decoded: the video file, or the folder of an image sequence.
    source = os.path.dirname(item.frame_files[0]) if len(item.frame_files) > 1 else item.source
    return {"task": task, "video_id": item.video_id, "dataset": item.dataset, "source": source, **base,
            **item.fields}


def run_item(item: Item, task: str, opts: Options) -> Result:
    """Worker entry point: never raises for a bad input, it reports the reason instead."""
    if item.problem is not None:  # the parser already knows this item cannot be converted
        return Result(None, item.problem)
    try:
        example = build_example(item, task, opts)
        return Result(schema.encode_record(example), num_frames=len(example["frames"]))
    except video.VideoReadError as err:
        # Image sequences: say which frame file failed (the skip entry names the sequence's first file).
        reason = err.reason if err.path == item.source else f"{os.path.basename(err.path)}: {err.reason}"
        return Result(None, reason)
    except SegmentationError as err:
        return Result(None, str(err))
    except (ValueError, OSError) as err:  # unusable masks, unreadable image, etc.: skip, keep the reason
        return Result(None, f"{type(err).__name__}: {err}")
