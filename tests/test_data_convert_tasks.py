"""Converters for the other task formats: retrieval, grounding, localization, VIS (parse + read back)."""
import json
import pathlib

import numpy as np
import pytest

from data_helpers import frame_index_of, frame_pattern, make_test_video
from data_pipelines.records import frames as jpeg
from data_pipelines.records import schema
from data_pipelines.annotations import AnnotationError, coco_rle, load_class_names, parse_annotations
from data_pipelines.convert import Options, convert
from data_pipelines.records.sources import load_metadata, open_source


def _records(out):
    src = open_source(out)
    return [schema.decode_record(src[i]) for i in range(len(src))]


def _run(task, ann, root, out, **kw):
    return convert(task, str(ann), str(root), str(out), progress=False, **kw)


# ----------------------------------------------------------------------------------------------- retrieval
def test_retrieval_csv_groups_captions_per_video(tmp_path):
    root = tmp_path / "videos"
    make_test_video(root / "MSRVTT/video0.mp4", 8, (64, 48), 8)
    make_test_video(root / "MSVD/clipA.avi", 8, (64, 48), 8)
    make_test_video(root / "wv1.mp4", 8, (64, 48), 8)  # one-root layout works too
    ann = tmp_path / "train_retrieval.csv"
    ann.write_text('video_id,dataset,text\n'
                   'video0,MSRVTT,"[\'a cat\', \'a dog, running\']"\n'
                   'wv1,WebVid,"a plain caption, with a comma"\n'
                   'clipA,MSVD,"[\'someone cooks\']"\n'
                   'video0,MSRVTT,"[\'third caption\']"\n')
    summary = _run("retrieval", ann, root, tmp_path / "out")
    assert summary.num_examples == 3 and not summary.skipped
    recs = {r["video_id"]: r for r in _records(tmp_path / "out")}
    assert recs["video0"]["captions"] == ["a cat", "a dog, running", "third caption"]
    assert recs["video0"]["dataset"] == "MSRVTT"
    assert recs["wv1"]["captions"] == ["a plain caption, with a comma"]
    assert recs["clipA"]["captions"] == ["someone cooks"] and len(recs["clipA"]["frames"]) == 8
    assert load_metadata(tmp_path / "out")["counts"]["captions"] == 5


def test_retrieval_msrvtt_json(tmp_path):
    data = {"videos": [{"video_id": "video7"}, {"video_id": "video3"}],
            "sentences": [{"video_id": "video3", "caption": "b"}, {"video_id": "video7", "caption": "a"},
                          {"video_id": "video3", "caption": "c"}]}
    ann = tmp_path / "MSRVTT_data.json"
    ann.write_text(json.dumps(data))
    items = parse_annotations("retrieval", ann, tmp_path)
    assert [(i.video_id, i.fields["captions"]) for i in items] == [("video7", ["a"]), ("video3", ["b", "c"])]
    assert items[0].source.endswith("video7.mp4")


# ----------------------------------------------------------------------------------------------- grounding
def test_grounding_csv(tmp_path):
    root = tmp_path / "videos"
    make_test_video(root / "CharadesSTA/AB12.mp4", 16, (64, 48), 8)
    make_test_video(root / "TaCoS/s13-d21-cam-002.avi", 8, (64, 48), 8)
    ann = tmp_path / "g.csv"
    ann.write_text("video_id,start_second,end_second,text,relevant_windows,dataset\n"
                   'AB12,0.5,1.0,person opens door,"[[0.5, 1.0]]",CharadesSTA\n'
                   's13-d21,0.2,0.6,cuts a carrot,"[[0.2, 0.4], [0.5, 0.6]]",TaCoS\n'
                   'AB12,1.2,1.9,person sits,"[[1.2, 1.9]]",CharadesSTA\n')
    summary = _run("grounding", ann, root, tmp_path / "out", opts=Options(fps=4))
    assert summary.num_examples == 2
    recs = {r["video_id"]: r for r in _records(tmp_path / "out")}
    ab = recs["AB12"]
    assert ab["captions"] == ["person opens door", "person sits"]
    np.testing.assert_allclose(ab["windows"], [[0.5, 1.0], [1.2, 1.9]])
    np.testing.assert_array_equal(ab["relevant_window_caption"], [0, 1])
    assert ab["duration"] == pytest.approx(2.0) and len(ab["frames"]) == 8  # from the container
    tacos = recs["s13-d21"]
    np.testing.assert_allclose(tacos["relevant_windows"], [[0.2, 0.4], [0.5, 0.6]])
    np.testing.assert_array_equal(tacos["relevant_window_caption"], [0, 0])


def test_grounding_charades_txt_and_qvh_jsonl(tmp_path):
    txt = tmp_path / "charades_sta_train.txt"
    txt.write_text("AB12 0.5 1.0##person opens door.\nAB12 1.2 1.9##person sits.\n")
    items = parse_annotations("grounding", txt, tmp_path)
    assert len(items) == 1 and items[0].fields["captions"] == ["person opens door.", "person sits."]
    jsonl = tmp_path / "highlight_train.jsonl"
    jsonl.write_text(json.dumps({"qid": 1, "query": "q", "vid": "abc_60.0_210.0", "duration": 150,
                                 "relevant_windows": [[2, 6], [10, 20]]}) + "\n")
    (item,) = parse_annotations("grounding", jsonl, tmp_path)
    assert item.duration == 150 and item.fields["windows"] == [(2.0, 20.0)]
    assert item.fields["relevant_windows"] == [(2.0, 6.0), (10.0, 20.0)]
    bad = tmp_path / "bad.txt"
    bad.write_text("AB12 0.5 1.0##ok\nAB12 0.5 person sits\n")
    with pytest.raises(AnnotationError, match=r"bad\.txt:2:"):
        parse_annotations("grounding", bad, tmp_path)


# ----------------------------------------------------------------------------------------------- localization
def test_localization_csv_with_nested_label2id(tmp_path):
    root = tmp_path / "videos"
    make_test_video(root / "HACS/v_abc.mp4", 16, (64, 48), 8)
    labels = tmp_path / "label2id.json"
    labels.write_text(json.dumps({"HACS": {"Archery": 0, "Ballet": 1}, "FineAction": {"jump": 0}}))
    ann = tmp_path / "loc.csv"
    ann.write_text("video_id,start_second,end_second,text,relevant_windows,dataset,duration\n"
                   'abc,0.0,0.5,Ballet,"[[0.0, 0.5], [1.0, 1.5]]",HACS,2.0\n'
                   'abc,0.6,0.9,Archery,"[[0.6, 0.9]]",HACS,2.0\n'
                   'gone,0.0,1.0,jump,"[[0.0, 1.0]]",FineAction,\n')
    summary = _run("localization", ann, root, tmp_path / "out", class_names=str(labels), opts=Options(fps=2))
    assert summary.num_examples == 1 and [s["path"] for s in summary.skipped] == ["gone.mp4"]
    (rec,) = _records(tmp_path / "out")
    # One entry per annotation row: its window, its class id in its dataset's table, its relevant windows.
    np.testing.assert_allclose(rec["segments"], [[0.0, 0.5], [0.6, 0.9]])
    np.testing.assert_array_equal(rec["segment_labels"], [1, 0])
    np.testing.assert_allclose(rec["relevant_windows"], [[0.0, 0.5], [1.0, 1.5], [0.6, 0.9]])
    np.testing.assert_array_equal(rec["relevant_window_caption"], [0, 0, 1])
    assert rec["dataset"] == "HACS" and rec["duration"] == 2.0
    np.testing.assert_allclose(rec["frame_times"], [0.0, 0.5, 1.0, 1.5])
    meta = load_metadata(tmp_path / "out")
    assert meta["class_names"] == [] and meta["label_tables"] == {"HACS": ["Archery", "Ballet"],
                                                                  "FineAction": ["jump"]}
    assert meta["num_samples"] == 2 and meta["record_samples"] == [2]
    assert meta["datasets"]["HACS"] == {"videos": 1, "samples": 2, "skipped": 0, "skipped_samples": 0}
    assert meta["datasets"]["FineAction"] == {"videos": 0, "samples": 0, "skipped": 1, "skipped_samples": 1}


def test_localization_activitynet_json(tmp_path):
    ann = tmp_path / "hacs.json"
    ann.write_text(json.dumps({"database": {
        "abc": {"subset": "training", "duration": 12.5,
                "annotations": [{"segment": [1, 2], "label": "Zumba"}, {"segment": [3, 5], "label": "Archery"}]},
        "val1": {"subset": "validation", "duration": 3, "annotations": [{"segment": [0, 1], "label": "Yoga"}]},
    }}))
    items = parse_annotations("localization", ann, tmp_path, subset="training", dataset="HACS")
    assert len(items) == 1 and items[0].source.endswith("v_abc.mp4") and items[0].duration == 12.5
    assert items[0].fields["segment_labels"] == [1, 0]  # sorted names of the subset: Archery=0, Zumba=1


@pytest.mark.parametrize("task, text, match", [
    ("retrieval", "video_id,dataset,text\nv,MSRVTT,\"['ok']\"\nw,MSRVTT,\"['unclosed\"\n",
     r"ann\.csv:3: text is not a Python literal"),
    ("grounding", "video_id,start_second,end_second,text,relevant_windows,dataset\n"
                  'A,0.5,1.0,x,"[[0.5, 1.0]]",CharadesSTA\nA,2.0,1.0,y,"[[2.0, 1.0]]",CharadesSTA\n',
     r"ann\.csv:3: bad window"),
    ("localization", 'video_id,start_second,end_second,text,relevant_windows,dataset\n'
                     'a,0,1,Archery,"[[0, 1]]",HACS\na,0,1,Bowling,"[[0, 1]]",HACS\n',
     r"ann\.csv:3: class 'Bowling' not in the HACS class table"),
])
def test_malformed_annotations_name_file_and_line(tmp_path, task, text, match):
    labels = tmp_path / "label2id.json"
    labels.write_text(json.dumps({"HACS": {"Archery": 0}}))
    ann = tmp_path / "ann.csv"
    ann.write_text(text)
    classes = load_class_names(labels) if task == "localization" else None
    with pytest.raises(AnnotationError, match=match):
        parse_annotations(task, ann, tmp_path, classes)


# ----------------------------------------------------------------------------------------------- VIS
def _vis_dataset(tmp_path, compressed: bool):
    """Two videos of JPEG frames with rectangle masks; video 'v2' lacks one frame file."""
    h, w = 48, 64
    root = tmp_path / "JPEGImages"
    videos, anns, truth = [], [], {}
    for vid, name, n in ((1, "v1", 4), (2, "v2", 3)):
        files = [f"{name}/{i:05d}.jpg" for i in range(n)]
        for i, f in enumerate(files):
            if not (name == "v2" and i == 1):
                (root / f).parent.mkdir(parents=True, exist_ok=True)
                (root / f).write_bytes(jpeg.encode_jpeg(frame_pattern(i, (w, h))))
        videos.append({"id": vid, "file_names": files, "length": n, "height": h, "width": w})
        masks = np.zeros((2, n, h, w), np.uint8)
        for inst, cat in enumerate((7, 3)):
            segs = []
            for i in range(n):
                if inst == 1 and i == 0:
                    segs.append(None)  # the second instance appears in frame 1
                    continue
                masks[inst, i, 4 + 2 * i:20 + 2 * i, 8 * inst + i:30 + 8 * inst] = 1
                counts = schema.rle_encode(masks[inst, i]).tolist()
                segs.append({"size": [h, w], "counts": coco_rle.counts_to_string(counts) if compressed else counts})
            anns.append({"id": len(anns) + 1, "video_id": vid, "category_id": cat, "segmentations": segs,
                         "height": h, "width": w, "iscrowd": 0})
        truth[name] = masks
    cats = [{"id": 3, "name": "cat"}, {"id": 7, "name": "person"}, {"id": 9, "name": "zebra"}]
    ann = tmp_path / ("train_LVVIS.json" if compressed else "train_YoutubeVIS.json")
    ann.write_text(json.dumps({"videos": videos, "annotations": anns, "categories": cats}))
    return ann, root, truth


@pytest.mark.parametrize("compressed", [False, True])
def test_vis_masks_and_frames_read_back(tmp_path, compressed):
    ann, root, truth = _vis_dataset(tmp_path, compressed)
    summary = _run("vis", ann, root, tmp_path / "out", opts=Options(vis_fps=6))
    assert summary.num_examples == 1
    assert summary.skipped[0]["path"] == "v2/00000.jpg" and "00001.jpg: missing file" in summary.skipped[0]["reason"]
    (rec,) = _records(tmp_path / "out")
    assert rec["video_id"] == "v1" and rec["dataset"] == ("LVVIS" if compressed else "YoutubeVIS")
    np.testing.assert_array_equal(rec["categories"], [7, 3])  # the raw category ids, as the original
    np.testing.assert_allclose(rec["frame_times"], np.arange(4) / 6, atol=1e-6)  # stored in microseconds
    np.testing.assert_array_equal(schema.decode_masks(rec), truth["v1"])
    assert [frame_index_of(f) for f in jpeg.decode_frames(rec["frames"])] == [0, 1, 2, 3]
    meta = load_metadata(tmp_path / "out")
    # The label table lists the names by category value (ids without a category are empty rows).
    ds = "LVVIS" if compressed else "YoutubeVIS"
    assert meta["label_tables"] == {ds: ["", "", "", "cat", "", "", "", "person", "", "zebra"]}
    assert meta["counts"]["instances"] == 2


def test_vis_resize_and_max_frames(tmp_path):
    ann, root, truth = _vis_dataset(tmp_path, False)
    _run("vis", ann, root, tmp_path / "out", opts=Options(short_side=24, max_frames=2))
    recs = _records(tmp_path / "out")
    assert [r["video_id"] for r in recs] == ["v1", "v2"]  # v2's missing frame 1 is not among those kept
    rec = recs[0]
    assert (rec["height"], rec["width"]) == (24, 32) and len(rec["frames"]) == 2
    np.testing.assert_allclose(rec["frame_times"], [0, 3 / 6], atol=1e-6)  # frames 0 and 3: the whole sequence
    masks = schema.decode_masks(rec)
    assert masks.shape == (2, 2, 24, 32)
    np.testing.assert_array_equal(masks[:, 1], truth["v1"][:, 3, 1::2, 1::2])  # nearest = every other pixel


def test_vis_unknown_category_is_an_annotation_error(tmp_path):
    ann, root, _ = _vis_dataset(tmp_path, False)
    data = json.loads(ann.read_text())
    data["annotations"][0]["category_id"] = 42
    ann.write_text(json.dumps(data))
    with pytest.raises(AnnotationError, match="unknown category_id 42"):
        parse_annotations("vis", ann, root)


# ----------------------------------------------------------------------------------------------- class names
def test_class_name_files(tmp_path):
    txt = tmp_path / "c.txt"
    txt.write_text("a\nb\n\nc\n")
    with pytest.raises(AnnotationError, match=r"c\.txt:3: empty class name"):
        load_class_names(txt)
    ssv2 = tmp_path / "labels.json"
    ssv2.write_text(json.dumps({"Pushing something": "1", "Approaching something": "0"}))
    assert load_class_names(ssv2).names == ("Approaching something", "Pushing something")


def test_ssv2_formats(tmp_path):
    classes = tmp_path / "labels.json"
    classes.write_text(json.dumps({"Approaching something with your camera": "0", "Pushing something": "1"}))
    lst = tmp_path / "train.txt"
    lst.write_text("78687.webm 1\n42.webm 0\n")
    items = parse_annotations("ssv2", lst, tmp_path, load_class_names(classes))
    assert [(i.video_id, i.fields["label"]) for i in items] == [("78687", 1), ("42", 0)]
    csv = tmp_path / "train.csv"
    csv.write_text('78687.webm,"Pushing something"\n')
    assert parse_annotations("ssv2", csv, tmp_path, load_class_names(classes))[0].fields["label"] == 1
    js = tmp_path / "something-something-v2-train.json"
    js.write_text(json.dumps([{"id": "5", "template": "Approaching [something] with your camera"}]))
    (item,) = parse_annotations("ssv2", js, tmp_path, load_class_names(classes))
    assert item.fields["label"] == 0 and pathlib.Path(item.source).name == "5.webm"


def test_coco_images_as_single_frame_items(tmp_path):
    h, w = 48, 64
    root = tmp_path / "train2017"
    root.mkdir()
    (root / "000001.jpg").write_bytes(jpeg.encode_jpeg(frame_pattern(9, (w, h))))
    crowd = np.zeros((h, w), np.uint8)
    crowd[30:40, 5:15] = 1
    data = {"images": [{"id": 1, "file_name": "000001.jpg", "height": h, "width": w},
                       {"id": 2, "file_name": "000002.jpg", "height": h, "width": w}],  # no annotation: dropped
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 18, "iscrowd": 0,
                 "segmentation": [[10, 4, 20, 4, 20, 12, 10, 12]]},
                {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 1,
                 "segmentation": {"size": [h, w], "counts": schema.rle_encode(crowd).tolist()}}],
            "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}]}
    ann = tmp_path / "train_COCOPseudoVIS.json"
    ann.write_text(json.dumps(data))
    summary = _run("vis", ann, root, tmp_path / "out", opts=Options(short_side=24))
    # The image without annotations is listed as skipped (the original drops it silently).
    assert summary.num_examples == 1 and summary.num_annotations == 2
    assert [(s["path"], s["reason"]) for s in summary.skipped] == [("000002.jpg", "image has no annotations")]
    (rec,) = _records(tmp_path / "out")
    assert rec["video_id"] == "000001" and rec["dataset"] == "COCOPseudoVIS" and len(rec["frames"]) == 1
    np.testing.assert_array_equal(rec["categories"], [1, 0])  # dog (id 18) -> 1, person (id 1) -> 0
    masks = schema.decode_masks(rec)
    poly = np.zeros((h, w), np.uint8)
    poly[4:13, 10:21] = 1  # Pillow fills the polygon including its boundary
    np.testing.assert_array_equal(masks[0, 0], poly[1::2, 1::2])
    np.testing.assert_array_equal(masks[1, 0], crowd[1::2, 1::2])
    assert frame_index_of(jpeg.decode_frames(rec["frames"])[0]) == 9


def test_kinetics_class_name_labels_and_header_rules(tmp_path):
    label2id = tmp_path / "label2id.json"
    label2id.write_text(json.dumps({"abseiling": 0, "air drumming": 1}))
    classes = load_class_names(label2id)
    csv = tmp_path / "train.csv"
    csv.write_text("video,label\nx/a.mp4,air drumming\nx/b.mp4,abseiling\n")
    items = parse_annotations("kinetics", csv, tmp_path, classes)
    assert [(i.video_id, i.fields["label"]) for i in items] == [("x/a", 1), ("x/b", 0)]
    typo = tmp_path / "typo.csv"
    typo.write_text("x/a.mp4,air drums\nx/b.mp4,abseiling\n")  # a bad first row is not taken for a header
    with pytest.raises(AnnotationError, match=r"typo\.csv:1: unknown class 'air drums'"):
        parse_annotations("kinetics", typo, tmp_path, classes)
