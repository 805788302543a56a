"""The zero-shot evaluation CLIs (`python -m eval.retrieval|grounding|localization`): shared flags and errors.

Flags follow the project's CLI convention (`--checkpoint`, `--out`, `--workers`, `--format`); a user error (a
missing file, a malformed annotation, a checkpoint without a text tower...) is one `error: ...` line on stderr
with exit status 2; `--traceback` shows the Python traceback instead.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Callable

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
    p = argparse.ArgumentParser(prog=f"python -m eval.{task}", description=description,
                                epilog=EPILOG.format(task=task, example_ann=EXAMPLE_ANNOTATIONS[task]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="pretraining export (WORKDIR/export), a training WORKDIR (its newest checkpoint is exported "
                        "once), or our checkpoint with pretraining extras (convert import-pytorch of a .pth)")
    p.add_argument("--data", required=True, help="converted records (a task directory or a root holding "
                   f"{task}/) or an original annotation file (then --video-root)")
    p.add_argument("--out", required=True, help="results JSON (written atomically)")
    p.add_argument("--video-root", default=None, help="directory of the videos an annotation file names")
    p.add_argument("--format", default="auto", choices=("auto", "records", "annotations"),
                   help="what --data is (default: a directory = records, a file = annotations)")
    p.add_argument("--workers", type=int, default=2, help="threads decoding videos (default 2)")
    p.add_argument("--batch-size", type=int, default=None, help="clips per batch per host "
                   "(default: 2 x the host's devices)")
    p.add_argument("--num-frames", type=int, default=None, help="frames per clip (default: the model's)")
    p.add_argument("--max-frames", type=int, default=1024,
                   help="video files: decode at most this many frames spread over the video (default 1024)")
    p.add_argument("--text", default=None, help="SigLIP directory (text tower + spiece.model) for checkpoints "
                   "without a text tower")
    p.add_argument("--tokenizer", default=None, help="spiece.model overriding the checkpoint's tokenizer")
    p.add_argument("--no-resume", action="store_true", help="ignore features cached by an interrupted run")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--traceback", action="store_true", help="show Python tracebacks for errors")
    return p


def run(task: str, args, extra_settings: dict | None = None, **evaluate_kwargs) -> dict:
    """Load the checkpoint and the data, evaluate, write the JSON; returns the result."""
    from eval import pretrained as P
    from eval import zero_shot as Z

    log = (lambda s: print(s, file=sys.stderr)) if not args.no_progress else (lambda s: None)
    pm = P.load_pretrained(args.checkpoint, text=args.text, tokenizer=args.tokenizer, log=log)
    items, info = Z.find_items(args.data, task, video_root=args.video_root, fmt=args.format,
                               class_names=evaluate_kwargs.pop("annotation_classes", None),
                               max_frames=args.max_frames, parse_kwargs=evaluate_kwargs.pop("parse_kwargs", None))
    if task == "localization" and not evaluate_kwargs.get("class_names"):
        evaluate_kwargs["class_names"] = _default_classes(args, info, pm)
    out = pathlib.Path(args.out)
    cache = out.with_name(out.name + ".features") / f"host{_process_index()}.npz"
    key = [pm.source, info["path"], args.num_frames, args.max_frames]
    result = Z.evaluate(task, pm, items, num_frames=args.num_frames, batch_size=args.batch_size,
                        workers=args.workers, progress=not args.no_progress,
                        cache_path=None if args.no_resume else cache, cache_key=Z.fingerprint(*key),
                        **evaluate_kwargs)
    result = {"checkpoint": str(args.checkpoint), "data": str(args.data), "data_kind": info["kind"],
              **(extra_settings or {}), **result}
    Z.write_json(out, result)
    if cache.exists() and _process_index() == 0:
        import shutil

        shutil.rmtree(cache.parent, ignore_errors=True)  # the results are written: the cache has served
    return result


def _default_classes(args, info, pm) -> list[str]:
    """Class names by id when --class-names is not given: the records' metadata.json, else (annotation files)
    the sorted names found in the file, as the converter numbers them."""
    if info["kind"] == "records":
        names = list(info["metadata"].get("class_names") or [])
        return names or list(pm.label_sets.get("localization") or [])
    from data_pipelines.annotations.localization import class_names_of

    return list(class_names_of(args.data, getattr(args, "subset", None)))


def _process_index() -> int:
    import jax

    return jax.process_index()


def main_wrapper(task: str, body: Callable[[list[str] | None], int], argv: list[str] | None) -> int:
    """Run `body`, turning user errors into one `error: ...` line and exit status 2."""
    from data_pipelines.schema import SchemaError
    from eval.pretrained import PretrainedLoadError
    from eval.zero_shot import EvalDataError
    from streamformer_jax.convert.pretrain import ConversionError
    from streamformer_jax.text.model import TextLoadError
    from streamformer_jax.text.tokenizer import TokenizerError

    show = "--traceback" in (argv if argv is not None else sys.argv[1:])
    try:
        return body(argv)
    except (FileNotFoundError, NotADirectoryError, PermissionError, EvalDataError, PretrainedLoadError,
            ConversionError, TextLoadError, TokenizerError, SchemaError, json.JSONDecodeError, ValueError) as e:
        if show:
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, FileNotFoundError) and e.filename and str(e.filename) not in msg:
            msg = f"{e.filename}: {msg}"
        print(f"error: {msg}", file=sys.stderr)
        return 2


def print_summary(task: str, result: dict, out) -> None:
    from eval.zero_shot import flat_summary

    for k, v in flat_summary(task, result).items():
        print(f"{k} = {v:.4f}", file=sys.stderr)
    print(f"{result['num_evaluated']} videos evaluated, {result['num_failed']} unreadable -> {out}", file=sys.stderr)
