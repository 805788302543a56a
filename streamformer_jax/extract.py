"""Per-frame StreamFormer features for a video file or an `.npy` array: `python -m streamformer_jax.extract`.

    python -m streamformer_jax.extract --checkpoint CKPT_DIR --video clip.mp4 --out feats.npz \\
        [--mode stream|clip] [--window W] [--fps 5] [--no-tokens] [--dtype float32|bfloat16] [--max-frames N]

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
                with zf.open(f"{name}.npy", "w", force_zip64=True) as member, \
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
                    "file or a uint8 [T, H, W, 3] .npy array, written to an .npz.")
    cli.add_checkpoint(p)
    p.add_argument("--video", required=True, metavar="PATH",
                   help="a video file (decoded with PyAV) or a uint8 [T, H, W, 3] RGB .npy array")
    cli.add_out(p, metavar="OUT.npz", help="output archive (written atomically)")
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
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("always", TruncatedVideoWarning)
        warnings.showwarning = _show_warning
        return _main(args)


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


if __name__ == "__main__":
    sys.exit(main())
