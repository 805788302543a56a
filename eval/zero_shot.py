"""What the zero-shot CLIs share (`python -m eval.retrieval|grounding|localization`): their flags, loading the
checkpoint and the data, the evaluation (`streamformer_jax.zero_shot`), the JSON and the summary lines.

Flags follow `streamformer_jax.cli` (`--checkpoint`, `--out`, `--workers`, `--format`); a user error (a missing
file, a malformed annotation, a checkpoint without a text tower...) is an `error: ...` line on stderr with exit
status 2; `--traceback` shows the Python traceback instead. Features are cached beside the output while they are
computed (`OUT.features/`), so a rerun after an interruption resumes; the cache is removed once the JSON is
written.
"""
from __future__ import annotations

import argparse
import pathlib
import shutil
import sys
from typing import Callable

import jax

from data_pipelines.annotations import class_names_for
from data_pipelines.pipeline.label_tables import label_sets
from eval.pretrained import load_pretrained
from streamformer_jax import cli
from streamformer_jax.zero_shot.evaluate import ZeroShotModel, evaluate, fingerprint, flat_summary, write_json
from streamformer_jax.zero_shot.items import FORMATS, find_items

EPILOG = """\
examples:
  # the tiny pretraining run of the README, then its zero-shot {task} on held-out built-in clips
  python -m streamformer_jax.train --config configs/pretrain_multitask.py:tiny --workdir /tmp/sf_tiny
  python -m eval.builtin_heldout --out /tmp/sf_heldout --tasks {task}
  python -m eval.{task} --checkpoint /tmp/sf_tiny/export --data /tmp/sf_heldout/records --out {task}.json

  # converted records (python -m data_pipelines.convert {task} ...), or the original annotation file + videos
  python -m eval.{task} --checkpoint WORKDIR/export --data /data/records/{task} --out {task}.json
  python -m eval.{task} --checkpoint WORKDIR --data {example_ann} --video-root /data/videos --out {task}.json
"""
EXAMPLE_ANNOTATIONS = {"retrieval": "msrvtt_test_1k.csv", "grounding": "charades_sta_test.txt",
                       "localization": "activitynet_v1-3.json"}


def build_parser(task: str, description: str) -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog=f"python -m eval.{task}", description=description,
                           epilog=EPILOG.format(task=task, example_ann=EXAMPLE_ANNOTATIONS[task]),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_checkpoint(p, help="pretraining export (WORKDIR/export), a training WORKDIR (its newest checkpoint is "
                       "exported once), or our checkpoint with pretraining extras (convert import-pytorch of a .pth)")
    p.add_argument("--data", required=True, help="converted records (a task directory or a root holding "
                   f"{task}/) or an original annotation file (then --video-root)")
    cli.add_out(p, help="results JSON (written atomically)", metavar="JSON")
    p.add_argument("--video-root", default=None, help="directory of the videos an annotation file names")
    cli.add_format(p, FORMATS, "auto", help="what --data is (auto: a directory = records, a file = annotations)")
    cli.add_workers(p, default=2, help="threads decoding videos")
    p.add_argument("--batch-size", type=cli.positive(int), default=None,
                   help="clips per batch per host (default: 2 x the host's devices)")
    p.add_argument("--num-frames", type=cli.positive(int), default=None,
                   help="frames per clip (default: the model's)")
    p.add_argument("--max-frames", type=cli.positive(int), default=1024,
                   help="video files: decode at most this many frames spread over the video (default 1024)")
    p.add_argument("--text", default=None, help="SigLIP directory (text tower + spiece.model) for checkpoints "
                   "without a text tower")
    p.add_argument("--tokenizer", default=None, help="spiece.model overriding the checkpoint's tokenizer")
    p.add_argument("--no-resume", action="store_true", help="ignore features cached by an interrupted run")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--traceback", action="store_true", help="show Python tracebacks for errors")
    return p


def _default_classes(args, info: dict, zs: ZeroShotModel) -> list[str] | dict[str, list[str]]:
    """Localization class names by id (or {dataset: names by id}) when --class-names is not given: the records'
    metadata.json, else the label set the checkpoint was trained with; annotation files: the names found in the
    file, numbered as the converter numbers them."""
    if info["kind"] == "records":
        return label_sets(info["metadata"]) or zs.label_sets.get("localization") or []
    return class_names_for("localization", args.data, None, subset=getattr(args, "subset", None))


def evaluate_command(task: str, args, settings: dict | None = None, *, annotation_classes=None,
                     parse_options: dict | None = None, **evaluate_options) -> dict:
    """Load the checkpoint and the data, evaluate, write the JSON (`settings` are recorded in it); returns the
    result."""
    log = (lambda s: None) if args.no_progress else (lambda s: print(s, file=sys.stderr))
    zs = load_pretrained(args.checkpoint, text=args.text, tokenizer=args.tokenizer, log=log)
    items, info = find_items(args.data, task, video_root=args.video_root, fmt=args.format,
                             class_names=annotation_classes, max_frames=args.max_frames, parse_options=parse_options)
    if task == "localization" and not evaluate_options.get("class_names"):
        evaluate_options["class_names"] = _default_classes(args, info, zs)
    out = pathlib.Path(args.out)
    cache = out.with_name(out.name + ".features") / f"host{jax.process_index()}.npz"
    key = fingerprint(zs.source, info["path"], args.num_frames, args.max_frames)
    result = evaluate(task, zs, items, num_frames=args.num_frames, batch_size=args.batch_size, workers=args.workers,
                      progress=not args.no_progress, cache_path=None if args.no_resume else cache, cache_key=key,
                      **evaluate_options)
    result = {"checkpoint": str(args.checkpoint), "data": str(args.data), "data_kind": info["kind"],
              **(settings or {}), **result}
    write_json(out, result)
    if cache.exists() and jax.process_index() == 0:
        shutil.rmtree(cache.parent, ignore_errors=True)  # the results are written: the cache has served
    return result


def print_summary(task: str, result: dict, out) -> None:
    for k, v in flat_summary(task, result).items():
        print(f"{k} = {v:.4f}", file=sys.stderr)
    print(f"{result['num_evaluated']} videos evaluated, {result['num_failed']} unreadable -> {out}", file=sys.stderr)


def main(task: str, parser: argparse.ArgumentParser, argv: list[str] | None,
         run: Callable[[argparse.Namespace], dict]) -> int:
    """Parse, `run(args)` -> result, print the summary; user errors -> `error: ...` and exit status 2."""
    args = parser.parse_args(argv)

    def command() -> int:
        print_summary(task, run(args), args.out)
        return 0

    return cli.run(command, traceback=args.traceback)
