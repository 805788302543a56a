"""Built-in online-action-detection streams: long synthetic videos in the LSTR data layout (no downloads).

Each stream alternates background stretches (2-5 s, the plain gradient of the built-in clips) with actions
(2-4 s: the built-in coloured square moving across, the colour being the class). Videos are real MPEG-4 files
at 24 fps, so the whole OAD path runs on them: `python -m eval.oad_extract` (24 fps, 6-frame chunks: 4 features
per second) -> `python -m eval.oad_train` -> per-frame mAP.

    python -m eval.builtin_oad --out DIR [--train 12 --test 4 --seed 3]

Writes `DIR/videos/<session>.mp4`, `DIR/BuiltinOAD/target_perframe/<session>.npy` (one-hot [N, 5] per feature:
Background + the 4 colours, the class at the last frame of the feature's chunk) and `DIR/data_info.json`
(LSTR's format: class names, fps 4, metric AP, no ambiguous class, the train/test session lists).
"""
from __future__ import annotations

import json
import pathlib
import sys

import numpy as np

from data_pipelines.pipeline import builtin
from eval.oad_extract import CHUNK, chunk_ends, resample_indices
from streamformer_jax import cli

NAME = "BuiltinOAD"
FPS = 24


def _segments(rng: np.random.Generator, seconds: float) -> list[tuple[int, int, int, bool]]:
    """(start frame, end frame, class (0 = background), reverse) covering `seconds` at 24 fps."""
    out, t, n = [], 0, int(seconds * FPS)
    action = bool(rng.integers(2))
    while t < n:
        length = int(rng.uniform(2.0, 4.0) * FPS) if action else int(rng.uniform(2.0, 5.0) * FPS)
        end = min(n, t + length)
        out.append((t, end, int(rng.integers(1, 5)) if action else 0, bool(rng.integers(2))))
        t, action = end, not action
    return out


def write_stream(path: pathlib.Path, segments, size: tuple[int, int], colours) -> np.ndarray:
    """Encode one stream (frames of the built-in clips, `builtin.render_frame`); returns the class of every frame."""
    labels = np.concatenate([np.full(end - start, cls, np.int64) for start, end, cls, _ in segments])
    frames = (builtin.render_frame(i, end - start, size, colours[cls - 1] if cls else (0, 0, 0), reverse, cls > 0)
              for start, end, cls, reverse in segments for i in range(end - start))
    builtin.encode_video(path, frames, size, FPS)
    return labels


def write_builtin_oad(out_dir, *, train: int = 12, test: int = 4, seconds: tuple[float, float] = (40.0, 60.0),
                      size: tuple[int, int] = (64, 48), seed: int = 3) -> pathlib.Path:
    """Write the streams and their annotations (see the module docstring); returns DIR/BuiltinOAD."""
    out = pathlib.Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    targets = out / NAME / "target_perframe"
    targets.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = {"train": [f"train_{i:02d}" for i in range(train)], "test": [f"test_{i:02d}" for i in range(test)]}
    colours = [builtin.COLOURS[c] for c in builtin.CLASS_NAMES]
    for session in names["train"] + names["test"]:
        segments = _segments(rng, float(rng.uniform(*seconds)))
        frame_labels = write_stream(out / "videos" / f"{session}.mp4", segments, size, colours)
        idx = resample_indices(len(frame_labels), FPS)  # the extractor's 24 fps grid (identity at 24 fps)
        ends = chunk_ends(len(idx), CHUNK)
        labels = frame_labels[idx[ends - 1]]  # a feature is the pooled vector of its chunk's last frame
        np.save(targets / f"{session}.npy", np.eye(len(builtin.CLASS_NAMES) + 1, dtype=np.float32)[labels])
    info = {NAME: {"class_names": ["Background", *builtin.CLASS_NAMES], "num_classes": len(builtin.CLASS_NAMES) + 1,
                   "ignore_index": -100, "metrics": "AP", "fps": 4, "data_root": NAME,
                   "train_session_set": names["train"], "test_session_set": names["test"]}}
    (out / "data_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return out / NAME


def main(argv=None) -> int:
    p = cli.ArgumentParser(prog="python -m eval.builtin_oad", description=__doc__.split("\n\n")[0])
    cli.add_out(p, help="output directory (videos/, BuiltinOAD/, data_info.json)", metavar="DIR")
    p.add_argument("--train", type=cli.positive(int), default=12, help="training streams (default 12)")
    p.add_argument("--test", type=cli.positive(int), default=4, help="test streams (default 4)")
    p.add_argument("--seed", type=int, default=3)
    args = p.parse_args(argv)

    def run() -> int:
        folder = write_builtin_oad(args.out, train=args.train, test=args.test, seed=args.seed)
        print(f"wrote {args.out}/videos and {folder} (python -m eval.oad_extract --videos {args.out}/videos ...; "
              f"python -m eval.oad_train --annotations {folder} ...)", file=sys.stderr)
        return 0

    return cli.run(run)

if __name__ == "__main__":
    sys.exit(main())
