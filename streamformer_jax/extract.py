"""Per-frame StreamFormer features for a video file or an `.npy` array: `python -m streamformer_jax.extract`.

    python -m streamformer_jax.extract --checkpoint CKPT_DIR --video clip.mp4 --out feats.npz \\
        [--mode stream|clip] [--window W] [--fps 5] [--no-tokens] [--dtype float32|bfloat16] [--max-frames N]

A whole corpus (`--videos DIR|GLOB|LIST --out DIR`, one archive per video, resumable, sharded over
processes) is described in `streamformer_jax.corpus`.

`CKPT_DIR` is our checkpoint or an official Hugging Face directory (detected automatically). The video is
decoded as a stream with PyAV (see `streamformer_jax.video` for the resize / crop / frame-rate / timestamp
rules); an `.npy` input is a uint8 `[T, H, W, 3]` RGB array whose frame rate is `--npy-fps` (default 1, so its
timestamps are frame indices).

OUT.npz holds
  - `pooler_output`      float32 [T, D]     the per-frame MAP-pooled vector;
  - `last_hidden_state`  float32 [T, P, D]  the per-frame patch tokens (left out with `--no-tokens`);
  - `timestamps`         float64 [T]        seconds of each frame in the source video.

Modes:
  - `stream` (default): the streaming path (ring-buffer KV cache of `--window` frames, default the model's
    `num_frames`), one frame at a time, over any length. Frame t sees frames max(0, t-W+1)..t.
  - `clip`: consecutive clips of `--window` frames (default `num_frames`; the last clip may be shorter),
    each run through one clip forward. Frame t sees the frames of its own clip up to t.
For a video of at most `num_frames` frames with the default window, both modes give the same features.

Memory is bounded whatever the video length: frames are decoded one at a time, and per-frame outputs are
appended to raw temporary files beside OUT (not kept in memory), which are then streamed into OUT.npz. The
archive is written under a temporary name and renamed when complete, so OUT.npz is never half-written.

Python:
    from streamformer_jax.extract import extract_features
    feats = extract_features("ckpt_dir", "clip.mp4", mode="stream", fps=5)      # dict of arrays in memory
    info = extract_features(fx, "long.mp4", out="long.npz", return_tokens=False)  # bounded memory, on disk
"""
from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys
import tempfile
import warnings
import zipfile
from typing import Iterable, Iterator

import numpy as np
from tqdm.auto import tqdm

from streamformer_jax import cli
from streamformer_jax.api import FeatureExtractor
from streamformer_jax.video import TruncatedVideoWarning, VideoReader, VideoReadError

MODES = ("stream", "clip")
_CHUNK = 1 << 16  # bytes per copy when streaming the spooled outputs into the .npz


class ExtractError(Exception):
    """A user-facing failure (bad checkpoint, bad arguments); the CLI prints it without a traceback."""


def iter_features(fx, frames: Iterable[tuple[float, np.ndarray]], *, mode: str = "stream",
                  window: int | None = None, return_tokens: bool = True
                  ) -> Iterator[tuple[float, np.ndarray, np.ndarray | None]]:
    """(timestamp, pooled [D], tokens [P, D] or None) per frame, for (timestamp, uint8 frame) input.

    Holds at most one clip of frames (clip mode) or one frame plus the KV cache (stream mode).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    window = fx.config.num_frames if window is None else int(window)
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if mode == "stream":
        stream = fx.stream(window)
        for t, frame in frames:
            out = stream.push(frame)
            yield t, out["pooler_output"], out["last_hidden_state"] if return_tokens else None
        return
    times, clip = [], []

    def run():
        out = fx(np.stack(clip), return_tokens=return_tokens)
        for i, t in enumerate(times):
            yield t, out["pooler_output"][i], out["last_hidden_state"][i] if return_tokens else None
        times.clear()
        clip.clear()

    for t, frame in frames:
        times.append(t)
        clip.append(frame)
        if len(clip) == window:
            yield from run()
    if clip:
        yield from run()


class _MemorySink:
    def __init__(self):
        self.t, self.pooled, self.tokens = [], [], []

    def add(self, t, pooled, tokens):
        self.t.append(t)
        # Copies: a row of a clip output (or a host view of a device buffer) would keep its whole base alive.
        self.pooled.append(np.array(pooled, np.float32, copy=True))
        if tokens is not None:
            self.tokens.append(np.array(tokens, np.float32, copy=True))

    def result(self) -> dict[str, np.ndarray]:
        out = {"pooler_output": np.stack(self.pooled)}
        if self.tokens:
            out["last_hidden_state"] = np.stack(self.tokens)
        out["timestamps"] = np.asarray(self.t, np.float64)
        return out


class _NpzSpool:
    """Appends per-frame arrays to raw files in `workdir`, then streams them into an .npz (bounded memory)."""

    def __init__(self, workdir: pathlib.Path):
        self.workdir = workdir
        self.files: dict[str, tuple] = {}  # name -> (file object, dtype, per-frame shape)
        self.count = 0

    def _append(self, name: str, value: np.ndarray, dtype) -> None:
        value = np.asarray(value, dtype=dtype)  # tobytes() below writes C order
        entry = self.files.get(name)
        if entry is None:
            entry = self.files[name] = (open(self.workdir / f"{name}.raw", "wb"), np.dtype(dtype), value.shape)
        elif value.shape != entry[2]:
            raise RuntimeError(f"{name}: per-frame shape changed from {entry[2]} to {value.shape}")
        entry[0].write(value.tobytes())

    def add(self, t, pooled, tokens):
        self._append("pooler_output", pooled, np.float32)
        if tokens is not None:
            self._append("last_hidden_state", tokens, np.float32)
        self._append("timestamps", np.float64(t), np.float64)
        self.count += 1

    def close(self) -> None:
        for f, _, _ in self.files.values():
            f.close()

    def write_npz(self, path: pathlib.Path, compress: bool = False) -> dict[str, tuple[int, ...]]:
        self.close()
        shapes = {}
        compression = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        with zipfile.ZipFile(path, "w", compression=compression, allowZip64=True) as zf:
            for name in ("pooler_output", "last_hidden_state", "timestamps"):
                if name not in self.files:
                    continue
                _, dtype, frame_shape = self.files[name]
                shape = (self.count, *frame_shape)
                header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
                # A fixed member date (the zip epoch) so that equal arrays give byte-identical archives.
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type, info.external_attr = compression, 0o644 << 16
                with zf.open(info, "w", force_zip64=True) as member, \
                        open(self.workdir / f"{name}.raw", "rb") as raw:
                    if _needs_v2(header):
                        np.lib.format.write_array_header_2_0(member, header)
                    else:
                        np.lib.format.write_array_header_1_0(member, header)
                    shutil.copyfileobj(raw, member, _CHUNK)
                shapes[name] = shape
        return shapes


def _needs_v2(header: dict) -> bool:
    return len(repr(header)) > 60000  # v1.0 headers are limited to 65535 bytes; never in practice


def _load_extractor(checkpoint, dtype):
    if isinstance(checkpoint, FeatureExtractor):
        if dtype is not None and dtype != checkpoint.config.dtype:
            raise ExtractError(f"dtype={dtype!r} cannot be applied to an existing FeatureExtractor "
                               f"(its dtype is {checkpoint.config.dtype!r}); load it with that dtype")
        return checkpoint
    try:
        return FeatureExtractor.from_checkpoint(checkpoint, dtype=dtype)
    except (FileNotFoundError, NotADirectoryError, ValueError, KeyError, OSError) as err:
        msg = str(err)
        if str(checkpoint) not in msg:
            msg = f"{checkpoint}: {msg}"
        raise ExtractError(f"cannot load checkpoint: {msg}") from None


def extract_features(checkpoint_or_extractor, video, *, mode: str = "stream", window: int | None = None,
                     fps: float | None = None, npy_fps: float = 1.0, max_frames: int | None = None,
                     return_tokens: bool = True, dtype: str | None = None, progress: bool = False,
                     out: str | os.PathLike | None = None, compress: bool = False) -> dict:
    """Per-frame features of a video file or a uint8 `[T, H, W, 3]` `.npy` file.

    checkpoint_or_extractor: a checkpoint directory (ours or official HF) or a `FeatureExtractor`
        (reusing one avoids recompiling). Frames are resized + centre-cropped to its `config.image_size`.
    mode / window: "stream" (ring-buffer window W) or "clip" (consecutive clips of W frames); W defaults
        to the model's `num_frames`.
    fps: target frame rate (nearest-frame selection, see `streamformer_jax.video`); None keeps every frame.
    npy_fps: frame rate of an `.npy` input (its timestamps are index / npy_fps).
    max_frames: stop after this many (selected) frames.
    return_tokens: also produce `last_hidden_state` [T, P, D] (large: P x D floats per frame).
    dtype: compute dtype override ("float32" / "bfloat16") when loading a checkpoint.
    progress: show a tqdm progress bar on stderr.
    out: None -> returns {"pooler_output" [T, D] float32, "last_hidden_state" [T, P, D] float32 (if
        return_tokens), "timestamps" [T] float64}, all in memory. A path -> writes those arrays to that .npz
        with bounded memory (atomically: temporary name, then rename) and returns
        {"path": Path, "num_frames": T, "shapes": {name: shape}}.

    Raises `VideoReadError` (unreadable input, wrong dtype / shape) or `ExtractError` (checkpoint, options).
    """
    if mode not in MODES:
        raise ExtractError(f"mode must be one of {MODES}, got {mode!r}")
    if window is not None and int(window) < 1:
        raise ExtractError(f"window must be >= 1, got {window}")
    reader = VideoReader(video, None, fps=fps, npy_fps=npy_fps, max_frames=max_frames)  # fail fast
    try:
        fx = _load_extractor(checkpoint_or_extractor, dtype)
        reader.size = fx.config.image_size
        if out is None:
            sink = _MemorySink()
            _run(fx, reader, sink, mode, window, return_tokens, progress)
            return sink.result()
        out = pathlib.Path(out)
        if out.is_dir():
            raise ExtractError(f"{out}: output path is a directory")
        out.parent.mkdir(parents=True, exist_ok=True)
        workdir = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        try:
            spool = _NpzSpool(workdir)
            try:
                _run(fx, reader, spool, mode, window, return_tokens, progress)
            finally:
                spool.close()
            tmp = workdir / "out.npz"
            shapes = spool.write_npz(tmp, compress)
            os.replace(tmp, out)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return {"path": out, "num_frames": spool.count, "shapes": shapes}
    finally:
        reader.close()


def _run(fx, reader: VideoReader, sink, mode, window, return_tokens, progress) -> None:
    bar = tqdm(total=reader.expected_frames(), unit="frame", desc=reader.path.name, disable=not progress,
               file=sys.stderr, dynamic_ncols=True, leave=True)
    try:
        for t, pooled, tokens in iter_features(fx, reader, mode=mode, window=window,
                                               return_tokens=return_tokens):
            sink.add(t, pooled, tokens)
            bar.update(1)
    finally:
        bar.close()


# -- command line ------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(
        prog="python -m streamformer_jax.extract",
        description="Per-frame StreamFormer features (pooler_output, last_hidden_state, timestamps) of a video "
                    "file or a uint8 [T, H, W, 3] .npy array, written to an .npz; or of a whole corpus of videos "
                    "(--videos, one .npz per video; see streamformer_jax.corpus).")
    cli.add_checkpoint(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--video", metavar="PATH",
                     help="a video file (decoded with PyAV) or a uint8 [T, H, W, 3] RGB .npy array")
    src.add_argument("--videos", metavar="LIST_OR_GLOB",
                     help="a corpus: a directory (recursive), a quoted glob pattern, or a text file of paths")
    cli.add_out(p, "--out-dir", required=False, metavar="OUT",
                help="--video: the output archive OUT.npz (written atomically); --videos: the output directory "
                     "(one .npz per video and report.json of failed videos; --out-dir is the same flag)")
    p.add_argument("--mode", choices=MODES, default="stream",
                   help="stream: streaming path over any length (default); clip: consecutive clips of W frames")
    p.add_argument("--window", type=cli.positive(int), default=None, metavar="W",
                   help="stream: KV-cache window in frames; clip: clip length (default: the model's num_frames)")
    p.add_argument("--fps", type=cli.positive(float), default=None,
                   help="target frame rate: keep the frame nearest to each 1/fps step (default: every frame)")
    p.add_argument("--npy-fps", type=cli.positive(float), default=1.0,
                   help="frame rate of an .npy input, for its timestamps (default 1: timestamps = indices)")
    p.add_argument("--max-frames", type=cli.positive(int), default=None, metavar="N",
                   help="stop after N (selected) frames")
    p.add_argument("--no-tokens", action="store_true",
                   help="leave out last_hidden_state [T, P, D] (for long videos)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                   help="compute dtype (default: the checkpoint's); outputs are float32 either way")
    p.add_argument("--compress", action="store_true", help="deflate the .npz members (slower, smaller)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    corpus = p.add_argument_group("corpus (--videos) options")
    corpus.add_argument("--slots", type=cli.positive(int), default=None, metavar="B",
                        help="videos processed together, one frame (stream) or clip (clip mode) each per device "
                             "call (default 8)")
    corpus.add_argument("--workers", type=_non_negative_int, default=None, metavar="N",
                        help="background decoding threads (default: min(4, CPU count); 0 decodes inline)")
    corpus.add_argument("--shard", default=None, metavar="I/N",
                        help="take videos I, I+N, I+2N, ... of the list (default: the jax.distributed process "
                             "index/count, else all)")
    corpus.add_argument("--root", default=None, metavar="DIR",
                        help="output names are video paths relative to DIR; relative list entries start there "
                             "(default: the directory or glob prefix given, or the list's common directory)")
    corpus.add_argument("--distributed", choices=("auto", "yes", "no"), default=None,
                        help="initialise jax.distributed: auto (default) on a TPU VM or a multi-task SLURM step")
    corpus.add_argument("--batched", action="store_true", default=None,
                        help="run the slots as one batched forward (faster on accelerators; features then agree "
                             "with the single-video form to float32 rounding, not bit for bit)")
    corpus.add_argument("--devices", default=None, metavar="N|all",
                        help="local devices to split the slots over (default 1; 'all': every local device)")
    return p


def _non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


_CORPUS_ONLY = ("slots", "workers", "shard", "root", "distributed", "batched", "devices")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.videos is None:
        given = [f"--{n.replace('_', '-')}" for n in _CORPUS_ONLY if getattr(args, n) is not None]
        if given:
            parser.error(f"{', '.join(given)} go with --videos (a corpus), not --video")
        if args.out is None:
            parser.error("--video needs --out OUT.npz")
    else:
        if args.out is None:
            parser.error("--videos needs --out DIR (or --out-dir DIR), the output directory")
        if args.out.lower().endswith(".npz"):
            parser.error(f"--videos writes one archive per video into a directory; --out {args.out} names an "
                         f".npz file")
        if args.shard is not None:
            from streamformer_jax.corpus import parse_shard

            try:
                args.shard = parse_shard(args.shard)
            except ValueError as err:
                parser.error(f"--shard: {err}")
        if args.devices is not None and args.devices != "all" and not (args.devices.isdigit() and
                                                                       int(args.devices) >= 1):
            parser.error(f"--devices: expected a count >= 1 or 'all', got {args.devices!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("always", TruncatedVideoWarning)
        warnings.showwarning = _show_warning
        return _main(args) if args.videos is None else _main_corpus(args)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


def _main(args) -> int:
    try:
        info = extract_features(args.checkpoint, args.video, mode=args.mode, window=args.window, fps=args.fps,
                                npy_fps=args.npy_fps, max_frames=args.max_frames,
                                return_tokens=not args.no_tokens, dtype=args.dtype,
                                progress=not args.no_progress, out=args.out, compress=args.compress)
    except (VideoReadError, ExtractError) as err:
        return cli.fail(str(err))
    except OSError as err:  # e.g. the output directory is not writable or the disk is full
        return cli.fail(f"cannot write {args.out}: {err}")
    except KeyboardInterrupt:
        print("interrupted; no output written", file=sys.stderr)
        return cli.INTERRUPTED
    shapes = ", ".join(f"{k} {list(v)}" for k, v in info["shapes"].items())
    print(f"wrote {info['path']}: {info['num_frames']} frames ({shapes})", file=sys.stderr)
    return 0


def _main_corpus(args) -> int:
    """Exit status: 0 all videos done, 1 some failed (listed in DIR/report.json), 2 unusable input or options."""
    # The corpus module builds on this one (spooling, checkpoint loading), hence imported here.
    from types import SimpleNamespace

    from streamformer_jax import corpus
    from streamformer_jax.train.distributed import maybe_initialize

    try:
        try:
            maybe_initialize(SimpleNamespace(initialize=args.distributed or "auto", coordinator_address="",
                                             num_processes=0, process_id=-1))
        except ValueError as err:  # an incomplete JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES setting
            raise ExtractError(f"jax.distributed: {err}") from None
        videos, root = corpus.list_videos(args.videos, args.root)
        devices = None
        if args.devices is not None:
            import jax

            local = jax.local_devices()
            devices = local if args.devices == "all" else local[:int(args.devices)]
        summary = corpus.extract_corpus(
            args.checkpoint, videos, args.out, root=root, mode=args.mode, window=args.window, fps=args.fps,
            npy_fps=args.npy_fps, max_frames=args.max_frames, return_tokens=not args.no_tokens, dtype=args.dtype,
            compress=args.compress, slots=args.slots or 8,
            workers=min(4, os.cpu_count() or 1) if args.workers is None else args.workers, shard=args.shard,
            batch_invariant=not args.batched, devices=devices, progress=not args.no_progress)
    except ExtractError as err:
        return cli.fail(str(err))
    except OSError as err:  # the output directory is not writable, the disk is full, ...
        return cli.fail(f"{args.out}: {cli.message(err)}")
    except KeyboardInterrupt:
        print(f"interrupted; finished videos are in {args.out}, rerun the same command to resume",
              file=sys.stderr)
        return cli.INTERRUPTED
    failed = summary["failed"]
    print(f"{len(summary['extracted'])} videos extracted ({summary['frames']} frames in {summary['seconds']:.1f} s), "
          f"{summary['skipped']} already done, {len(failed)} failed; report: {summary['report']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
