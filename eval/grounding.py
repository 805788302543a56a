"""Zero-shot temporal grounding of a pretraining checkpoint (the original's grounding validation).

    python -m eval.grounding --checkpoint WORKDIR/export --data DIR_OR_ANNOTATIONS --out grounding.json

Per query: T frames over the whole video, the grounding head's per-frame logits, sigmoid, and the window grown
around the most probable frame above factor x its probability, for factors 0.5, 0.6 and 0.7
(`streamformer_jax.zero_shot.metrics.threshold_window`); R@1 at IoU 0.3/0.5/0.7 and mIoU per factor and per
dataset. `--method max_subarray` uses the earlier rule of this package instead (not comparable with the
original).
"""
from __future__ import annotations

import sys

from eval import zero_shot
from streamformer_jax.zero_shot.evaluate import GROUNDING_METHODS


def build_parser():
    p = zero_shot.build_parser("grounding", __doc__.split("\n\n")[0])
    p.add_argument("--method", choices=GROUNDING_METHODS, default="original",
                   help="window rule: the original's factor windows (default) or the maximum-subarray rule")
    return p


def run(args) -> dict:
    return zero_shot.evaluate_command("grounding", args, {"method": args.method}, method=args.method)


def main(argv: list[str] | None = None) -> int:
    return zero_shot.main("grounding", build_parser(), argv, run)


if __name__ == "__main__":
    sys.exit(main())
