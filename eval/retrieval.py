"""Zero-shot text-video retrieval of a pretraining checkpoint (the original's retrieval evaluation).

    python -m eval.retrieval --checkpoint WORKDIR/export --data DIR_OR_ANNOTATIONS --out retrieval.json

Per dataset (the annotation's `dataset` column / the record's dataset): text->video and video->text R@1/5/10,
median and mean rank. MSRVTT-style data: every caption is a query (one caption per video = the 1k-A protocol);
ActivityNet and DiDeMo: paragraph retrieval, the video's captions joined with spaces as one query (DiDeMo on its
first 30 s). Clip sampling and resizing as the original's test mode (see `eval.zero_shot`).
"""
from __future__ import annotations

import sys

from eval import _cli
from eval.zero_shot import PARAGRAPH_DATASETS, TRIM30_DATASETS


def _csv(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def build_parser():
    p = _cli.build_parser("retrieval", __doc__.split("\n\n")[0])
    p.add_argument("--paragraph-datasets", default=",".join(PARAGRAPH_DATASETS),
                   help="datasets whose captions form one paragraph query (default: ActivityNet,DiDeMo)")
    p.add_argument("--trim-datasets", default=",".join(TRIM30_DATASETS),
                   help="datasets evaluated on their first 30 s only (default: DiDeMo)")
    return p


def _main(argv):
    args = build_parser().parse_args(argv)
    paragraph, trim = _csv(args.paragraph_datasets), _csv(args.trim_datasets)
    result = _cli.run("retrieval", args, {"paragraph_datasets": list(paragraph), "trim_datasets": list(trim)},
                      paragraph_datasets=paragraph, trim_datasets=trim)
    _cli.print_summary("retrieval", result, args.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    return _cli.main_wrapper("retrieval", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
