r"""`python -m data_pipelines.inspect DIR [--index I] [--limit N]`: converted records as JSON lines, to check a
conversion by eye or compare it in a script.

One line per record (in record order, from --index, at most --limit): "video_id", "dataset", "path" (the file
or frame folder that was decoded; null for records converted before it was stored), "num_frames", "fps",
"samples" (annotation rows: how often the original draws the record per epoch), and as the task has them
"labels" (class names; kinetics/ssv2: one), "captions", "segments" ([{"label", "start", "end"}]: class name or
query text, seconds: where each row is positive), "categories" (VIS instance class names). Class names come
from the directory's metadata.json (per-dataset tables for localization and VIS); an id without a name prints as
"#<id>".

  python -m data_pipelines.inspect /data/records/localization --limit 3
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from data_pipelines.records import schema
from data_pipelines.pipeline import label_tables, loader
from data_pipelines.records import sources
from streamformer_jax.tasks import registry


def class_namer(meta):
    """`name(id, dataset)` from the directory's label table(s)."""
    sets = label_tables.label_sets(meta)

    def name(i: int, dataset: str) -> str:
        table = sets.get(dataset, []) if isinstance(sets, dict) else sets
        return table[i] if 0 <= i < len(table) and table[i] else f"#{i}"

    return name


def describe(record: bytes, meta) -> dict:
    ex = schema.decode_record(record)
    spec = registry.get(ex["task"])
    out = {"video_id": ex["video_id"], "dataset": ex.get("dataset", ""), "path": ex.get("source"),
           "num_frames": len(ex["frames"]), "fps": round(float(ex["fps"]), 6), "samples": spec.samples_in(ex)}
    if spec.describe is not None:
        out.update(spec.describe(ex, class_namer(meta)))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_pipelines.inspect",
                                description="Print converted records as JSON lines (docs/data_convert.md).",
                                epilog="example: python -m data_pipelines.inspect /data/records/vis --index 10 "
                                       "--limit 2")
    p.add_argument("dir", help="a converted task directory (with metadata.json)")
    p.add_argument("--index", type=int, default=0, help="first record (default 0)")
    p.add_argument("--limit", type=int, default=None, help="at most this many records (default: all)")
    args = p.parse_args(argv)
    try:
        if not os.path.isdir(args.dir):
            raise FileNotFoundError(f"{args.dir}: no such directory")
        meta = loader.directory_metadata(args.dir)
        src = sources.open_source(args.dir)
        if not 0 <= args.index < len(src):
            raise ValueError(f"{args.dir}: --index {args.index} out of range (it holds {len(src)} records)")
        if args.limit is not None and args.limit < 0:
            raise ValueError(f"--limit must be >= 0, got {args.limit}")
        stop = len(src) if args.limit is None else min(len(src), args.index + args.limit)
        for i in range(args.index, stop):
            print(json.dumps(describe(src[i], meta), ensure_ascii=False))
    except (OSError, ValueError) as err:  # missing directory or shards, bad index, unreadable record
        print(f"error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `| head`
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
