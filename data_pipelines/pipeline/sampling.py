"""Per-task frame-index sampling (spec §6), as pure numpy functions.

Every function returns int64 indices of shape [num_frames] into a video of `n` stored frames. `train=True`
draws from `rng`; `train=False` is deterministic (segment centres) so evaluation is repeatable.
"""
from __future__ import annotations

import numpy as np


def _check(n: int, num_frames: int) -> None:
    if n < 1:
        raise ValueError(f"video has no frames (n={n})")
    if num_frames < 1:
        raise ValueError(f"num_frames must be positive, got {num_frames}")


def _round_half_even(x: np.ndarray) -> np.ndarray:
    # Python's round() (used by the original loaders) rounds half to even, like np.rint.
    return np.rint(x).astype(np.int64)


def sparse_segment_indices(n: int, num_frames: int, rng: np.random.Generator | None, train: bool) -> np.ndarray:
    """TSN-style sparse sampling: Kinetics (§6.1) and localization's uniform sampling (§6.6).

    seg = max(0, (n-1)/T); segment i spans [round(seg*i), round(seg*(i+1))] (inclusive) and one frame is drawn
    from it in training; evaluation takes the segment centre.
    """
    _check(n, num_frames)
    seg = max(0.0, (n - 1) / num_frames)
    i = np.arange(num_frames)
    lo = _round_half_even(seg * i)
    hi = _round_half_even(seg * (i + 1))
    if train:
        idx = rng.integers(lo, hi + 1)  # randint(lo, hi) is inclusive in the original.
    else:
        idx = (lo + hi) // 2
    return np.minimum(idx, n - 1).astype(np.int64)


def strided_segment_indices(n: int, num_frames: int, rng: np.random.Generator | None, train: bool) -> np.ndarray:
    """Something-Something v2 (§6.2) and VIS (§6.7): avg = n // T; idx_i = i*avg + randint(0, avg-1).

    Short videos (n < T): the original SSv2 loader returns all zeros and VIS pads with leading zeros; we use the
    VIS rule for both (leading repeats of frame 0, then every frame once), which keeps time monotone.
    """
    _check(n, num_frames)
    avg = n // num_frames
    if avg > 0:
        base = np.arange(num_frames) * avg
        offs = rng.integers(0, avg, size=num_frames) if train else np.full(num_frames, (avg - 1) // 2)
        return (base + offs).astype(np.int64)
    return np.concatenate([np.zeros(num_frames - n, np.int64), np.arange(n, dtype=np.int64)])


def interval_indices(n: int, num_frames: int, rng: np.random.Generator | None, train: bool) -> np.ndarray:
    """Retrieval (§6.4): intervals = linspace(0, n, T+1).astype(int); pick one index in [a, b-2] per interval.

    If some interval is too short to choose from, fall back to sorted random distinct frames (eval: evenly
    spaced), padded with the last index when the video has fewer than T frames.
    """
    _check(n, num_frames)
    edges = np.linspace(0, n, num_frames + 1).astype(np.int64)
    a, b = edges[:-1], edges[1:]
    if np.all(b - 1 > a):
        if train:
            return rng.integers(a, b - 1).astype(np.int64)  # choice(range(a, b-1)) = [a, b-2].
        return ((a + b - 2) // 2).astype(np.int64)
    k = min(n, num_frames)
    if train:
        idx = np.sort(rng.permutation(n)[:k])
    else:
        idx = np.linspace(0, n - 1, k).astype(np.int64)
    return np.concatenate([idx, np.full(num_frames - k, idx[-1])]).astype(np.int64)


def fixfps_window(start: float, end: float, duration: float, clip_seconds: float) -> tuple[float, float]:
    """Grounding's time window (§6.5): the GT span if longer than `clip_seconds`, else a `clip_seconds` window
    centred on it and shifted inside [0, duration]."""
    if end - start > clip_seconds:
        return float(start), float(end)
    centre = 0.5 * (start + end)
    lo = centre - 0.5 * clip_seconds
    lo = min(max(lo, 0.0), max(duration - clip_seconds, 0.0))
    return float(lo), float(lo + clip_seconds)


def fixfps_indices(
    frame_times: np.ndarray, window: tuple[float, float], num_frames: int, rng: np.random.Generator | None, train: bool
) -> np.ndarray:
    """Grounding (§6.5): the window in seconds becomes frame indices, with end >= start + T; T equal segments,
    one frame per segment (randint inclusive in training, the centre in eval), clipped to n-1.

    The original converts seconds with int(t*fps); with stored frame times t_i that is the last frame with
    t_i <= t, which also holds when the converter resampled the video or the first frame is not at t=0.
    """
    times = np.asarray(frame_times, np.float64)
    n = len(times)
    _check(n, num_frames)
    s = max(int(np.searchsorted(times, window[0], side="right")) - 1, 0)
    e = max(int(np.searchsorted(times, window[1], side="right")) - 1, s + num_frames)
    edges = np.linspace(s, e, num_frames + 1)
    lo = edges[:-1].astype(np.int64)
    hi = np.maximum(edges[1:].astype(np.int64) - 1, lo)
    idx = rng.integers(lo, hi + 1) if train else (lo + hi) // 2
    return np.clip(idx, 0, n - 1).astype(np.int64)
