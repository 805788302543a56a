"""Zero-shot temporal action localization of a pretraining checkpoint.

    python -m eval.localization --checkpoint WORKDIR/export --data DIR_OR_ANNOTATIONS --out localization.json

Per video: T frames over the whole video, the localization head's per-frame class scores against the
template-mean label embeddings, sigmoid, segments (runs above factor x the class maximum,
`streamformer_jax.zero_shot.metrics.localization_segments`), then ActivityNet's detection mAP at tIoU
0.5:0.05:0.95 and their average, per dataset. Annotations: the original CSV, or ActivityNet / HACS / FineAction
JSON (`--subset validation`). Class names: `--class-names`, else the records' metadata.json, else the label set
the checkpoint was trained with.
"""
from __future__ import annotations

import sys

from data_pipelines.annotations import load_class_names
from eval import zero_shot


def build_parser():
    p = zero_shot.build_parser("localization", __doc__.split("\n\n")[0])
    p.add_argument("--class-names", default=None, help="class table: text file (line i = class i) or label2id.json "
                   "(flat or nested per dataset)")
    p.add_argument("--subset", default=None, help="ActivityNet-style JSON: evaluate this subset (e.g. validation)")
    p.add_argument("--json-dataset", default="", help="ActivityNet-style JSON: its dataset name (ActivityNet, HACS, "
                   "FineAction; HACS selects the v_ file prefix)")
    return p


def run(args) -> dict:
    table = load_class_names(args.class_names) if args.class_names else None
    names = list(table.names) if table is not None else None
    parse = {"subset": args.subset, "dataset": args.json_dataset} if str(args.data).endswith(".json") else {}
    return zero_shot.evaluate_command("localization", args, {"class_names_source": args.class_names or "auto",
                                                             "subset": args.subset},
                                      annotation_classes=table, class_names=names, parse_options=parse)


def main(argv: list[str] | None = None) -> int:
    return zero_shot.main("localization", build_parser(), argv, run)


if __name__ == "__main__":
    sys.exit(main())
