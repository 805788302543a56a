"""End-to-end conversion (Kinetics format): read-back, skipping, determinism, resume, TFRecord, CLI."""
import os
import pathlib
import pickle
import subprocess
import sys

import numpy as np
import pytest

from data_helpers import frame_index_of, make_test_video, truncate_file
from data_pipelines.records import frames as jpeg
from data_pipelines.records import schema
from data_pipelines.convert import Options, convert, pipeline
from data_pipelines.records.sources import ArrayRecordSource, TFRecordSource, open_source
from data_pipelines.convert import __main__ as cli
from data_pipelines.records import tfrecord

REPO = pathlib.Path(__file__).resolve().parents[1]
# (relative path, label, number of frames at 8 fps, codec); None frames = a file that is not there.
VIDEOS = [
    ("c0/v0.mp4", 0, 12, "mpeg4"),
    ("c1/v1.mp4", 1, 16, "libx264"),
    ("c0/bad.mp4", 0, 24, "mpeg4"),  # truncated after writing
    ("c0/v2.avi", 0, 10, "mpeg4"),
    ("c1/missing.mp4", 1, None, None),
    ("c1/v3.mp4", 1, 9, "mpeg4"),
    ("c0/v4.mp4", 0, 8, "mpeg4"),
]
OPTS = Options(fps=4)  # every other source frame


@pytest.fixture(scope="module")
def kinetics(tmp_path_factory):
    root = tmp_path_factory.mktemp("kinetics")
    videos = root / "videos"
    for i, (rel, _, n, codec) in enumerate(VIDEOS):
        if n is not None:
            make_test_video(videos / rel, n, (64, 48), 8, seed=i, codec=codec)
    truncate_file(videos / "c0/bad.mp4", 0.4)
    ann = root / "train.csv"
    ann.write_text("path,label\n" + "".join(f"{rel},{label}\n" for rel, label, _, _ in VIDEOS))
    classes = root / "classes.txt"
    classes.write_text("abseiling\nair drumming\n")
    return {"root": root, "videos": videos, "ann": ann, "classes": classes}


def _convert(k, out, **kw):
    kw.setdefault("opts", OPTS)
    kw.setdefault("shard_size", 2)
    return convert("kinetics", str(k["ann"]), str(k["videos"]), str(out), class_names=str(k["classes"]),
                   progress=False, **kw)


def _output_bytes(out):
    """Every output file except the resume markers, as {name: bytes}."""
    return {p.name: p.read_bytes() for p in sorted(pathlib.Path(out).iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def converted(kinetics, tmp_path_factory):
    out = tmp_path_factory.mktemp("out_w1")
    summary = _convert(kinetics, out, workers=1)
    return out, summary


def test_read_back_frames_times_and_labels(kinetics, converted):
    out, summary = converted
    good = [v for v in VIDEOS if v[2] is not None and "bad" not in v[0]]
    assert summary.num_examples == len(good) == 5
    src = open_source(out)
    assert isinstance(src, ArrayRecordSource) and len(src) == 5
    meta = pipeline_meta(out)
    assert meta["num_examples"] == 5 and meta["num_annotations"] == 7
    assert meta["class_names"] == ["abseiling", "air drumming"]
    assert meta["schema_version"] == schema.SCHEMA_VERSION and meta["format"] == "arrayrecord"
    assert [s["num_examples"] for s in meta["shards"]] == [1, 1, 1, 2]  # 7 items in 4 balanced shards
    assert meta["counts"]["label/0"] == 3 and meta["counts"]["label/1"] == 2
    for i, (rel, label, n, _) in enumerate(good):
        ex = schema.decode_record(src[i])
        assert ex["video_id"] == rel.rsplit(".", 1)[0] and ex["label"] == label and ex["task"] == "kinetics"
        kept = (n + 1) // 2  # 8 fps -> 4 fps keeps source frames 0, 2, 4, ...
        np.testing.assert_allclose(ex["frame_times"], np.arange(kept) * 0.25, atol=1e-6)
        assert ex["fps"] == 4.0 and ex["source_fps"] == 8.0 and (ex["height"], ex["width"]) == (48, 64)
        assert ex["duration"] == pytest.approx(n / 8, abs=1e-3)
        frames = jpeg.decode_frames(ex["frames"])
        assert [frame_index_of(f) for f in frames] == list(range(0, n, 2))
    assert meta["counts"]["frames"] == sum((v[2] + 1) // 2 for v in good)


def pipeline_meta(out):
    import json

    return json.loads((pathlib.Path(out) / "metadata.json").read_text())


def test_bad_and_missing_videos_are_skipped_and_reported(converted):
    out, summary = converted
    meta = pipeline_meta(out)
    reasons = {s["path"]: s["reason"] for s in meta["skipped"]}
    assert set(reasons) == {"c0/bad.mp4", "c1/missing.mp4"}
    assert reasons["c1/missing.mp4"] == "missing file"
    assert "cannot open" in reasons["c0/bad.mp4"] or "truncated" in reasons["c0/bad.mp4"]
    assert meta["num_skipped"] == 2 == len(summary.skipped)
    report = (pathlib.Path(out) / "report.txt").read_text()
    assert "SKIPPED c0/bad.mp4" in report and "SKIPPED c1/missing.mp4" in report
    assert not [p for p in pathlib.Path(out).rglob("*.tmp")]


def test_two_workers_give_byte_identical_output(kinetics, converted, tmp_path):
    out1, _ = converted
    _convert(kinetics, tmp_path, workers=2)
    assert _output_bytes(tmp_path) == _output_bytes(out1)


def test_resume_after_interruption_gives_same_output(kinetics, converted, tmp_path, monkeypatch):
    calls = []
    real = pipeline.run_item

    def failing(item, task, opts):
        calls.append(item.video_id)
        if len(calls) == 5:  # shards hold items [0], [1, 2], [3, 4], [5, 6]: dies inside shard 2
            raise KeyboardInterrupt("simulated crash")
        return real(item, task, opts)

    monkeypatch.setattr(pipeline, "run_item", failing)
    with pytest.raises(KeyboardInterrupt):
        _convert(kinetics, tmp_path, workers=1)
    names = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    # shards 0 and 1 complete; shard 2 (one record written when it died) not left half-written
    assert names == ["kinetics.array_record-00000-of-00004", "kinetics.array_record-00001-of-00004"]
    (tmp_path / "kinetics.array_record-00002-of-00004.tmp").write_bytes(b"debris of a killed run")

    calls.clear()
    monkeypatch.setattr(pipeline, "run_item", lambda item, task, opts: (calls.append(item.video_id),
                                                                         real(item, task, opts))[1])
    summary = _convert(kinetics, tmp_path, workers=1)
    assert summary.resumed_shards == 2 and calls == ["c0/v2", "c1/missing", "c1/v3", "c0/v4"]
    assert _output_bytes(tmp_path) == _output_bytes(converted[0])


def test_changed_options_rebuild_instead_of_reusing(kinetics, converted, tmp_path):
    _convert(kinetics, tmp_path, workers=1)
    summary = _convert(kinetics, tmp_path, workers=1, opts=Options(fps=2))
    assert summary.resumed_shards == 0
    ex = schema.decode_record(open_source(tmp_path)[0])
    np.testing.assert_allclose(ex["frame_times"], [0.0, 0.5, 1.0], atol=1e-6)  # 12 frames at 8 fps -> 2 fps
    again = _convert(kinetics, tmp_path, workers=1, opts=Options(fps=2))
    assert again.resumed_shards == 4


def test_tfrecord_random_access_equals_arrayrecord(kinetics, converted, tmp_path):
    import grain

    _convert(kinetics, tmp_path, fmt="tfrecord")
    meta = pipeline_meta(tmp_path)
    assert meta["format"] == "tfrecord" and all(s["index"] == s["file"] + ".idx" for s in meta["shards"])
    tf_src = open_source(tmp_path, verify_crc=True)
    ar_src = open_source(converted[0])
    assert isinstance(tf_src, TFRecordSource) and len(tf_src) == len(ar_src) == 5
    for i in [4, 0, 3, 1, 2, -1]:
        assert tf_src[i] == ar_src[i]
    with pytest.raises(IndexError):
        tf_src[5]
    clone = pickle.loads(pickle.dumps(tf_src))
    assert clone[2] == ar_src[2]
    # Framing is TF's: grain's own TFRecord reader (no index) reads the same records in order.
    shard = tmp_path / meta["shards"][-1]["file"]
    assert list(grain.experimental.TFRecordIterDataset(str(shard))) == [ar_src[3], ar_src[4]]
    offsets = [o for o, _ in tfrecord.iter_records(shard)]
    np.testing.assert_array_equal(tfrecord.read_index(str(shard) + ".idx"), offsets)


def test_crc32c_python_fallback_matches():
    assert tfrecord.crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C check value
    data = os.urandom(3000)
    assert tfrecord.crc32c_py(data) == tfrecord.crc32c(data)


def test_cli_malformed_line_names_file_and_line(kinetics, tmp_path):
    ann = tmp_path / "broken.csv"
    ann.write_text("path,label\nc0/v0.mp4,0\nc1/v1.mp4 1 extra,1,7\n")
    proc = subprocess.run([sys.executable, "-m", "data_pipelines.convert", "kinetics", "--annotations", str(ann),
                           "--video-root", str(kinetics["videos"]), "--out", str(tmp_path / "out"),
                           "--class-names", str(kinetics["classes"])],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert f"{ann}:3:" in lines[0]


def test_cli_label_errors_and_strict(kinetics, tmp_path, capsys):
    ann = tmp_path / "out_of_range.csv"
    ann.write_text("c0/v0.mp4,0\nc1/v1.mp4,5\n")
    args = ["kinetics", "--annotations", str(ann), "--video-root", str(kinetics["videos"]),
            "--class-names", str(kinetics["classes"]), "--no-progress", "--fps", "4"]
    assert cli.main(args + ["--out", str(tmp_path / "a")]) == 2
    assert f"{ann}:2: label index 5 out of range" in capsys.readouterr().err
    args[2] = str(kinetics["ann"])
    assert cli.main(args + ["--out", str(tmp_path / "b")]) == 0  # skips are not failures...
    assert "wrote 5 of 7 examples" in capsys.readouterr().out
    assert cli.main(args + ["--out", str(tmp_path / "c"), "--strict"]) == 1  # ...unless --strict


def test_sigkill_then_rerun_resumes_to_same_output(kinetics, tmp_path):
    import signal
    import time

    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "data_pipelines.convert", "kinetics", "--annotations", str(kinetics["ann"]),
           "--video-root", str(kinetics["videos"]), "--out", str(out), "--class-names", str(kinetics["classes"]),
           "--fps", "4", "--shard-size", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if list((out / "_progress").glob("*.json")):  # one shard finished: kill the run mid-way
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait(timeout=60)
    resumed = _convert(kinetics, out, workers=1, shard_size=1)
    assert resumed.resumed_shards >= 1
    clean = _convert(kinetics, tmp_path / "clean", workers=1, shard_size=1)
    assert clean.resumed_shards == 0
    assert _output_bytes(out) == _output_bytes(tmp_path / "clean")


def test_num_shards_option(kinetics, tmp_path):
    summary = _convert(kinetics, tmp_path, shard_size=None, num_shards=3)
    meta = pipeline_meta(tmp_path)
    assert [s["file"] for s in meta["shards"]] == [f"kinetics.array_record-0000{k}-of-00003" for k in range(3)]
    assert summary.num_examples == len(open_source(tmp_path)) == 5
