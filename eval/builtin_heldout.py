"""Held-out test data in the style of the built-in dataset: clips a model trained on the built-in dataset has
never seen.

The built-in training clips (`data_pipelines.pipeline.builtin`: 8 clips, 96x72, 40 frames, label = the colour
of a moving square) are all there is to train on in the CPU quickstart; this writes *other* clips of the same
four classes: each clip draws (from `seed`) its own frame size, length, motion direction and a shade of its class
colour (each RGB channel moved by up to `colour_jitter`). Clips are real MPEG-4 files written with PyAV.

* `--tasks kinetics` (the default): an action-recognition list, `videos/<name>.mp4,<label>` in `heldout.csv`
  (the Kinetics annotation-list format of `eval.action_recognition`, relative to the directory).
* zero-shot tasks (`--tasks retrieval,grounding,localization`): converted records `DIR/records/<task>/`
  (`builtin.build_heldout_records`), the input of `python -m eval.retrieval|grounding|localization
  --data DIR/records` and of the trainer's periodic evaluation (`--config.eval_every`):
  * retrieval: one clip per (colour, direction) pair (8 with the default classes), each with the one caption
    that tells it apart ("a red square moving left to right"); chance R@1 = 1/8;
  * grounding: `per_class` clips per colour, the square visible only inside a window (25-45 % of the clip,
    anywhere in it), caption "the <colour> square appears", ground truth = that window;
  * localization: the same kind of clips, the window labelled with the colour class.

    python -m eval.builtin_heldout --out DIR [--per-class 4] [--seed 1]
    python -m eval.builtin_heldout --out DIR --tasks retrieval,grounding,localization [--per-class 4]
"""
from __future__ import annotations

import pathlib
import sys

import numpy as np

from data_pipelines.pipeline import builtin
from streamformer_jax import cli
from streamformer_jax.zero_shot.evaluate import tasks as zero_shot_tasks

LIST_FILE = "heldout.csv"
AR_TASK = "kinetics"  # the action-recognition list


def write_heldout_set(out_dir, *, per_class: int = 4, seed: int = 1, colour_jitter: int = 20, fps: int = 8
                      ) -> pathlib.Path:
    """Write `per_class` clips per built-in class under `out_dir/videos` and return the annotation list path."""
    rng = np.random.default_rng(seed)
    out = pathlib.Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(per_class * len(builtin.CLASS_NAMES)):
        label = i % len(builtin.CLASS_NAMES)
        size, frames = builtin.random_geometry(rng)
        colour = builtin.jittered_colour(label, rng, colour_jitter)
        name = f"heldout_{i:03d}.mp4"
        builtin.write_clip(out / "videos" / name, frames, size, fps, colour, bool(rng.integers(2)), (0, frames))
        lines.append(f"videos/{name},{label}")
    path = out / LIST_FILE
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    p = cli.ArgumentParser(prog="python -m eval.builtin_heldout", description=__doc__.split("\n\n")[0])
    cli.add_out(p, help="output directory (videos/, heldout.csv, records/)", metavar="DIR")
    p.add_argument("--per-class", type=cli.positive(int), default=4)
    p.add_argument("--seed", type=int, default=None, help="default: 1 (action recognition), 2 (zero-shot tasks)")
    p.add_argument("--tasks", default=AR_TASK, help=f"{AR_TASK} (the action-recognition list) and/or "
                   f"{','.join(zero_shot_tasks())} (records), comma-separated (default {AR_TASK})")
    args = p.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = sorted(set(tasks) - {AR_TASK, *zero_shot_tasks()})
    if unknown:
        p.error(f"--tasks: unknown tasks {unknown}; choose from {AR_TASK}, {', '.join(zero_shot_tasks())}")

    def run() -> int:
        if AR_TASK in tasks:
            path = write_heldout_set(args.out, per_class=args.per_class, seed=1 if args.seed is None else args.seed)
            print(f"wrote {path} (use --val-list {path} --root {path.parent})", file=sys.stderr)
        records = [t for t in tasks if t != AR_TASK]
        if records:
            dirs = builtin.build_heldout_records(args.out, records, per_class=args.per_class,
                                                 seed=2 if args.seed is None else args.seed)
            for task, d in dirs.items():
                print(f"wrote {d} (python -m eval.{task} --data {d.parent} ...)", file=sys.stderr)
        return 0

    return cli.run(run)


if __name__ == "__main__":
    sys.exit(main())
