"""Features for a whole corpus of videos: `python -m streamformer_jax.extract --videos ... --out DIR`.

    python -m streamformer_jax.extract --checkpoint CKPT --videos 'data/k400/**/*.mp4' --out feats \\
        [--mode stream|clip] [--window W] [--fps F] [--slots 8] [--workers 4] [--dtype float32|bfloat16] \\
        [--shard I/N] [--no-tokens] [--batched]

Python:
    from streamformer_jax.corpus import extract_corpus, list_videos
    videos, root = list_videos("data/k400")
    summary = extract_corpus(fx, videos, "feats", root=root, slots=8)

Inputs (`--videos`): a directory (its video files, recursively, sorted), a glob pattern (`**` recurses; quote it),
or a text file with one path per line (relative paths are taken from `--root`, default the current directory).

Outputs: `DIR/<path of the video relative to the root, suffix replaced by .npz>`, with the same arrays and
timestamps as the single-video form (`pooler_output` [T, D], `last_hidden_state` [T, P, D] unless
`--no-tokens`, `timestamps` [T] float64). The root is `--root`, or else the directory given, the glob's leading
directories, or the deepest directory holding every listed file. Each archive is written under a temporary name
and renamed when complete; a rerun skips the videos whose archive exists (and refuses to mix in different
options: `DIR/extraction.json` records them). Videos that cannot be read, or fail while decoding, are skipped
and listed with the reason in `DIR/report.json`; the run goes on.

Scheduling: a stream pool (`StreamPool`) of `--slots` slots runs the videos; when a video ends, its slot takes
the next one in the list, so short and long videos share device calls without waiting for each other. Clip mode
takes one clip of `--window` frames per slot per step in the same way. Videos are decoded ahead, in `--workers`
background threads (PyAV releases the GIL while decoding), so decoding overlaps the model.

Reproducibility: by default the pool is batch-invariant (each slot computed exactly as a lone stream), so a
video's archive is byte-for-byte the single-video form's, whatever the slot count, shard count or worker count,
whatever it shares its calls with, and across a killed and resumed run. `--batched` runs the slots as one
batched forward instead (the faster form on accelerators); features then agree to float32 rounding (XLA picks
matmul kernels by matrix size), not bit for bit.

Several processes: `--shard I/N` takes the videos at positions I, I+N, I+2N, ... of the list (a SLURM array);
under `jax.distributed` (a TPU pod, a multi-task SLURM step) the default share is the process index out of the
process count. Every process writes its own `DIR/report.I-of-N.json` and, under a file lock, merges all of them
into `DIR/report.json`.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import glob
import json
import os
import pathlib
import re
import shutil
import sys
import tempfile
import time
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from streamformer_jax.decode_pool import END, DecodePool
from streamformer_jax.extract import MODES, ExtractError, _load_extractor, _NpzSpool
from streamformer_jax.video import VideoReader, VideoReadError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".ts", ".npy")
_TMP_DIR = re.compile(r"^\.(?P<name>.+\.npz)\.[a-z0-9_]+\.tmp$")  # tempfile.mkdtemp(prefix=".NAME.", suffix=".tmp")
MANIFEST = "extraction.json"
REPORT = "report.json"


# -- the list of videos -------------------------------------------------------------------------------------------
def list_videos(spec: str | os.PathLike, root: str | os.PathLike | None = None) -> tuple[list[pathlib.Path], pathlib.Path]:
    """(videos, root) from a directory, a glob pattern or a text file of paths; see the module doc.

    Raises ExtractError when nothing matches or the list file cannot be read.
    """
    spec = str(spec)
    path = pathlib.Path(spec)
    if path.is_dir():
        videos = sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
        base = path
    elif glob.has_magic(spec):
        videos = sorted(pathlib.Path(p) for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
        fixed = []
        for part in pathlib.Path(spec).parts[:-1]:
            if glob.has_magic(part):
                break
            fixed.append(part)
        base = pathlib.Path(*fixed) if fixed else pathlib.Path(".")
    elif path.is_file():
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise ExtractError(f"{path}: cannot read the list of videos ({err})") from None
        prefix = pathlib.Path(root) if root is not None else pathlib.Path(".")
        videos = [prefix / line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        base = None
    else:
        raise ExtractError(f"{spec}: no such directory or list file, and no glob pattern")
    videos = list(dict.fromkeys(pathlib.Path(os.path.abspath(v)) for v in videos))  # absolute, duplicates dropped
    if not videos:
        raise ExtractError(f"{spec}: no videos found")
    if root is not None:
        base = pathlib.Path(root)
    elif base is None:
        base = pathlib.Path(os.path.commonpath([str(v.parent) for v in videos]))
    return videos, pathlib.Path(os.path.abspath(base))


def output_names(videos: Sequence[pathlib.Path], root: pathlib.Path) -> list[pathlib.Path]:
    """Each video's archive path relative to the output directory: its path under `root`, suffix .npz."""
    names, outside = [], []
    for v in videos:
        try:
            rel = pathlib.Path(v).relative_to(root)
        except ValueError:
            outside.append(str(v))
            continue
        names.append(rel.with_suffix(".npz"))
    if outside:
        raise ExtractError(f"{len(outside)} video(s) are not under the root {root} (e.g. {outside[0]}); "
                           f"pass --root")
    clashes = [n for n, c in collections.Counter(names).items() if c > 1]
    if clashes:
        raise ExtractError(f"several videos map to the same output file (same name, different suffix): "
                           f"{[str(c) for c in clashes[:5]]}")
    return names


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N) with 0 <= I < N."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m or not int(m.group(1)) < int(m.group(2)):
        raise ValueError(f"expected I/N with 0 <= I < N (e.g. 0/4), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def default_shard() -> tuple[int, int]:
    """(process index, process count) under jax.distributed; (0, 1) otherwise."""
    import jax

    return jax.process_index(), jax.process_count()


# -- options, manifest, report ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Options:
    mode: str = "stream"
    window: int | None = None
    fps: float | None = None
    npy_fps: float = 1.0
    max_frames: int | None = None
    return_tokens: bool = True
    compress: bool = False

    def manifest(self, fx) -> dict:
        """What determines the archives' content (not the scheduling: slots, workers and shards are free)."""
        cfg = dataclasses.asdict(fx.config)
        window = fx.config.num_frames if self.window is None else int(self.window)
        return {"mode": self.mode, "window": window, "fps": self.fps, "npy_fps": self.npy_fps,
                "max_frames": self.max_frames, "tokens": self.return_tokens, "model": cfg}


def _check_manifest(out_dir: pathlib.Path, manifest: dict) -> None:
    path = out_dir / MANIFEST
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ExtractError(f"{path}: unreadable ({err}); remove it to start afresh") from None
        if old != manifest:
            diff = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
            raise ExtractError(f"{out_dir} holds features extracted with other options ({', '.join(diff)} "
                               f"differ, see {path}); use another --out directory")
        return
    _write_json(path, manifest)


def _write_json(path: pathlib.Path, data) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(path: pathlib.Path):
    import fcntl

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _write_report(out_dir: pathlib.Path, shard: tuple[int, int], total: int, summary: dict) -> pathlib.Path:
    """This share's report, then DIR/report.json merged from every share's (under a lock)."""
    index, count = shard
    if count == 1:
        merged = dict(videos=total, shards=1, **{k: summary[k] for k in ("extracted", "skipped", "failed",
                                                                          "truncated")})
        _write_json(out_dir / REPORT, merged)
        return out_dir / REPORT
    with _locked(out_dir / ".report.lock"):
        _write_json(out_dir / f"report.{index}-of-{count}.json", dict(shard=f"{index}/{count}", **summary))
        parts = []
        for i in range(count):
            p = out_dir / f"report.{i}-of-{count}.json"
            if p.exists():
                parts.append(json.loads(p.read_text()))
        merged = {"videos": total, "shards": count, "shards_reported": [p["shard"] for p in parts],
                  "extracted": sum(p["extracted"] for p in parts), "skipped": sum(p["skipped"] for p in parts),
                  "failed": [f for p in parts for f in p["failed"]],
                  "truncated": [t for p in parts for t in p["truncated"]]}
        _write_json(out_dir / REPORT, merged)
    return out_dir / REPORT


# -- one video's output -------------------------------------------------------------------------------------------
class _Output:
    """A video's features spooled to a temporary directory beside the target, renamed when complete."""

    def __init__(self, target: pathlib.Path):
        self.target = target
        target.parent.mkdir(parents=True, exist_ok=True)
        self.workdir = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        self.spool = _NpzSpool(self.workdir)

    def add(self, t, pooled, tokens) -> None:
        self.spool.add(t, pooled, tokens)

    def commit(self, compress: bool) -> int:
        tmp = self.workdir / "out.npz"
        self.spool.write_npz(tmp, compress)
        os.replace(tmp, self.target)
        self.discard()
        return self.spool.count

    def discard(self) -> None:
        self.spool.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _remove_stale_temporaries(out_dir: pathlib.Path, targets: set[pathlib.Path]) -> None:
    """Temporary directories left by a killed run, for this share's videos only (other shares may be writing)."""
    for dirpath, dirnames, _ in os.walk(out_dir):
        for d in list(dirnames):
            m = _TMP_DIR.match(d)
            if m and pathlib.Path(dirpath, m.group("name")) in targets:
                shutil.rmtree(pathlib.Path(dirpath, d), ignore_errors=True)
                dirnames.remove(d)


# -- the run ------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Video:
    path: pathlib.Path
    target: pathlib.Path
    job: object = None
    out: _Output | None = None
    reader: VideoReader | None = None
    ended: bool = False


class _Run:
    """The scheduling loop: slots filled from the queue of videos, one batched device call per step."""

    def __init__(self, fx, opts: Options, queue: list[_Video], slots: int, workers: int, progress: bool,
                 batch_invariant: bool, devices, desc: str):
        self.fx, self.opts, self.slots = fx, opts, slots
        self.window = fx.config.num_frames if opts.window is None else int(opts.window)
        self.queue = collections.deque(queue)
        self.decoder = DecodePool(self._open_reader, workers, capacity=max(32, 2 * self.window))
        self.prefetch = max(1, workers)
        self.submitted: collections.deque[_Video] = collections.deque()  # decoding ahead, not in a slot yet
        self.live: dict[int, _Video] = {}  # slot -> video
        self.extracted, self.failed, self.truncated = [], [], []
        self.frames = 0  # frames through the model (the bar does not count when disabled)
        self.model_s = 0.0  # seconds in the model's calls (outputs on the host)
        self.decode_wait_s = 0.0  # seconds the loop waited for decoded frames (decoding not overlapped)
        self.batch_invariant, self.devices = batch_invariant, devices
        self.videos_bar = tqdm(total=len(queue), unit="video", desc=desc, disable=not progress, file=sys.stderr,
                               dynamic_ncols=True, position=0)
        self.frames_bar = tqdm(unit="frame", desc="frames", disable=not progress, file=sys.stderr,
                               dynamic_ncols=True, position=1, leave=False)

    def _open_reader(self, video: _Video) -> VideoReader:
        o = self.opts
        video.reader = VideoReader(video.path, self.fx.config.image_size, fps=o.fps, npy_fps=o.npy_fps,
                                   max_frames=o.max_frames)
        return video.reader

    # -- the queue of videos
    def _top_up(self) -> None:
        while self.queue and len(self.submitted) + len(self.live) < self.slots + self.prefetch:
            video = self.queue.popleft()
            video.job = self.decoder.submit(video)
            self.submitted.append(video)

    def _video_in(self, slot: int) -> tuple[_Video | None, bool]:
        """The video running in `slot`, else the next one of the queue, placed there (True: newly placed);
        None when the queue is empty."""
        video = self.live.get(slot)
        if video is not None:
            return video, False
        video = self._take_next()
        if video is not None:
            self.live[slot] = video
        return video, True

    def _take_next(self) -> _Video | None:
        self._top_up()
        if not self.submitted:
            return None
        video = self.submitted.popleft()
        self._top_up()
        return video

    def _fail(self, video: _Video, err: BaseException) -> None:
        reason = err.reason if isinstance(err, VideoReadError) else f"{type(err).__name__}: {err}"
        self.failed.append({"path": str(video.path), "reason": reason})
        self.videos_bar.write(f"warning: skipping {video.path}: {reason}", file=sys.stderr)
        if video.out is not None:
            video.out.discard()
        self.decoder.drop(video.job)
        self.videos_bar.update(1)

    def _finish(self, video: _Video) -> None:
        if video.out is None:  # VideoReader raises for a source without frames; other readers might not
            self._fail(video, VideoReadError(video.path, "no frame could be decoded"))
            return
        video.out.commit(self.opts.compress)
        self.decoder.drop(video.job)
        self.extracted.append(str(video.path))
        if video.reader is not None and video.reader.truncated:
            self.truncated.append(str(video.path))
        self.videos_bar.update(1)

    def _next_frame(self, video: _Video):
        """(t, frame), END, or None after a failure (reported)."""
        try:
            return self.decoder.next(video.job)
        except Exception as err:  # noqa: BLE001 - VideoReadError or a decoder bug: the video fails, the run goes on
            self._fail(video, err)
            return None

    def run(self) -> None:
        try:
            if self.opts.mode == "stream":
                self._run_stream()
            else:
                self._run_clips()
        finally:
            for video in list(self.live.values()) + list(self.submitted):
                if video.out is not None:
                    video.out.discard()
            self.decoder.close()
            self.decode_wait_s = self.decoder.waited_s
            self.frames_bar.close()
            self.videos_bar.close()

    def _run_stream(self) -> None:
        pool = self.fx.stream_pool(self.slots, self.window, return_tokens=self.opts.return_tokens,
                                   batch_invariant=self.batch_invariant, devices=self.devices)
        while True:
            frames, times = {}, {}
            for slot in range(self.slots):
                while True:
                    video, placed = self._video_in(slot)
                    if video is None:
                        break
                    if placed:
                        pool.open(slot)
                    item = self._next_frame(video)
                    if item is None or item is END:
                        if item is END:
                            self._finish(video)
                        del self.live[slot]
                        pool.close(slot)
                        continue
                    times[slot], frames[slot] = item
                    break
            if not frames:
                return
            start = time.perf_counter()
            outputs = pool.push(frames)
            self.model_s += time.perf_counter() - start
            for slot, out in outputs.items():
                video = self.live[slot]
                if video.out is None:
                    video.out = _Output(video.target)
                video.out.add(times[slot], out["pooler_output"], out.get("last_hidden_state"))
            self.frames += len(frames)
            self.frames_bar.update(len(frames))

    def _run_clips(self) -> None:
        """Up to W frames per slot per step. Batch-invariant: each clip is its own forward, exactly as the
        single-video form runs it. Batched: one [B, W, S, S, 3] forward per step; a short last clip is padded at
        the end where that cannot change its frames' features (causal attention, W within the time table),
        else it runs alone."""
        cfg, w = self.fx.config, self.window
        size = cfg.image_size
        pad_ok = cfg.causal_temporal and w <= cfg.num_frames
        tokens = self.opts.return_tokens
        while True:
            clips, times = {}, {}
            for slot in range(self.slots):
                while True:
                    video, _ = self._video_in(slot)
                    if video is None:
                        break
                    ts, fs, item = [], [], None
                    while len(fs) < w:
                        item = self._next_frame(video)
                        if item is None or item is END:
                            break
                        ts.append(item[0])
                        fs.append(item[1])
                    if item is None:  # failed (reported)
                        del self.live[slot]
                        continue
                    video.ended = item is END
                    if not fs:
                        self._finish(video)
                        del self.live[slot]
                        continue
                    clips[slot], times[slot] = np.stack(fs), ts
                    break
            if not clips:
                return
            start = time.perf_counter()
            if self.batch_invariant:
                results = {slot: self.fx(clip, return_tokens=tokens) for slot, clip in clips.items()}
            else:
                batch = np.zeros((self.slots, w, size, size, cfg.num_channels), np.uint8)
                results = {}
                for slot, clip in clips.items():
                    if len(clip) == w or pad_ok:
                        batch[slot, :len(clip)] = clip
                    else:
                        results[slot] = self.fx(clip, return_tokens=tokens)
                if len(results) < len(clips):
                    out = self.fx(batch, return_tokens=tokens)
                    results.update({slot: {k: v[slot] for k, v in out.items()} for slot in clips if slot not in results})
            self.model_s += time.perf_counter() - start
            for slot, ts in times.items():
                res, video = results[slot], self.live[slot]
                if video.out is None:
                    video.out = _Output(video.target)
                for i, t in enumerate(ts):
                    video.out.add(t, res["pooler_output"][i], res["last_hidden_state"][i] if tokens else None)
                if video.ended:
                    self._finish(video)
                    del self.live[slot]
            done = sum(len(ts) for ts in times.values())
            self.frames += done
            self.frames_bar.update(done)


def extract_corpus(checkpoint_or_extractor, videos: Sequence, out_dir, *, root=None, mode: str = "stream",
                   window: int | None = None, fps: float | None = None, npy_fps: float = 1.0,
                   max_frames: int | None = None, return_tokens: bool = True, dtype: str | None = None,
                   compress: bool = False, slots: int = 8, workers: int = 4, shard: tuple[int, int] | None = None,
                   batch_invariant: bool = True, devices=None, progress: bool = True) -> dict:
    """Extract this share of `videos` into `out_dir` (see the module doc). Returns the summary:
    {"extracted": [...], "skipped": n, "failed": [{"path", "reason"}], "truncated": [...], "report": path,
    "seconds": s, "frames": n, "model_seconds": s, "decode_wait_seconds": s}: `model_seconds` is the time in the
    model's calls, `decode_wait_seconds` the time the loop waited for decoded frames (decoding not overlapped).

    root: the directory output names are taken relative to (default: the deepest common directory).
    shard: (index, count); default: (jax.process_index(), jax.process_count()).
    batch_invariant: False runs the slots as one batched forward (faster on accelerators; features then agree
        with the single-video form to float32 rounding instead of bit for bit).
    devices: split the pool's slots over these devices (e.g. jax.local_devices()); default one device.
    Raises ExtractError for unusable options (bad checkpoint, clashing names, other options in out_dir).
    """
    if mode not in MODES:
        raise ExtractError(f"mode must be one of {MODES}, got {mode!r}")
    if window is not None and int(window) < 1:
        raise ExtractError(f"window must be >= 1, got {window}")
    if int(slots) < 1 or int(workers) < 0:
        raise ExtractError(f"slots must be >= 1 and workers >= 0, got slots={slots}, workers={workers}")
    if devices is not None and int(slots) % len(devices):
        raise ExtractError(f"{slots} slots cannot be split evenly over {len(devices)} devices")
    videos = [pathlib.Path(os.path.abspath(v)) for v in videos]
    if not videos:
        raise ExtractError("no videos given")
    root = pathlib.Path(os.path.abspath(root)) if root is not None else pathlib.Path(
        os.path.commonpath([str(v.parent) for v in videos]))
    names = output_names(videos, root)
    index, count = default_shard() if shard is None else shard
    if not 0 <= index < count:
        raise ExtractError(f"shard {index}/{count}: expected 0 <= I < N")
    fx = _load_extractor(checkpoint_or_extractor, dtype)
    opts = Options(mode, window, fps, npy_fps, max_frames, return_tokens, compress)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_manifest(out_dir, opts.manifest(fx))

    mine = [_Video(v, out_dir / n) for i, (v, n) in enumerate(zip(videos, names)) if i % count == index]
    _remove_stale_temporaries(out_dir, {v.target for v in mine})
    todo = [v for v in mine if not v.target.exists()]
    start = time.perf_counter()
    run = _Run(fx, opts, todo, int(slots), int(workers), progress, batch_invariant, devices,
               desc="videos" if count == 1 else f"videos (shard {index}/{count})")
    run.run()
    summary = {"extracted": run.extracted, "skipped": len(mine) - len(todo), "failed": run.failed,
               "truncated": run.truncated}
    report = _write_report(out_dir, (index, count), len(videos),
                           {**summary, "extracted": len(run.extracted)})
    return {**summary, "report": report, "seconds": time.perf_counter() - start,
            "frames": run.frames, "model_seconds": run.model_s, "decode_wait_seconds": run.decode_wait_s}
