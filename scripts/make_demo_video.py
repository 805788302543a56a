"""Write a small synthetic but real encoded video (H.264/MPEG-4 via PyAV) for demos without downloads.

    python scripts/make_demo_video.py demo.mp4 [--frames 48] [--size 96] [--fps 12]

A coloured square moves across a slowly changing gradient, so features change over time.
"""
from __future__ import annotations

import argparse
import fractions

import av
import numpy as np


def make_frames(num_frames: int, size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    frames = np.empty((num_frames, size, size, 3), np.uint8)
    side = max(size // 5, 2)
    for t in range(num_frames):
        phase = t / max(num_frames - 1, 1)
        img = np.stack([xx, yy, 0.5 + 0.5 * np.sin(2 * np.pi * (xx + phase))], -1) * 200
        x0 = int(phase * (size - side))
        img[size // 3:size // 3 + side, x0:x0 + side] = (250, 40, 40)
        frames[t] = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
    return frames


def write_video(path: str, frames: np.ndarray, fps: int) -> None:
    with av.open(path, "w") as container:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        stream = container.add_stream(codec, rate=fractions.Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--fps", type=int, default=12)
    args = parser.parse_args()
    write_video(args.out, make_frames(args.frames, args.size), args.fps)
    print(f"wrote {args.out}: {args.frames} frames, {args.size}x{args.size}, {args.fps} fps")


if __name__ == "__main__":
    main()
