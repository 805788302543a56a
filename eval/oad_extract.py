"""Online action detection features (MAT/LSTR input), the original protocol and a true streaming variant.

    python -m eval.oad_extract --checkpoint CKPT --videos VIDEO_DIR_OR_LIST --out FEATURE_DIR \\
        [--mode chunks|stream] [--annotation-folder data/THUMOS14 --dataset THUMOS14] [--num-shards H --shard-index h]

Protocol (`extract_oad_feature.py`, spec §7.2), mode "chunks":
  1. Decode every frame; short side resized to the model's image size, centre crop.
  2. Resample to 24 fps by index: `linspace(0, n-1, int(n / fps * 24)).astype(int)` (n decoded frames, fps
     the stream's average rate) -> N24 frames.
  3. Chunk starts `linspace(0, N24, N24 // 6).astype(int)`; a chunk is the 6 frames from its start, or the
     last 6 frames when it would run past the end.
  4. One clip forward per chunk (T = 6, time rows 0..5); the feature is the last frame's pooled vector.
  5. Saved as float32 `[N24 // 6, D]` to `OUT/<basename without extension>.npy` (the flat layout the
     MAT/LSTR code reads from its feature folder, about 4 features per second).
Mode "stream": all N24 frames go once through the streaming path (ring-buffer KV cache of `--window`
frames, default the model's frame count); the feature of a chunk is the pooled vector of the chunk's last
frame, which has seen the earlier frames through the cache (each layer attends to the last W frames, so
context reaches back L x W frames through the L layers). Frame t uses time-embedding row min(t, F - 1)
(F = the model's time rows; see `streamformer_jax.models.streaming`). Same file shape and name as "chunks";
cost and memory per frame are constant, and each frame is processed once.

Sharding over hosts: video i goes to shard i % num_shards (default shard = jax.process_index() of
jax.process_count()). Resumable: a video whose .npy exists is skipped; outputs are written atomically
(temporary name, then rename). Unreadable videos (and videos shorter than 6 frames at 24 fps) are reported
and listed in `OUT/failed.shard{h}.json`; the run continues.

Memory is bounded: frames are decoded one at a time and only the last 6 resampled frames are held.
Differences from the original: PyAV/swscale bicubic resize (the original used cv2 bilinear via its
transforms), and the frame count n is the number of frames PyAV decodes (decord's `len(vr)` in the
original; they agree for ordinary files).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import sys
from typing import Iterable, Iterator, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from streamformer_jax import cli
from streamformer_jax.api import FeatureExtractor
from streamformer_jax.video import VideoReader, VideoReadError, count_frames, index_resample, take_indices

CHUNK = 6
TARGET_FPS = 24.0
MODES = ("chunks", "stream")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".npy")


def resample_indices(n: int, fps: float, target_fps: float = TARGET_FPS) -> np.ndarray:
    """The original 24-fps resampling: linspace(0, n-1, int(n / fps * 24)).astype(int)."""
    return index_resample(n, fps, target_fps)


def chunk_ends(n24: int, chunk: int = CHUNK) -> np.ndarray:
    """Exclusive end frame of each chunk: starts linspace(0, N24, N24 // 6).astype(int); a chunk that would
    run past the end is the last `chunk` frames. Features are the pooled vectors of frames ends - 1."""
    starts = np.linspace(0, n24, n24 // chunk).astype(int)
    return np.where(starts + chunk > n24, n24, starts + chunk)


def output_name(video: str) -> str:
    """`vid_name.split('/')[-1].split('.')[0] + '.npy'`, as the original."""
    return str(video).replace(os.sep, "/").split("/")[-1].split(".")[0] + ".npy"


def resampled_frames(path, size: int, npy_fps: float = 24.0) -> tuple[int, Iterator[np.ndarray]]:
    """(N24, iterator over the N24 resampled uint8 frames [size, size, 3]). Raises VideoReadError."""
    reader = VideoReader(path, size, npy_fps=npy_fps)
    fps = reader.source_fps
    if not fps > 0:
        reader.close()
        raise VideoReadError(path, "unknown frame rate")
    try:
        n = count_frames(path)
    except VideoReadError:
        reader.close()
        raise
    except Exception as err:  # noqa: BLE001 - av errors on a file VideoReader could open
        reader.close()
        raise VideoReadError(path, f"cannot count frames ({err})") from None
    idx = resample_indices(n, fps)

    def frames():
        try:
            yield from take_indices((frame for _, frame in reader), idx)
        finally:
            reader.close()

    return len(idx), frames()


def iter_chunks(frames: Iterable[np.ndarray], n24: int, chunk: int = CHUNK) -> Iterator[np.ndarray]:
    """The protocol's chunks [chunk, H, W, 3] in order, holding only the last `chunk` frames."""
    ends = chunk_ends(n24, chunk)
    recent: collections.deque = collections.deque(maxlen=chunk)
    k = 0
    for j, frame in enumerate(frames):
        recent.append(frame)
        while k < len(ends) and ends[k] == j + 1:
            yield np.stack(recent)
            k += 1
    if k != len(ends):
        raise RuntimeError(f"expected {n24} frames, the source ended early")


class _ChunkRunner:
    """Batched clip forwards of [B, 6, S, S, 3] chunks (fixed batch: one compilation), last-frame feature."""

    def __init__(self, fx, batch_size: int):
        self.fx, self.batch = fx, batch_size

    def run(self, chunks: Iterable[np.ndarray]) -> np.ndarray:
        feats, pending = [], []

        def flush():
            x = np.stack(pending)
            if len(x) < self.batch:
                x = np.concatenate([x, np.repeat(x[-1:], self.batch - len(x), 0)])
            out = self.fx(x, return_tokens=False)["pooler_output"][:, -1]
            feats.append(out[:len(pending)])
            pending.clear()

        for c in chunks:
            pending.append(c)
            if len(pending) == self.batch:
                flush()
        if pending:
            flush()
        return np.concatenate(feats).astype(np.float32)


def extract_video(fx, path, *, mode: str = "chunks", window: int | None = None, batch_size: int = 16,
                  npy_fps: float = 24.0) -> np.ndarray:
    """Features [N24 // 6, D] float32 of one video. Raises VideoReadError."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    n24, frames = resampled_frames(path, fx.config.image_size, npy_fps)
    if n24 // CHUNK == 0:
        raise VideoReadError(path, f"too short: {n24} frames at 24 fps, the protocol needs at least {CHUNK}")
    if mode == "chunks":
        return _ChunkRunner(fx, batch_size).run(iter_chunks(frames, n24))
    ends = chunk_ends(n24)
    need = collections.Counter((ends - 1).tolist())
    stream = fx.stream(window)
    out = []
    for j, frame in enumerate(frames):
        pooled = stream.push(frame)["pooler_output"]
        out.extend([pooled] * need.get(j, 0))
    return np.stack(out).astype(np.float32)


def _save_npy(path: pathlib.Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def video_list_from_annotations(folder, dataset: str = "THUMOS14") -> list[str]:
    """Keys of train.json, val.json (+ THUMOS's test/video_test_0001292.mp4) and test.json, in that order."""
    folder = pathlib.Path(folder)
    vids: list[str] = []
    for name in ("train.json", "val.json", "test.json"):
        p = folder / name
        if not p.exists():
            if name == "test.json":
                continue
            raise FileNotFoundError(f"{p}: missing annotation file")
        vids.extend(json.loads(p.read_text()).keys())
        if name == "val.json" and dataset == "THUMOS14":
            vids.append("test/video_test_0001292.mp4")  # missing from the OAD val set; the original adds it
    return vids


def list_videos(spec, root: str | os.PathLike = "") -> list[str]:
    """A directory (video files, sorted, recursive) or a text file with one path per line."""
    p = pathlib.Path(spec)
    if p.is_dir():
        return sorted(str(q) for q in p.rglob("*") if q.suffix.lower() in VIDEO_SUFFIXES and q.is_file())
    lines = [line.strip() for line in p.read_text().splitlines() if line.strip()]
    return [str(pathlib.Path(root) / line) if root else line for line in lines]


def extract_all(fx, videos: Sequence[str], out_dir, *, mode: str = "chunks", window: int | None = None,
                batch_size: int = 16, num_shards: int | None = None, shard_index: int | None = None,
                progress: bool = True, npy_fps: float = 24.0) -> dict:
    """Extract this shard's videos into `out_dir`; skip finished ones. Returns a summary dict."""
    num_shards = jax.process_count() if num_shards is None else int(num_shards)
    shard_index = jax.process_index() if shard_index is None else int(shard_index)
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index {shard_index} not in [0, {num_shards})")
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mine = [v for i, v in enumerate(videos) if i % num_shards == shard_index]
    names = collections.Counter(output_name(v) for v in videos)
    clashes = sorted(n for n, c in names.items() if c > 1)
    if clashes:
        raise ValueError(f"several videos map to the same output file: {clashes[:5]}")
    done, skipped, failed = [], [], []
    bar = tqdm(mine, unit="video", desc=f"oad {mode} shard {shard_index}/{num_shards}", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    for video in bar:
        target = out_dir / output_name(video)
        if target.exists():
            skipped.append(video)
            continue
        try:
            feats = extract_video(fx, video, mode=mode, window=window, batch_size=batch_size, npy_fps=npy_fps)
        except VideoReadError as err:
            failed.append({"video": str(video), "error": str(err)})
            print(f"warning: skipping unreadable video: {err}", file=sys.stderr)
            continue
        _save_npy(target, feats)
        done.append(video)
    bar.close()
    report = {"mode": mode, "shard": shard_index, "num_shards": num_shards, "extracted": len(done),
              "skipped_existing": len(skipped), "failed": failed}
    tmp = out_dir / f".failed.shard{shard_index}.json.tmp"
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, out_dir / f"failed.shard{shard_index}.json")
    return report


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m eval.oad_extract", description=__doc__.split("\n\n")[0])
    cli.add_checkpoint(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--videos", help="a directory of videos or a text file with one path per line")
    src.add_argument("--annotation-folder", help="folder with train.json / val.json / test.json (the original)")
    p.add_argument("--dataset", default="THUMOS14", choices=("THUMOS14", "TVSeries"))
    p.add_argument("--data-path", default="", help="root the listed video paths are relative to")
    cli.add_out(p, help="feature folder (one <video>.npy per video)", metavar="DIR")
    p.add_argument("--mode", choices=MODES, default="chunks")
    p.add_argument("--window", type=cli.positive(int), default=None,
                   help="stream mode: KV-cache window (default num_frames)")
    p.add_argument("--batch-size", type=cli.positive(int), default=16, help="chunks per forward (chunks mode)")
    p.add_argument("--num-shards", type=int, default=None)
    p.add_argument("--shard-index", type=int, default=None)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None)
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return cli.run(lambda: _main(args), interrupted="interrupted: finished videos are kept; run again to resume")


def _main(args) -> int:
    if args.videos:
        videos = list_videos(args.videos, args.data_path)
    else:
        videos = video_list_from_annotations(args.annotation_folder, args.dataset)
        videos = [str(pathlib.Path(args.data_path) / v) for v in videos]
    fx = FeatureExtractor.from_checkpoint(args.checkpoint, dtype=args.dtype)
    rep = extract_all(fx, videos, args.out, mode=args.mode, window=args.window, batch_size=args.batch_size,
                      num_shards=args.num_shards, shard_index=args.shard_index, progress=not args.no_progress)
    print(f"shard {rep['shard']}/{rep['num_shards']}: {rep['extracted']} extracted, {rep['skipped_existing']} "
          f"already done, {len(rep['failed'])} unreadable (listed in {args.out}/failed.shard{rep['shard']}.json)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
