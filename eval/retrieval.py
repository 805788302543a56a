"""Zero-shot text-video retrieval of a pretraining checkpoint (the original's retrieval evaluation).

    python -m eval.retrieval --checkpoint WORKDIR/export --data DIR_OR_ANNOTATIONS --out retrieval.json

Per dataset (the annotation's `dataset` column / the record's dataset): text->video and video->text R@1/5/10,
median and mean rank. MSRVTT-style data: every caption is a query (one caption per video = the 1k-A protocol);
ActivityNet and DiDeMo: paragraph retrieval, the video's captions joined with spaces as one query (DiDeMo on its
first 30 s). Clip sampling and resizing as the original's test mode (`streamformer_jax.zero_shot.clips`).
"""
from __future__ import annotations

import sys

from eval import zero_shot
from streamformer_jax.zero_shot.clips import TRIM30_DATASETS
from streamformer_jax.zero_shot.evaluate import PARAGRAPH_DATASETS


def _csv(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def build_parser():
    p = zero_shot.build_parser("retrieval", __doc__.split("\n\n")[0])
    p.add_argument("--paragraph-datasets", default=",".join(PARAGRAPH_DATASETS),
                   help="datasets whose captions form one paragraph query (default: ActivityNet,DiDeMo)")
    p.add_argument("--trim-datasets", default=",".join(TRIM30_DATASETS),
                   help="datasets evaluated on their first 30 s only (default: DiDeMo)")
    return p


def run(args) -> dict:
    paragraph, trim = _csv(args.paragraph_datasets), _csv(args.trim_datasets)
    return zero_shot.evaluate_command("retrieval", args, {"paragraph_datasets": list(paragraph),
                                                          "trim_datasets": list(trim)},
                                      paragraph_datasets=paragraph, trim_datasets=trim)


def main(argv: list[str] | None = None) -> int:
    return zero_shot.main("retrieval", build_parser(), argv, run)


if __name__ == "__main__":
    sys.exit(main())
