"""The original's test-mode clip of each zero-shot task: which frames, and how they are resized.

* retrieval: T frames, one from each of the T intervals `linspace(0, n, T+1).astype(int)` (the interval's middle
  frame, `(a + b - 1) // 2`, the UMT "middle" rule; videos shorter than T frames give every frame once, then the
  last one repeated); a video with `trim_seconds` (the original's `trimmed30s`, DiDeMo: 30) or of a dataset in
  `trim_datasets` keeps only its first 30 s (n = int(30 fps)); each frame resized to S x S (bicubic,
  antialiased, aspect not kept).
* grounding, localization: T frames `linspace(0, n-1, T).astype(int)` over the whole video, timestamps
  round(t, 2) (record frames carry their source times), short side resized to S (bilinear), centre-cropped.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from PIL import Image

from streamformer_jax.video import resized_shape
from streamformer_jax.zero_shot.items import EvalItem, Frames

TRIM30_DATASETS = ("DiDeMo",)  # only the first 30 s are used (the original's `trimmed30s`)
TRIM_SECONDS = 30.0


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


def square_resize(img: Image.Image, size: int) -> np.ndarray:
    """Retrieval's test transform: Resize((S, S)), bicubic with antialiasing (PIL widens the filter when
    shrinking), aspect ratio not kept."""
    if img.size == (size, size):
        return np.asarray(img)
    return np.asarray(img.resize((size, size), Image.BICUBIC))


def short_side_center_crop(img: Image.Image, size: int) -> np.ndarray:
    """Grounding/localization's validation transform: short side -> S (bilinear, PIL's antialiased filter as
    torchvision's Resize on PIL images), centre crop S x S."""
    w, h = img.size
    if min(w, h) != size:
        h, w = resized_shape(h, w, size)
        img = img.resize((w, h), Image.BILINEAR)
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)))


@dataclasses.dataclass
class Clip:
    frames: np.ndarray  # uint8 [T, S, S, 3]
    timestamps: np.ndarray  # float64 [T]
    duration: float


def make_clip(task: str, item: EvalItem, num_frames: int, size: int,
              trim_datasets: Sequence[str] = TRIM30_DATASETS) -> Clip:
    """The item's test clip for `task` (see the module docstring); each selected frame is decoded once."""
    frames = item.load()
    if task == "retrieval":
        trim = float(item.fields.get("trim_seconds") or 0.0) or (TRIM_SECONDS if item.dataset in trim_datasets else 0.0)
        n = trimmed_length(frames, trim) if trim > 0 else len(frames.times)
        idx = retrieval_indices(n, num_frames)
        transform = square_resize
    else:
        idx = uniform_indices(len(frames.times), num_frames)
        transform = short_side_center_crop
    uniq, inverse = np.unique(idx, return_inverse=True)
    imgs = frames.decode(uniq)
    pixels = np.stack([transform(im, size) for im in imgs])[inverse]
    return Clip(pixels, np.round(frames.times[idx], 2), frames.duration)
