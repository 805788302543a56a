"""Inference speed of the released ViT-B/16 configuration (16 x 224 x 224, batch 1).

Reports, from one run: the machine's matmul peak (a large jnp.dot), clip-forward time and achieved GFLOP/s
(801.6 GFLOP per clip, the official count) as a fraction of that peak, streaming time per frame at frame 8
and frame 64 (ring-buffer KV cache, window 16) relative to 1/16 of the clip time, and peak memory.
Ratios are what to compare: the same shared machine can be 2x slower an hour later, so every ratio is
taken against a matmul peak measured next to the timed stretch (pairwise), not against a bare time.

    python scripts/benchmark.py [--frames 16] [--size 224] [--repeats 3] [--dtype float32] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from streamformer_jax.models import config as configs
from streamformer_jax.models import streaming
from streamformer_jax.models.streamformer import init_model, normalize_pixels

CLIP_GFLOP = 801.6  # forward FLOPs of one 16x224x224 clip (official measurement, spec §0)


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return times


def matmul_peak_gflops(dtype, n: int = 4096, repeats: int = 5) -> float:
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype)
    b = jnp.asarray(np.random.default_rng(1).standard_normal((n, n)), dtype)
    dot = jax.jit(jnp.dot)
    jax.block_until_ready(dot(a, b))
    return 2 * n**3 / min(timed(lambda: dot(a, b), repeats)) / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stream-frames", type=int, default=70)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.stream_frames < 67:
        parser.error("--stream-frames must be at least 67 (per-frame time is read around frames 8 and 64)")

    cfg = configs.vit_b16(dtype=args.dtype)
    graphdef, state = nnx.split(init_model(cfg, seed=0))
    rng = np.random.default_rng(0)
    video = jnp.asarray(rng.integers(0, 256, (1, args.frames, args.size, args.size, 3), dtype=np.uint8))
    results = {"backend": jax.default_backend(), "device": str(jax.devices()[0]), "dtype": args.dtype,
               "frames": args.frames, "size": args.size}

    forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(normalize_pixels(x))["pooler_output"])
    start = time.perf_counter()
    jax.block_until_ready(forward(state, video))
    results["clip_compile_s"] = round(time.perf_counter() - start, 2)
    # The peak is measured right before each clip run and the ratio taken pairwise, so that a neighbour's
    # load on the shared machine affects both sides of each ratio alike.
    gflop = CLIP_GFLOP * (args.frames / 16) * (args.size / 224) ** 2  # scales ~linearly in tokens
    peaks, clip_times = [], []
    for _ in range(args.repeats):
        peaks.append(matmul_peak_gflops(jnp.dtype(args.dtype), repeats=3))
        clip_times.append(timed(lambda: forward(state, video), 1)[0])
    clip_s = statistics.median(clip_times)
    results.update(matmul_peak_gflops=round(max(peaks), 1), clip_s=round(clip_s, 3),
                   clip_gflops_per_s=round(gflop / clip_s, 1),
                   clip_fraction_of_matmul_peak=round(statistics.median(
                       gflop / t / p for t, p in zip(clip_times, peaks)), 3))

    def step(s, cache, frame):
        return streaming.stream_step(nnx.merge(graphdef, s), cache, normalize_pixels(frame))

    step = jax.jit(step, donate_argnums=1)
    cache = streaming.init_cache(nnx.merge(graphdef, state), 1, cfg.num_frames, args.size, args.size)
    per_frame, peak_at = [], {}
    for t in range(args.stream_frames):
        if t in (4, 60):  # a fresh peak next to each measured stretch, for load-independent ratios
            peak_at[t + 4] = matmul_peak_gflops(jnp.dtype(args.dtype), repeats=3)
        frame = video[:, t % args.frames]
        start = time.perf_counter()
        out, cache = step(state, cache, frame)
        jax.block_until_ready(out)
        per_frame.append(time.perf_counter() - start)
    around = lambda t: statistics.median(per_frame[t - 2:t + 3])
    f8, f64 = around(8), around(64)
    # work-normalised times: seconds x GFLOP/s of the machine at that moment
    work = lambda seconds, peak: seconds * peak
    clip_work = statistics.median(work(t, p) for t, p in zip(clip_times, peaks)) / args.frames
    results.update(stream_s_per_frame_at_8=round(f8, 4), stream_s_per_frame_at_64=round(f64, 4),
                   stream_at_8_vs_clip_over_frames=round(work(f8, peak_at[8]) / clip_work, 3),
                   stream_64_vs_8=round(work(f64, peak_at[64]) / work(f8, peak_at[8]), 3),
                   stream_compiles=step._cache_size())
    results["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)

    for k, v in results.items():
        print(f"{k:34s} {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
