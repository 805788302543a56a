"""Helpers that write real, tiny encoded videos for data tests (PyAV; no fixtures on disk needed)."""
from __future__ import annotations

import importlib
import pathlib
from fractions import Fraction

import av
import numpy as np
import pytest

from conftest import required


INDEX_BITS = 6  # frame_index_of reads indices 0..63


def frame_pattern(index: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """RGB uint8 [H, W, 3] for frame ``index``: the index in binary as bright/dark stripes in the bottom
    half (robust to lossy coding and resizing), and a moving coloured square in the top quarter.

    A test can tell which source frame a decoded frame came from with :func:`frame_index_of`.
    """
    width, height = size
    img = np.full((height, width, 3), 128, np.uint8)
    stripe = width // INDEX_BITS
    for bit in range(INDEX_BITS):
        img[height // 2:, bit * stripe:(bit + 1) * stripe] = 230 if (index >> bit) & 1 else 25
    rng = np.random.default_rng(seed)
    color = rng.integers(0, 255, 3, dtype=np.uint8)
    side = max(2, min(width, height) // 4)
    x = (2 * index) % max(1, width - side)
    img[:side, x:x + side] = color
    return img


def frame_index_of(rgb: np.ndarray) -> int:
    """Inverse of :func:`frame_pattern` (reads the centre of each stripe, any frame size)."""
    height, width = rgb.shape[:2]
    stripe = width / INDEX_BITS
    rows = rgb[height // 2 + height // 8: height - height // 8]
    value = 0
    for bit in range(INDEX_BITS):
        lo, hi = int(bit * stripe + stripe / 4), int((bit + 1) * stripe - stripe / 4)
        if rows[:, lo:max(hi, lo + 1)].mean() > 128:
            value |= 1 << bit
    return value


def make_test_video(path, num_frames: int = 16, size: tuple[int, int] = (64, 48), fps: float = 8,
                    seed: int = 0, codec: str = "mpeg4") -> pathlib.Path:
    """Write a real encoded video (``size`` = (width, height)); frame i is shown at time i / fps.

    ``codec``: "mpeg4" (fast, default) or "libx264" (h264, like most datasets). The container follows the
    suffix of ``path`` (.mp4, .avi, .mkv...).
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = 1 / rate
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "bf": "0"}
        else:
            stream.options = {"qscale": "2"}
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(frame_pattern(i, size, seed), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def truncate_file(path, keep_fraction: float = 0.3) -> pathlib.Path:
    """Cut a file to a fraction of its bytes (a corrupt, half-downloaded video)."""
    path = pathlib.Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep_fraction))])
    return path


def require_module(name: str):
    """Import an optional dependency or skip the test module, unless it is required in this run
    (`STREAMFORMER_REQUIRE`, see conftest): then a missing module is an import error, not a skip."""
    if required(name):
        return importlib.import_module(name)
    return pytest.importorskip(name, reason=f"optional dependency {name} is not installed")
