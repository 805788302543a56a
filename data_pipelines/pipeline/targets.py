"""Per-task training targets (spec §5.1, §6), as pure numpy functions."""
from __future__ import annotations

from typing import Sequence

import numpy as np

BACKGROUND = -1  # Ignored by the localization / VIS losses (the heads use ignore_index = -1).


def select_caption(captions: Sequence[str], rng: np.random.Generator | None, train: bool) -> str:
    """Retrieval and grounding: a random caption in training (§6.4), the first one in evaluation."""
    if len(captions) == 0:
        raise ValueError("record has no captions")
    if train:
        return str(captions[int(rng.integers(len(captions)))])
    return str(captions[0])


def row_windows(row_spans, relevant, owner, row: int) -> np.ndarray:
    """The windows where annotation row `row` is positive (grounding, localization; spec §6.5-§6.6): the row's
    own [start, end] (`row_spans[row]`) when it has at most one relevant window, else each of its relevant
    windows (`relevant[owner == row]`), the original's `len(relevant_windows) <= 1` rule."""
    own = np.asarray(row_spans, np.float64).reshape(-1, 2)[row:row + 1]
    rel = np.asarray(relevant, np.float64).reshape(-1, 2)
    owner = np.asarray(owner, np.int64).reshape(-1)
    return rel[owner == row] if np.count_nonzero(owner == row) > 1 else own


def window_membership(times: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """Grounding labels (§6.5): float32 [T], 1 where start <= t <= end for any window, else 0."""
    t = np.asarray(times, np.float64)[:, None]
    w = np.asarray(windows, np.float64).reshape(-1, 2)
    inside = (w[None, :, 0] <= t) & (t <= w[None, :, 1])
    return inside.any(axis=1).astype(np.float32)


def row_class_labels(times: np.ndarray, windows: np.ndarray, label: int) -> np.ndarray:
    """Localization labels (§6.6): int32 [T], the row's class id inside its windows, -1 elsewhere (only the
    sampled row's class is positive, as the original's uniform sampler)."""
    inside = window_membership(times, windows) > 0
    return np.where(inside, np.int32(label), np.int32(BACKGROUND)).astype(np.int32)


def frame_segment_labels(times: np.ndarray, segments: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Localization labels (§6.6): int32 [T], the class id of the segment containing each frame, else -1.

    Records hold every segment of a video (the original has one row per action); where segments overlap, the
    later one wins, mirroring how the VIS loader paints later instances over earlier ones.
    """
    t = np.asarray(times, np.float64)
    out = np.full(t.shape, BACKGROUND, np.int32)
    segs = np.asarray(segments, np.float64).reshape(-1, 2)
    for (s, e), c in zip(segs, np.asarray(labels).reshape(-1)):
        out[(s <= t) & (t <= e)] = int(c)
    return out


def category_map(masks: np.ndarray, categories: np.ndarray) -> np.ndarray:
    """VIS target (§6.7): int32 [..., H, W] with the category value on each instance's pixels, -1 elsewhere.

    `masks` is bool [N, ..., H, W] (one per instance). As the original: the masks of one category are OR-ed, and
    the categories are painted in the order they first appear, a later category over an earlier one. Background
    is -1 rather than the original's 0 so that a category valued 0 (COCO's "person") stays a real class.
    """
    masks = np.asarray(masks, bool)
    out = np.full(masks.shape[1:], BACKGROUND, np.int32)
    union: dict[int, np.ndarray] = {}
    for m, c in zip(masks, np.asarray(categories).reshape(-1)):
        union[int(c)] = union[int(c)] | m if int(c) in union else m
    for c, m in union.items():
        out[m] = c
    return out
