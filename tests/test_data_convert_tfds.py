"""Converter output read through tensorflow-datasets (no TensorFlow): every record equals decode_record."""
import json
import pathlib
import sys

import numpy as np
import pytest

from data_helpers import frame_pattern, make_test_video, require_module
from data_pipelines.records import frames as jpeg
from data_pipelines.records import schema
from data_pipelines.convert import Options, convert, tfds_info
from data_pipelines.records.sources import open_source

tfds = require_module("tensorflow_datasets")


def _run(task, ann, root, out, **kw):
    kw.setdefault("shard_size", 2)
    return convert(task, str(ann), str(root), str(out), progress=False, **kw)


# ------------------------------------------------------------------------------------- small datasets per task
def _kinetics(tmp):
    videos = tmp / "videos"
    rows = []
    for i in range(4):
        make_test_video(videos / f"c{i % 2}/v{i}.mp4", 6 + 2 * i, (64, 48), 8, seed=i)
        rows.append(f"c{i % 2}/v{i}.mp4,{'air drumming' if i % 2 else 'abseiling'}")
    rows.insert(1, "c0/missing.mp4,abseiling")  # skipped: shard 1 (items 1, 2) holds one record
    (tmp / "train.csv").write_text("\n".join(rows) + "\n")
    (tmp / "classes.txt").write_text("abseiling\nair drumming\n")
    return tmp / "train.csv", videos, {"class_names": str(tmp / "classes.txt")}


def _videos_and_csv(tmp, clips, name: str, text: str):
    """Real clips (relative path, frames, (width, height), seed) under tmp/videos and an annotation file."""
    videos = tmp / "videos"
    for rel, frames, size, seed in clips:
        make_test_video(videos / rel, frames, size, 8, seed=seed)
    (tmp / name).write_text(text)
    return tmp / name, videos


def _retrieval(tmp):
    ann, videos = _videos_and_csv(tmp, [("MSRVTT/video0.mp4", 8, (64, 48), 1), ("wv1.mp4", 10, (48, 64), 2)],
                                  "train_retrieval.csv", 'video_id,dataset,text\n'
                                  'video0,MSRVTT,"[\'a cat\', \'ein Hund, läuft\']"\nwv1,WebVid,"one caption"\n')
    return ann, videos, {}


def _grounding(tmp):
    clips = [("CharadesSTA/AB12.mp4", 16, (64, 48), 3), ("TaCoS/s13-d21-cam-002.avi", 8, (64, 48), 4),
             ("CharadesSTA/CD34.mp4", 12, (64, 48), 5)]
    ann, videos = _videos_and_csv(tmp, clips, "g.csv",
                                  "video_id,start_second,end_second,text,relevant_windows,dataset\n"
                                  'AB12,0.5,1.0,person opens door,"[[0.5, 1.0]]",CharadesSTA\n'
                                  's13-d21,0.2,0.6,cuts a carrot,"[[0.2, 0.4], [0.5, 0.6]]",TaCoS\n'
                                  'AB12,1.2,1.9,person sits,"[[1.2, 1.9]]",CharadesSTA\n'
                                  'CD34,0.1,0.3,waves,"[[0.1, 0.3]]",CharadesSTA\n')
    return ann, videos, {}


def _localization(tmp):
    labels = tmp / "label2id.json"
    labels.write_text(json.dumps({"HACS": {"Archery": 0, "Ballet": 1}}))
    clips = [("HACS/v_abc.mp4", 16, (64, 48), 6), ("HACS/v_def.mp4", 8, (64, 48), 7)]
    ann, videos = _videos_and_csv(tmp, clips, "loc.csv",
                                  "video_id,start_second,end_second,text,relevant_windows,dataset,duration\n"
                                  'abc,0.0,0.5,Ballet,"[[0.0, 0.5], [1.0, 1.5]]",HACS,2.0\n'
                                  'abc,0.6,0.9,Archery,"[[0.6, 0.9]]",HACS,2.0\n'
                                  'def,0.1,0.4,Archery,"[[0.1, 0.4]]",HACS,1.0\n')
    return ann, videos, {"class_names": str(labels)}


def _vis(tmp):
    """YouTube-VIS JSON: two sequences of JPEG frames, rectangle masks, one instance absent in frame 0."""
    h, w = 48, 64
    root = tmp / "JPEGImages"
    videos, anns = [], []
    for vid, n in ((1, 4), (2, 3)):
        files = [f"s{vid}/{i:05d}.jpg" for i in range(n)]
        for i, f in enumerate(files):
            (root / f).parent.mkdir(parents=True, exist_ok=True)
            (root / f).write_bytes(jpeg.encode_jpeg(frame_pattern(i, (w, h), seed=vid)))
        videos.append({"id": vid, "file_names": files, "height": h, "width": w})
        for inst, cat in enumerate((7, 3)):
            segs = []
            for i in range(n):
                if inst == 1 and i == 0:
                    segs.append(None)
                    continue
                m = np.zeros((h, w), np.uint8)
                m[4 + 2 * i:20 + 2 * i, 8 * inst + i:30 + 8 * inst] = 1
                segs.append({"size": [h, w], "counts": schema.rle_encode(m).tolist()})
            anns.append({"id": len(anns) + 1, "video_id": vid, "category_id": cat, "segmentations": segs})
    ann = tmp / "train_YoutubeVIS.json"
    ann.write_text(json.dumps({"videos": videos, "annotations": anns,
                               "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "person"}]}))
    return ann, root, {}


DATASETS = {"kinetics": _kinetics, "retrieval": _retrieval, "grounding": _grounding,
            "localization": _localization, "vis": _vis}


# ------------------------------------------------------------------------------------- comparisons
def _assert_same(a: dict, b: dict):
    """Exact equality of two decode_record-style dicts: keys, python types, numpy dtypes, shapes, values."""
    assert sorted(a) == sorted(b)
    for k in b:
        if isinstance(b[k], np.ndarray):
            assert isinstance(a[k], np.ndarray) and a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        else:
            assert type(a[k]) is type(b[k]) and a[k] == b[k], k


def _assert_raw_tfds_matches(ex: dict, rec: dict):
    """The tfds values themselves (no from_tfds), field by field, against decode_record's."""
    assert ex["task"] == rec["task"].encode() and ex["schema_version"] == rec["schema_version"]
    v = ex["video"]
    assert v["id"] == rec["video_id"].encode() and v["dataset"] == rec["dataset"].encode()
    assert v["source"] == rec["source"].encode()
    assert (v["height"], v["width"]) == (rec["height"], rec["width"])
    for name in ("fps", "source_fps", "duration"):
        assert v[name] == rec[name], name  # float32 in both
    assert list(ex["frames"]["jpeg"]) == rec["frames"]  # the raw JPEG bytes
    us = ex["frames"]["timestamp_us"]
    assert us.dtype == np.int64 and np.array_equal(us / 1e6, rec["frame_times"])
    checked = {"task", "schema_version", "video", "frames"}
    if "label" in rec:
        assert ex["label"] == rec["label"]
        checked.add("label")
    if "captions" in rec:
        assert ex["captions"] == [c.encode() for c in rec["captions"]]
        checked.add("captions")
    if "trim_seconds" in rec:
        assert ex["trim_seconds"] == rec["trim_seconds"]
        checked.add("trim_seconds")
    for name in ("windows", "relevant_windows", "relevant_window_caption", "segments", "segment_labels",
                 "categories", "caption_row"):
        if name in rec:
            got = ex[name]
            assert got.dtype == rec[name].dtype and got.shape == rec[name].shape, name
            np.testing.assert_array_equal(got, rec[name])
            checked.add(name)
    if "mask_rle_lengths" in rec:
        np.testing.assert_array_equal(ex["masks"]["rle_lengths"], rec["mask_rle_lengths"])
        np.testing.assert_array_equal(ex["masks"]["rle_counts"], rec["mask_rle_counts"])
        checked.add("masks")
    assert checked == set(ex), set(ex) - checked  # no feature left unchecked


@pytest.mark.parametrize("task", list(DATASETS))
def test_every_record_reads_back_through_tfds_data_source(tmp_path, task):
    ann, root, kw = DATASETS[task](tmp_path)
    summary = _run(task, ann, root, tmp_path / "out", **kw)
    out = tmp_path / "out"
    builder = tfds.builder_from_directory(str(out))
    assert builder.info.name == task
    assert builder.info.splits["train"].num_examples == summary.num_examples
    ds = builder.as_data_source(split="train")
    src = open_source(out)
    assert len(ds) == len(src) == summary.num_examples >= 2
    for i in range(len(src)):
        rec = schema.decode_record(src[i])
        ex = ds[i]
        _assert_raw_tfds_matches(ex, rec)
        _assert_same(tfds_info.from_tfds(ex), rec)
        if task == "vis":
            np.testing.assert_array_equal(schema.decode_masks(tfds_info.from_tfds(ex)), schema.decode_masks(rec))
    assert "tensorflow" not in sys.modules  # tfds read ArrayRecord without TensorFlow


def test_kinetics_class_label_and_shard_layout(tmp_path):
    ann, root, kw = _kinetics(tmp_path)
    summary = _run("kinetics", ann, root, tmp_path / "out", **kw)
    assert summary.num_examples == 4 and len(summary.skipped) == 1
    builder = tfds.builder_from_directory(str(tmp_path / "out"))
    label = builder.info.features["label"]
    assert isinstance(label, tfds.features.ClassLabel) and label.names == ["abseiling", "air drumming"]
    split = builder.info.splits["train"]
    assert split.shard_lengths == [1, 1, 2]  # 5 items in 3 shards, the missing video skipped in shard 1
    ds = builder.as_data_source(split="train")
    assert [label.int2str(ds[i]["label"]) for i in range(4)] == ["abseiling", "air drumming", "abseiling",
                                                                 "air drumming"]
    assert [ds[i]["video"]["id"] for i in range(4)] == [b"c0/v0", b"c1/v1", b"c0/v2", b"c1/v3"]
    # Sub-splits work on our shard naming too.
    assert [ex["video"]["id"] for ex in builder.as_data_source(split="train[2:]")] == [b"c0/v2", b"c1/v3"]


def test_resumed_conversion_writes_the_same_tfds_metadata(tmp_path):
    ann, root, kw = _grounding(tmp_path)
    _run("grounding", ann, root, tmp_path / "clean", **kw)
    out = tmp_path / "resumed"
    _run("grounding", ann, root, out, **kw)
    # A crash after shard 0: later shards, their markers and the end-of-run metadata are not there yet.
    for p in list(out.iterdir()) + list((out / "_progress").iterdir()):
        if p.is_file() and "00000-of" not in p.name:
            p.unlink()
    again = _run("grounding", ann, root, out, **kw)
    assert again.resumed_shards == 1
    for name in ("dataset_info.json", "features.json", "metadata.json"):
        assert (out / name).read_bytes() == (tmp_path / "clean" / name).read_bytes()
    ds = tfds.builder_from_directory(str(out)).as_data_source(split="train")
    src = open_source(out)
    for i in range(len(src)):
        _assert_same(tfds_info.from_tfds(ds[i]), schema.decode_record(src[i]))


def test_tfrecord_output_has_tfds_metadata_and_parses(tmp_path):
    """TFRecord shards: tfds reads them only through TensorFlow (as_dataset), which is not installed here;
    check the metadata and that tfds' own NumPy parser, given our features, decodes every record."""
    ann, root, kw = _localization(tmp_path)
    _run("localization", ann, root, tmp_path / "out", fmt="tfrecord", **kw)
    builder = tfds.builder_from_directory(str(tmp_path / "out"))
    assert builder.info.file_format.file_suffix == "tfrecord"
    assert builder.info.splits["train"].num_examples == 2
    files = builder.info.splits["train"].filepaths
    assert [pathlib.Path(f).name for f in files] == ["localization.tfrecord-00000-of-00001"]
    src = open_source(tmp_path / "out")
    for i in range(len(src)):
        ex = builder.info.features.deserialize_example_np(src[i])
        _assert_raw_tfds_matches(ex, schema.decode_record(src[i]))


def test_from_tfds_restores_float_seconds_and_strings():
    ex = {"schema_version": 1, "task": b"grounding", "label": 3,
          "video": {"id": "v".encode(), "dataset": b"QVHighlights", "fps": np.float32(4.0), "height": 2},
          "frames": {"jpeg": np.array([b"a", b"b"], object), "timestamp_us": np.array([0, 1_250_001], np.int64)},
          "captions": [b"caf\xc3\xa9"], "windows": np.array([[1.5, 2.0]], np.float32), "unknown": 5}
    got = tfds_info.from_tfds(ex)
    assert got["frame_times"].dtype == np.float64 and got["frame_times"].tolist() == [0.0, 1.250001]
    assert got["captions"] == ["café"] and got["task"] == "grounding" and got["video_id"] == "v"
    assert got["frames"] == [b"a", b"b"] and got["fps"] == 4.0 and got["height"] == 2
    assert got["windows"].shape == (1, 2) and "unknown" not in got


def test_class_names_that_tfds_cannot_keep_fall_back_to_int64():
    assert "classLabel" in tfds_info.features_json("ssv2", ["a", "b"])["featuresDict"]["features"]["label"]
    for bad in (["a", "a"], ["a", " b"], ["a\nb"], []):
        leaf = tfds_info.features_json("kinetics", bad)["featuresDict"]["features"]["label"]
        assert leaf["tensor"]["dtype"] == "int64", bad
