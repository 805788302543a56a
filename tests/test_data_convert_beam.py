"""Beam runner (optional extra): same bytes as the local runner. Skipped when apache_beam is not installed,
except with STREAMFORMER_REQUIRE=apache_beam (CI runs this file in its own [beam] environment that way)."""
import pathlib

import pytest

from data_helpers import make_test_video, require_module
from data_pipelines.convert import Options, convert

require_module("apache_beam")


def _files(out):
    return {p.name: p.read_bytes() for p in sorted(pathlib.Path(out).iterdir()) if p.is_file()}


@pytest.mark.parametrize("workers", [1, 2])
def test_direct_runner_matches_local_runner(tmp_path, workers):
    videos = tmp_path / "videos"
    rows = []
    for i in range(5):
        make_test_video(videos / f"v{i}.mp4", 8 + i, (64, 48), 8, seed=i)
        rows.append(f"v{i}.mp4,{i % 2}")
    rows.insert(2, "missing.mp4,0")
    ann = tmp_path / "train.csv"
    ann.write_text("\n".join(rows) + "\n")
    classes = tmp_path / "classes.txt"
    classes.write_text("a\nb\n")
    kw = dict(class_names=str(classes), opts=Options(fps=4), shard_size=2, progress=False)
    local = convert("kinetics", str(ann), str(videos), str(tmp_path / "local"), **kw)
    beam = convert("kinetics", str(ann), str(videos), str(tmp_path / "beam"), runner="DirectRunner",
                   workers=workers, **kw)
    assert beam.num_examples == local.num_examples == 5 and len(beam.skipped) == 1
    assert _files(tmp_path / "beam") == _files(tmp_path / "local")
    again = convert("kinetics", str(ann), str(videos), str(tmp_path / "beam"), runner="DirectRunner", **kw)
    assert again.resumed_shards == 3
