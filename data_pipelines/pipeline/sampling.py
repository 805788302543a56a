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


PAD_SHORT = "pad"  # VIS (§6.7): a video of n < T frames -> [0] * (T - n) + [0, 1, ..., n-1]
ZEROS_SHORT = "zeros"  # SSv2 (§6.2): a video of n < T frames -> T copies of frame 0


def strided_segment_indices(n: int, num_frames: int, rng: np.random.Generator | None, train: bool,
                            short: str = PAD_SHORT) -> np.ndarray:
    """Something-Something v2 (§6.2) and VIS (§6.7): avg = n // T; idx_i = i*avg + randint(0, avg-1).

    Short videos (n < T), as the original loaders: `short="pad"` (VIS) repeats frame 0 then takes every frame
    once; `short="zeros"` (SSv2) takes frame 0 T times.
    """
    _check(n, num_frames)
    avg = n // num_frames
    if avg > 0:
        base = np.arange(num_frames) * avg
        offs = rng.integers(0, avg, size=num_frames) if train else np.full(num_frames, (avg - 1) // 2)
        return (base + offs).astype(np.int64)
    if short == ZEROS_SHORT:
        return np.zeros(num_frames, np.int64)
    if short != PAD_SHORT:
        raise ValueError(f"short must be {PAD_SHORT!r} or {ZEROS_SHORT!r}, got {short!r}")
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
    """Grounding's time window (§6.5), the original's rule: the GT span if longer than `clip_seconds`, else a
    `clip_seconds` window centred on it; [0, clip] when that starts before 0, else [duration - clip, duration]
    when it ends after the video."""
    if end - start > clip_seconds:
        return float(start), float(end)
    centre, half = (start + end) / 2, clip_seconds / 2
    if centre - half < 0:
        return 0.0, float(clip_seconds)
    if centre + half > duration:
        return float(duration - clip_seconds), float(duration)
    return float(centre - half), float(centre + half)


def fixfps_indices(n: int, fps: float, window: tuple[float, float], num_frames: int,
                   rng: np.random.Generator | None, train: bool) -> np.ndarray:
    """Grounding (§6.5), the original's `loadvideo_decord_fixfps` on the n stored frames at `fps`:
    s = int(lo*fps), e = int(hi*fps), e = max(e, s + T); seg = (e - s) / T; segment i is [int(s + seg*i),
    int(s + seg*(i+1))], one frame drawn from it *inclusive of both ends* (the centre in eval), then min(., n-1).

    Deviation: an index below 0 (a window shifted to [duration - clip, duration] of a video shorter than the
    clip) is clamped to 0; the original's decord wraps it to the end of the video while its timestamp stays
    negative.
    """
    _check(n, num_frames)
    s, e = int(window[0] * fps), int(window[1] * fps)
    if e - s < num_frames:
        e = s + num_frames
    seg = (e - s) / num_frames
    i = np.arange(num_frames)
    lo = np.array([int(s + seg * k) for k in i], np.int64)
    hi = np.array([int(s + seg * (k + 1)) for k in i], np.int64)
    hi = np.maximum(hi, lo)  # b <= a -> a (the original's `else seg_start`)
    idx = rng.integers(lo, hi + 1) if train else (lo + hi) // 2
    return np.clip(idx, 0, n - 1).astype(np.int64)


def rounded_times(times) -> np.ndarray:
    """The original's frame timestamps `round(idx / fps, 2)` (Python's round, to 2 decimals), from the stored
    frame times (equal to idx / fps when the record keeps every frame of a constant-rate video)."""
    return np.array([round(float(t), 2) for t in np.asarray(times, np.float64)], np.float64)
