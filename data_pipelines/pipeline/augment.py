"""Clip augmentation (spec §6.3-§6.7) as crop boxes + whole-clip ops, in numpy.

A crop is described by a source-pixel box (`records.frames.Box`: top, left, height, width) that is then resized
to the output size. Expressing "resize short side, then crop" as a box lets the decoder resize only the pixels it
keeps, and one box (and one flip decision) is shared by every frame of a clip, as in the original.
Normalisation to [-1, 1] happens on device (`streamformer_jax.models.streamformer.normalize_pixels`), so
everything here stays uint8.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

from data_pipelines.records.frames import Box


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


# ------------------------------------------------------------------------------ COCO pseudo-videos (§6.7)
PSEUDO_VIDEO_DATASETS = ("COCO",)  # record `dataset` prefixes (COCO, COCOPseudoVIS) of single-image VIS items


def is_pseudo_video(dataset: str) -> bool:
    """True for the VIS records that are one still image turned into a clip (COCO, spec §6.7)."""
    return str(dataset).upper().startswith(PSEUDO_VIDEO_DATASETS)


def rotation_matrix(angle: float, cx: float, cy: float) -> np.ndarray:
    """2x3 forward affine map (source -> destination pixel), exactly ``cv2.getRotationMatrix2D((cx, cy), angle,
    1.0)``: pixel coordinates with the origin at the centre of the top-left pixel, x to the right, y down, and a
    positive angle (degrees) turning the image counter-clockwise as displayed."""
    a = math.radians(angle)
    alpha, beta = math.cos(a), math.sin(a)
    return np.array([[alpha, beta, (1 - alpha) * cx - beta * cy],
                     [-beta, alpha, beta * cx + (1 - alpha) * cy]], np.float64)


def _pillow_affine(matrix: np.ndarray) -> tuple[float, ...]:
    """cv2-style forward matrix -> the 6 coefficients `Image.transform(AFFINE)` wants.

    cv2.warpAffine (without WARP_INVERSE_MAP) inverts the matrix and samples the source at M^-1(dst); Pillow
    takes that inverse map directly. Pillow's coordinates put pixel centres at +0.5 (cv2: at integers), so the
    inverse map src = A dst + t becomes src' = A dst' + t + 0.5 (1 - A) [1, 1] in Pillow's coordinates.
    """
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(full)[:2]
    lin, t = inv[:, :2], inv[:, 2]
    t = t + 0.5 * (np.ones(2) - lin.sum(axis=1))
    return (lin[0, 0], lin[0, 1], t[0], lin[1, 0], lin[1, 1], t[1])


def rotate_frame(rgb: np.ndarray, masks: np.ndarray, angle: float, cx: float, cy: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Rotate one frame uint8 [H, W, 3] (bilinear) and its instance masks bool [I, H, W] (nearest) by `angle`
    degrees around (cx, cy), same size, constant 0 border: cv2.warpAffine with rotation_matrix(angle, cx, cy),
    INTER_LINEAR for the image and INTER_NEAREST for the masks (§6.7), done with Pillow (no OpenCV dependency).

    Checked once against opencv-python-headless 4.14 on random rotations: masks identical; image pixels whose
    source lies inside the image within 1 level (Pillow truncates, cv2 rounds); along the rotated image border
    a one-pixel seam differs (cv2 blends the edge pixel with the border value 0, Pillow does not).
    """
    h, w = rgb.shape[:2]
    coeffs = _pillow_affine(rotation_matrix(angle, cx, cy))
    img = Image.fromarray(np.ascontiguousarray(rgb, np.uint8), "RGB")
    out = np.asarray(img.transform((w, h), Image.AFFINE, coeffs, resample=Image.BILINEAR, fillcolor=(0, 0, 0)))
    masks = np.asarray(masks, bool)
    if masks.shape[0] == 0:
        return out, masks
    # Nearest-neighbour moves whole pixels, so 8 instance masks can travel together as the bits of one byte.
    planes = np.packbits(masks, axis=0)  # uint8 [ceil(I / 8), H, W]
    moved = np.stack([np.asarray(Image.fromarray(p, "L").transform((w, h), Image.AFFINE, coeffs,
                                                                       resample=Image.NEAREST, fillcolor=0))
                      for p in planes])
    return out, np.unpackbits(moved, axis=0, count=masks.shape[0]).astype(bool)


def random_rotation(rng: np.random.Generator, h: int, w: int, max_angle: float = 15.0
                    ) -> tuple[float, float, float]:
    """(angle, cx, cy) of one pseudo-video frame (§6.7): angle ~ U(-max_angle, max_angle) degrees around the
    image centre (w / 2, h / 2) shifted by U(-1, 1) * (w // 10) and U(-1, 1) * (h // 10) pixels."""
    angle = float(rng.uniform(-max_angle, max_angle))
    cx = w / 2 + float(rng.uniform(-1.0, 1.0)) * (w // 10)
    cy = h / 2 + float(rng.uniform(-1.0, 1.0)) * (h // 10)
    return angle, cx, cy


def rotate_pseudo_video(frames: np.ndarray, masks: np.ndarray, rng: np.random.Generator, max_angle: float = 15.0
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Independent random rotation of every frame: frames uint8 [T, H, W, 3], masks bool [I, T, H, W]."""
    frames = np.asarray(frames)
    masks = np.asarray(masks, bool)
    h, w = frames.shape[1:3]
    out_frames, out_masks = np.empty_like(frames), np.empty_like(masks)
    for t in range(frames.shape[0]):
        angle, cx, cy = random_rotation(rng, h, w, max_angle)
        out_frames[t], out_masks[:, t] = rotate_frame(frames[t], masks[:, t], angle, cx, cy)
    return out_frames, out_masks
