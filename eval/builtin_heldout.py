"""A held-out action-recognition test set in the style of the built-in dataset's Kinetics task.

The built-in training clips (`data_pipelines.pipeline.builtin`: 8 clips, 96x72, 40 frames, label = the colour
of a moving square) are all there is to finetune on in the CPU quickstart; this writes *other* clips of the same
four classes, so a finetuned model can be tested on videos it has never seen: each clip draws (from `seed`) its
own frame size, length, motion direction and a shade of its class colour (each RGB channel moved by up to
`colour_jitter`). Clips are real MPEG-4 files written with PyAV, listed as `videos/<name>.mp4,<label>` in
`heldout.csv` (the Kinetics annotation-list format of `eval.action_recognition`, relative to the directory).

    python -m eval.builtin_heldout --out DIR [--per-class 4] [--seed 1]

For the zero-shot tasks (`--tasks retrieval,grounding,localization`) it writes converted records of other
clips in the style of the built-in dataset instead (`DIR/records/<task>/`, ArrayRecord + metadata.json), the
input of `python -m eval.retrieval|grounding|localization --data DIR/records` and of the trainer's periodic
evaluation:
  * retrieval: one clip per (colour, direction) pair (8 with the default classes), each with the one caption
    that tells it apart ("a red square moving left to right"); chance R@1 = 1/8;
  * grounding: `per_class` clips per colour, the square visible only inside a window (25-45 % of the clip,
    anywhere in it), caption "the <colour> square appears", ground truth = that window;
  * localization: the same kind of clips, the window labelled with the colour class.

    python -m eval.builtin_heldout --out DIR --tasks retrieval,grounding,localization [--per-class 4]
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

LIST_FILE = "heldout.csv"


def write_heldout_set(out_dir, *, per_class: int = 4, seed: int = 1, colour_jitter: int = 20, fps: int = 8
                      ) -> pathlib.Path:
    """Write `per_class` clips per built-in class under `out_dir/videos` and return the annotation list path."""
    from data_pipelines.pipeline.builtin import CLASS_NAMES, COLOURS, write_clip

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


ZERO_SHOT_TASKS = ("retrieval", "grounding", "localization")


def _clip_geometry(rng: np.random.Generator) -> tuple[int, int, int]:
    """(width, height, frames) of a held-out clip: even sizes (yuv420p) 64..128 x 48..96, 24..56 frames."""
    return 2 * int(rng.integers(32, 65)), 2 * int(rng.integers(24, 49)), int(rng.integers(24, 57))


def write_heldout_records(out_dir, tasks=ZERO_SHOT_TASKS, *, per_class: int = 4, seed: int = 2,
                          colour_jitter: int = 20, fps: int = 8) -> dict[str, pathlib.Path]:
    """Write `out_dir/records/<task>` for each zero-shot task (see the module docstring); returns the dirs."""
    from data_pipelines import schema, video
    from data_pipelines.pipeline import builtin, sources

    rng = np.random.default_rng(seed)
    out = pathlib.Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    dirs = {}
    for task in tasks:
        if task not in ZERO_SHOT_TASKS:
            raise ValueError(f"unknown zero-shot task {task!r}; choose from {ZERO_SHOT_TASKS}")
        if task == "retrieval":
            plan = [(c, r) for c in range(len(builtin.CLASS_NAMES)) for r in (False, True)]
        else:
            plan = [(i % len(builtin.CLASS_NAMES), bool(rng.integers(2))) for i in range(per_class * 4)]
        records = []
        for i, (cls, reverse) in enumerate(plan):
            width, height, frames = _clip_geometry(rng)
            shade = np.clip(np.array(builtin.COLOURS[builtin.CLASS_NAMES[cls]])
                            + rng.integers(-colour_jitter, colour_jitter + 1, 3), 0, 255)
            if task == "retrieval":
                window = (0, frames)
            else:
                length = int(round(frames * rng.uniform(0.25, 0.45)))
                start = int(rng.integers(0, frames - length + 1))
                window = (start, start + length)
            vid = f"heldout_{task}_{i:03d}"
            path = builtin.write_clip(out / "videos" / f"{vid}.mp4", frames, (width, height), fps,
                                      tuple(int(c) for c in shade), reverse, window)
            times, pixels = video.read_video(path)
            ex = builtin._example(task, vid, times, pixels, fps, cls, reverse, window)  # the built-in layout
            if task == "retrieval":
                ex["captions"] = ex["captions"][:1]  # the caption naming colour and direction
            records.append(schema.encode_record(ex))
        names = builtin.CLASS_NAMES if task == "localization" else ()
        dirs[task] = sources.write_task_records(out / "records" / task, task, records, class_names=names)
    return dirs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.builtin_heldout", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output directory (videos/ and heldout.csv)")
    p.add_argument("--per-class", type=int, default=4)
    p.add_argument("--seed", type=int, default=None, help="default: 1 (action recognition), 2 (zero-shot tasks)")
    p.add_argument("--tasks", default="kinetics", help="kinetics (the action-recognition list) and/or "
                   "retrieval,grounding,localization (records), comma-separated")
    args = p.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = sorted(set(tasks) - {"kinetics", *ZERO_SHOT_TASKS})
    if unknown:
        print(f"error: unknown tasks {unknown}; choose from kinetics, {', '.join(ZERO_SHOT_TASKS)}", file=sys.stderr)
        return 2
    if "kinetics" in tasks:
        path = write_heldout_set(args.out, per_class=args.per_class, seed=1 if args.seed is None else args.seed)
        print(f"wrote {path} (use --val-list {path} --root {path.parent})", file=sys.stderr)
    zero_shot = [t for t in tasks if t != "kinetics"]
    if zero_shot:
        dirs = write_heldout_records(args.out, zero_shot, per_class=args.per_class,
                                     seed=2 if args.seed is None else args.seed)
        for task, d in dirs.items():
            print(f"wrote {d} (python -m eval.{task} --data {d.parent} ...)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
