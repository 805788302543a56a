"""Clip augmentation (spec §6.3-§6.7) as crop boxes + whole-clip ops, in numpy.

A crop is described by a source-pixel box (top, left, height, width) that is then resized to the output size.
Expressing "resize short side, then crop" as a box lets the decoder resize only the pixels it keeps, and one
box (and one flip decision) is shared by every frame of a clip, as in the original.
Normalisation to [-1, 1] happens on device (`loader.normalize_frames`), so everything here stays uint8.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np


class Box(NamedTuple):
    top: int
    left: int
    height: int
    width: int


def random_resized_crop_box(
    h: int,
    w: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> Box:
    """timm's RandomResizedCrop rule (§6.3): area ~ U(scale), aspect log-uniform in `ratio`, 10 tries, then a
    central crop with the aspect clamped to `ratio`."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(rng.integers(0, h - ch + 1))
            left = int(rng.integers(0, w - cw + 1))
            return Box(top, left, ch, cw)
    in_ratio = w / h
    if in_ratio < min(ratio):
        cw, ch = w, int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        ch, cw = h, int(round(h * max(ratio)))
    else:
        cw, ch = w, h
    return Box((h - ch) // 2, (w - cw) // 2, ch, cw)


def short_side_crop_box(
    h: int,
    w: int,
    rng: np.random.Generator | None,
    train: bool,
    scale_jitter: tuple[float, float] = (1.0, 1.0),
    focus: Box | None = None,
) -> Box:
    """"Resize the short side to size*s, then crop size x size" (§6.4-§6.7) as a square source box.

    s ~ U(scale_jitter) in training (s >= 1 zooms in; s = 1 is the original's plain short-side resize), s = 1
    and a centre crop in evaluation. With `focus` (VIS's PairMaskCrop), the random origin is drawn so that the
    crop overlaps that box whenever possible.
    """
    short = min(h, w)
    s = float(rng.uniform(*scale_jitter)) if train else 1.0
    side = max(1, min(short, int(round(short / max(s, 1e-6)))))
    if not train:
        return Box((h - side) // 2, (w - side) // 2, side, side)
    top_range, left_range = (0, h - side), (0, w - side)
    if focus is not None and focus.height > 0 and focus.width > 0:
        top_range = _overlap_range(focus.top, focus.height, side, h)
        left_range = _overlap_range(focus.left, focus.width, side, w)
    top = int(rng.integers(top_range[0], top_range[1] + 1))
    left = int(rng.integers(left_range[0], left_range[1] + 1))
    return Box(top, left, side, side)


def _overlap_range(start: int, length: int, side: int, limit: int) -> tuple[int, int]:
    """Origins o in [0, limit-side] with [o, o+side) overlapping [start, start+length); all if none do."""
    lo = max(0, start - side + 1)
    hi = min(limit - side, start + length - 1)
    return (lo, hi) if lo <= hi else (0, limit - side)


def mask_bbox(masks: np.ndarray) -> Box | None:
    """Bounding box of the union of bool masks [..., H, W]; None when there is no foreground."""
    union = np.asarray(masks, bool).reshape(-1, *np.shape(masks)[-2:]).any(axis=0)
    rows, cols = np.flatnonzero(union.any(axis=1)), np.flatnonzero(union.any(axis=0))
    if rows.size == 0:
        return None
    return Box(int(rows[0]), int(cols[0]), int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1))


def nearest_grid(box: Box, out_size: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Source rows/cols sampled at the centres of `stride`-pixel cells of the resized crop.

    With stride = patch size this gives targets at patch resolution ([out/stride]^2 per frame) straight from
    the full-resolution masks, the nearest-neighbour equivalent of resizing the mask and then pooling it.
    """
    n = out_size // stride
    centres = (np.arange(n) + 0.5) * stride  # In output pixels.
    rows = box.top + np.floor(centres * box.height / out_size).astype(np.int64)
    cols = box.left + np.floor(centres * box.width / out_size).astype(np.int64)
    return np.minimum(rows, box.top + box.height - 1), np.minimum(cols, box.left + box.width - 1)


def maybe_flip(clip: np.ndarray, flip: bool) -> np.ndarray:
    """Horizontal flip of frames [..., H, W, C] when `flip` (one decision for the whole clip)."""
    return np.ascontiguousarray(clip[..., ::-1, :]) if flip else clip


def flip_mask(mask: np.ndarray, flip: bool) -> np.ndarray:
    """Horizontal flip of masks [..., H, W], paired with `maybe_flip` on the frames."""
    return np.ascontiguousarray(mask[..., ::-1]) if flip else mask
