"""COCO RLE in its annotation forms: uncompressed ``{"counts": [int...]}`` and compressed ``{"counts": str}``.

The compressed string is COCO's: each run length, minus the run two before it (from the 4th on), written as
little-endian 5-bit groups in characters ``chr(48 + group | 0x20 if more follow)``, sign-extended from bit 4.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from data_pipelines.records.schema import rle_decode


def string_to_counts(s: str | bytes) -> list[int]:
    if isinstance(s, bytes):
        s = s.decode("ascii")
    counts: list[int] = []
    p = 0
    while p < len(s):
        value, shift, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            p += 1
            shift += 5
            if not more and c & 0x10:
                value -= 1 << shift  # sign-extend
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def counts_to_string(counts) -> str:
    out = []
    counts = [int(c) for c in counts]
    for i, value in enumerate(counts):
        if i > 2:
            value -= counts[i - 2]
        more = True
        while more:
            c = value & 0x1F
            value >>= 5  # arithmetic shift: negative values end at -1
            more = value != -1 if c & 0x10 else value != 0
            out.append(chr(c + 48 + (0x20 if more else 0)))
    return "".join(out)


def polygons_to_mask(polygons, height: int, width: int) -> np.ndarray:
    """COCO polygons ``[[x1, y1, x2, y2, ...], ...]`` -> uint8 [H, W] (union), rasterised with Pillow."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in polygons:
        if len(poly) >= 6:
            draw.polygon([(float(poly[i]), float(poly[i + 1])) for i in range(0, len(poly) - 1, 2)], fill=1)
    return np.asarray(canvas, np.uint8)


def decode_segmentation(seg, height: int, width: int) -> np.ndarray | None:
    """A YTVIS/LV-VIS/COCO segmentation -> uint8 [H, W], or None when the instance is absent.

    ``height``/``width`` is the size of the image the annotation refers to (used by polygons and by RLEs
    without a ``size``)."""
    if seg is None:
        return None
    if isinstance(seg, list):
        return polygons_to_mask(seg, height, width)
    if not isinstance(seg, dict) or "counts" not in seg:
        raise ValueError(f"unsupported segmentation {str(seg)[:40]}")
    h, w = seg.get("size", (height, width))
    counts = seg["counts"]
    if isinstance(counts, (str, bytes)):
        counts = string_to_counts(counts)
    return rle_decode(counts, int(h), int(w))
