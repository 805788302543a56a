"""A held-out action-recognition test set in the style of the built-in dataset's Kinetics task.

The built-in training clips (`data_pipelines.pipeline.builtin`: 8 clips, 96x72, 40 frames, label = the colour
of a moving square) are all there is to finetune on in the CPU quickstart; this writes *other* clips of the same
four classes, so a finetuned model can be tested on videos it has never seen: each clip draws (from `seed`) its
own frame size, length, motion direction and a shade of its class colour (each RGB channel moved by up to
`colour_jitter`). Clips are real MPEG-4 files written with PyAV, listed as `videos/<name>.mp4,<label>` in
`heldout.csv` (the Kinetics annotation-list format of `eval.action_recognition`, relative to the directory).

    python -m eval.builtin_heldout --out DIR [--per-class 4] [--seed 1]
"""
from __future__ import annotations

import pathlib
import sys

import numpy as np

from data_pipelines.pipeline.builtin import CLASS_NAMES, COLOURS, write_clip
from streamformer_jax import cli

LIST_FILE = "heldout.csv"


def write_heldout_set(out_dir, *, per_class: int = 4, seed: int = 1, colour_jitter: int = 20, fps: int = 8
                      ) -> pathlib.Path:
    """Write `per_class` clips per built-in class under `out_dir/videos` and return the annotation list path."""
    rng = np.random.default_rng(seed)
    out = pathlib.Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(per_class * len(CLASS_NAMES)):
        label = i % len(CLASS_NAMES)
        width = 2 * int(rng.integers(32, 65))  # even sizes (yuv420p): 64..128 x 48..96
        height = 2 * int(rng.integers(24, 49))
        frames = int(rng.integers(24, 57))
        shade = np.clip(np.array(COLOURS[CLASS_NAMES[label]]) + rng.integers(-colour_jitter, colour_jitter + 1, 3),
                        0, 255)
        name = f"heldout_{i:03d}.mp4"
        write_clip(out / "videos" / name, frames, (width, height), fps, tuple(int(c) for c in shade),
                   bool(rng.integers(2)), (0, frames))
        lines.append(f"videos/{name},{label}")
    path = out / LIST_FILE
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    p = cli.ArgumentParser(prog="python -m eval.builtin_heldout", description=__doc__.split("\n\n")[0])
    cli.add_out(p, help="output directory (videos/ and heldout.csv)", metavar="DIR")
    p.add_argument("--per-class", type=cli.positive(int), default=4)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)

    def run() -> int:
        path = write_heldout_set(args.out, per_class=args.per_class, seed=args.seed)
        print(f"wrote {path} (use --val-list {path} --root {path.parent})", file=sys.stderr)
        return 0

    return cli.run(run)


if __name__ == "__main__":
    sys.exit(main())
