"""Write a small copy of the ORIGINAL pretraining data layout for demos without downloads: `DIR/all.yaml` in the
original metadata format and, for every dataset it names (18, in six tasks), annotation files in the original
formats with ids of each dataset's real shape, tiny real videos and images at the paths the original loaders open,
and a few deliberately bad items (a missing video, VIS items without annotations or with a malformed mask).

    python scripts/make_original_demo.py /tmp/sf_orig
    python -m data_pipelines.convert from-metadata --metadata /tmp/sf_orig/all.yaml --out /tmp/sf_orig/records

The tree is the one the tests use (`tests/original_formats.py`).
"""
from __future__ import annotations

import argparse
import pathlib
import sys

TESTS = pathlib.Path(__file__).resolve().parents[1] / "tests"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="directory to write (created)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(TESTS))
    from original_formats import write_original_datasets

    path = write_original_datasets(pathlib.Path(args.out).absolute())
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
