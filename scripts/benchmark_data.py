"""Input-pipeline throughput: decoded + augmented 16 x 224 x 224 clips per second per CPU core.

Builds Kinetics-style records (frames stored as JPEG at short side 256, the converter's usual setting) as
ArrayRecord and as indexed TFRecord shards, then measures, for each format:

  * per core: the training transform (read record, parse, sample 16 frames, decode them, random resized crop
    to 224, flip; then again with RandAugment as in the original Kinetics/SSv2 recipe) in this one process, as
    clips per CPU-second (CPU time, so other load on the machine does not inflate it), with a time split;
  * the full loader (grain chain + mp_prefetch worker processes + batching), as clips per wall-second.

and prints how many host cores one accelerator needs at --target clips/s (37 = an H100 at ViT-B/16 x 16 frames
training speed, the project's planning figure).

  python scripts/benchmark_data.py                       # synthetic textured videos
  python scripts/benchmark_data.py --videos DIR          # frames from the real videos in DIR
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from a checkout: `python scripts/...`
from data_pipelines.pipeline import loader, transforms  # noqa: E402
from data_pipelines.records import frames as jpeg  # noqa: E402
from data_pipelines.records import schema, sources  # noqa: E402
from streamformer_jax import video  # noqa: E402


def synthetic_frames(seed: int, num_frames: int, size=(340, 256)) -> np.ndarray:
    """Camera-panning textured frames: smooth structure plus fine grain, so JPEGs have realistic sizes."""
    rng = np.random.default_rng(seed)
    w, h = size
    coarse = rng.integers(0, 255, (h // 16 + 2, (w + num_frames * 2) // 16 + 2, 3)).astype(np.float32)
    big = np.kron(coarse, np.ones((16, 16, 1), np.float32))
    fine = rng.normal(0, 12, big.shape).astype(np.float32)
    scene = np.clip(big * 0.7 + fine + 30, 0, 255).astype(np.uint8)
    return np.stack([scene[:h, 2 * i : 2 * i + w] for i in range(num_frames)])


def real_frames(paths, num_frames: int) -> list[np.ndarray]:
    return [video.read_video(p, max_frames=num_frames, short_side=256)[1] for p in paths]


def make_records(clips: list[np.ndarray], fps: float = 10.0) -> list[bytes]:
    records = []
    for k, frames in enumerate(clips):
        n, h, w = frames.shape[:3]
        records.append(schema.encode_record(dict(
            task="kinetics", video_id=f"bench{k:04d}", frames=[jpeg.encode_jpeg(f) for f in frames],
            frame_times=np.arange(n) / fps, fps=fps, source_fps=fps, height=h, width=w, label=k % 400)))
    return records


def per_core(source, transform, clips: int) -> dict:
    """Clips per CPU-second of this process (one thread), with the time split."""
    rng = np.random.default_rng(0)
    for i in range(3):  # warm-up (imports, caches)
        transform.random_map(source[i % len(source)], rng)
    t_read = t_parse = 0.0
    cpu0 = time.process_time()
    for i in range(clips):
        a = time.process_time()
        data = source[i % len(source)]
        b = time.process_time()
        schema.decode_record(data)
        c = time.process_time()
        out = transform.random_map(data, rng)  # parses again: the parse time is subtracted below
        t_read += b - a
        t_parse += c - b
    cpu = time.process_time() - cpu0
    cpu_transform = cpu - t_read - t_parse  # the transform's own work: parse + decode 16 frames + crop/resize
    assert out["video"].shape == (16, 224, 224, 3)
    per_clip = (t_read + cpu_transform) / clips  # one read + one parse + decode/augment
    return {
        "clips_per_cpu_second": 1.0 / per_clip,
        "ms_per_clip": 1e3 * per_clip,
        "ms_read": 1e3 * t_read / clips,
        "ms_parse": 1e3 * t_parse / clips,
        "ms_decode_augment": 1e3 * (cpu_transform - t_parse) / clips,
    }


def loader_throughput(source, transform, workers: int, batches: int, batch_size: int) -> dict:
    ds = loader.task_dataset(source, transform, seed=0, host_batch_size=batch_size)
    with loader.BatchIterator(ds, worker_count=workers, worker_buffer_size=2) as it:
        next(it)  # worker start-up is not steady-state throughput
        t0 = time.perf_counter()
        for _ in range(batches):
            b = next(it)
        dt = time.perf_counter() - t0
    assert b["video"].shape == (batch_size, 16, 224, 224, 3)
    return {"workers": workers, "clips_per_second": batches * batch_size / dt}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", help="directory of real videos to take frames from (default: synthetic)")
    p.add_argument("--num-videos", type=int, default=12)
    p.add_argument("--frames-per-video", type=int, default=64)
    p.add_argument("--clips", type=int, default=60, help="clips timed per core measurement")
    p.add_argument("--workers", type=int, default=2, help="worker processes for the loader measurement")
    p.add_argument("--batches", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--target", type=float, default=37.0, help="clips/s one accelerator consumes")
    p.add_argument("--randaugment", default="rand-m7-n4-mstd0.5-inc1",
                   help="RandAugment spec for the second per-core measurement and the loader run ('' = off)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    if args.videos:
        paths = sorted(q for q in pathlib.Path(args.videos).iterdir() if q.suffix in (".mp4", ".avi", ".mkv", ".webm"))
        clips = real_frames(paths, args.frames_per_video)
        clips = [clips[k % len(clips)] for k in range(args.num_videos)]
        content = f"real videos from {args.videos} ({len(paths)} files)"
    else:
        clips = [synthetic_frames(k, args.frames_per_video) for k in range(args.num_videos)]
        content = "synthetic textured frames"
    records = make_records(clips)
    plain = transforms.make_transform("kinetics", transforms.ClipOptions(num_frames=16, size=224, crop="rrc"))
    full = transforms.make_transform("kinetics", transforms.ClipOptions(num_frames=16, size=224, crop="rrc",
                                                              randaugment=args.randaugment))
    shapes = sorted({c.shape[1:3] for c in clips})
    results = {"content": content, "stored_frame_sizes_hw": [list(s) for s in shapes],
               "mean_jpeg_kb": float(np.mean([len(r) for r in records]) / args.frames_per_video / 1024),
               "target_clips_per_second": args.target, "cpu_count": os.cpu_count(), "formats": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("arrayrecord", "tfrecord"):
            d = sources.write_task_records(pathlib.Path(tmp) / fmt, "kinetics", records, fmt=fmt, num_shards=2)
            src = sources.open_source(d)
            for name, transform in (("crop_flip", plain), ("crop_flip_randaugment", full)):
                r = per_core(src, transform, args.clips)
                r["cores_for_target"] = math.ceil(args.target / r["clips_per_cpu_second"])
                results["formats"][f"{fmt}/{name}"] = r
            r["loader"] = loader_throughput(src, full, args.workers, args.batches, args.batch_size)
    print(f"content: {content}; stored frames {shapes} (H, W), ~{results['mean_jpeg_kb']:.1f} KB/JPEG")
    print(f"RandAugment: {args.randaugment or 'off'}")
    print(f"{'format/augmentation':34s} {'clips/s/core':>12s} {'ms/clip':>8s} {'read':>6s} {'parse':>6s} "
          f"{'decode+aug':>10s} {'cores@' + str(args.target):>10s} {'loader clips/s':>15s}")
    for fmt, r in results["formats"].items():
        loader_rate = f"{r['loader']['clips_per_second']:10.1f} ({r['loader']['workers']} workers)" if "loader" in r else ""
        print(f"{fmt:34s} {r['clips_per_cpu_second']:12.1f} {r['ms_per_clip']:8.1f} {r['ms_read']:6.2f} "
              f"{r['ms_parse']:6.2f} {r['ms_decode_augment']:10.1f} {r['cores_for_target']:10d} {loader_rate}")
    results["load_average_after"] = os.getloadavg()
    print(f"load average {results['load_average_after']} on {os.cpu_count()} cores (loader clips/s is wall-clock "
          "and shares the machine; clips/s/core is CPU time)")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":  # grain's worker processes are spawned: keep the entry point guarded.
    main()
