"""CLI: ``python -m data_pipelines.convert TASK --annotations PATH --video-root DIR --out DIR [...]``, or every task
of the original metadata file: ``python -m data_pipelines.convert from-metadata --metadata all.yaml --out DIR
[--tasks kinetics,vis] [...]`` (one sub-directory per task).

Exit status: 0 on success (skipped videos are listed in metadata.json and report.txt), 1 with ``--strict``
when any video was skipped, 2 for a malformed annotation or bad arguments (one line on stderr).
"""
from __future__ import annotations

import argparse
import sys

from data_pipelines.annotations import AnnotationError
from data_pipelines.convert.build import Options
from data_pipelines.convert.from_metadata import convert_metadata
from data_pipelines.convert.pipeline import convert
from data_pipelines.records.shards import FORMATS
from streamformer_jax import cli
from streamformer_jax.tasks import registry

FROM_METADATA = "from-metadata"


def _parser(from_metadata: bool = False) -> argparse.ArgumentParser:
    if from_metadata:
        p = cli.ArgumentParser(
            prog=f"python -m data_pipelines.convert {FROM_METADATA}",
            description="Convert every task of the original metadata file (all.yaml) into OUT/<task>/, as the "
                        "original loaders read it; train with --config.data_dir=OUT (docs/data_convert.md).",
            epilog="example: python -m data_pipelines.convert from-metadata --metadata all.yaml "
                   "--out /data/records --short-side 256 --workers 16")
        p.add_argument("--metadata", required=True, help="the original metadata file (all.yaml)")
        cli.add_out(p, help="output root: one sub-directory per task", metavar="DIR")
        p.add_argument("--tasks", help="comma-separated subset, e.g. kinetics,vis (default: every task in the file)")
    else:
        p = cli.ArgumentParser(
            prog="python -m data_pipelines.convert",
            description="Convert annotations + videos to record shards (docs/data_convert.md). "
                        f"'{FROM_METADATA} --metadata all.yaml --out DIR' converts every task of the original "
                        "metadata file.")
        p.add_argument("task", choices=registry.names())
        p.add_argument("--annotations", required=True, help="annotation file (CSV / list / JSON, see docs)")
        p.add_argument("--video-root", required=True, help="directory the annotation's video paths are relative to")
        cli.add_out(p, help="output directory (shards, metadata.json, report.txt)", metavar="DIR")
        p.add_argument("--class-names", help="class names: text (line i = class i) or label2id JSON")
    cli.add_format(p, FORMATS, "arrayrecord", help="shard format")
    cli.add_workers(p, 1, help="decoding processes")
    p.add_argument("--strict", action="store_true", help="exit 1 if any video was skipped")
    p.add_argument("--fps", type=float, help="rate of stored frames (default: every source frame)")
    p.add_argument("--max-frames", type=int, help="at most this many frames per video (rate lowered to fit)")
    p.add_argument("--short-side", type=int, help="downscale frames so the short side is this many pixels")
    p.add_argument("--vis-fps", type=float, default=6.0, help="nominal rate of VIS image sequences")
    p.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality 1..95")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--shard-size", type=int, help="videos per shard (default 256)")
    group.add_argument("--num-shards", type=int, help="number of shards")
    if not from_metadata:
        p.add_argument("--subset", help="localization JSON: keep only entries with this 'subset' (e.g. training)")
        p.add_argument("--dataset", help="localization JSON: dataset name (HACS adds the v_ file prefix)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--runner", help="run as an Apache Beam pipeline on this runner (e.g. DirectRunner; needs "
                                    "the beam extra); --workers sets the DirectRunner's processes")
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    from_metadata = bool(argv) and argv[0] == FROM_METADATA
    args = _parser(from_metadata).parse_args(argv[1:] if from_metadata else argv)
    try:
        opts = Options(fps=args.fps, max_frames=args.max_frames, short_side=args.short_side, vis_fps=args.vis_fps,
                       jpeg_quality=args.jpeg_quality)
        common = dict(fmt=args.format, workers=args.workers, opts=opts, shard_size=args.shard_size,
                      num_shards=args.num_shards, progress=not args.no_progress, runner=args.runner)
        if from_metadata:
            tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
            summaries = convert_metadata(args.metadata, args.out, tasks=tasks, **common)
        else:
            summaries = {args.task: convert(args.task, args.annotations, args.video_root, args.out,
                                            class_names=args.class_names, subset=args.subset,
                                            dataset=args.dataset, **common)}
    except AnnotationError as err:
        return cli.fail(f"malformed annotation: {err}")
    except (OSError, ValueError) as err:  # missing annotation/class file, bad option values
        return cli.fail(cli.message(err))
    except ImportError as err:  # --runner without apache-beam installed
        return cli.fail(f"{err} (install the beam extra for --runner)")
    except KeyboardInterrupt:
        print("interrupted: complete shards are kept; run the same command again to resume", file=sys.stderr)
        return cli.INTERRUPTED
    for task, summary in summaries.items():
        print(f"{task}: {summary.line()}" if from_metadata else summary.line())
        for s in summary.skipped[:20]:
            where = f" ({s['dataset']})" if s.get("dataset") else ""
            print(f"  skipped {s['path']}{where}: {s['reason']}")
        if len(summary.skipped) > 20:
            print(f"  ... {len(summary.skipped) - 20} more in {summary.out_dir}/report.txt")
    return 1 if args.strict and any(s.skipped for s in summaries.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
