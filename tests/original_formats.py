"""Writes a small copy of the ORIGINAL pretraining data layout: `all.yaml` in the original metadata format and, for
every dataset it names, annotation files in the original formats with ids of each dataset's real shape, plus tiny
real videos and images at the paths the original loaders open.

Datasets (all.yaml): Kinetics-400, SSv2, MSRVTT, MSVD, ActivityNet, DiDeMo, LSMDC, VATEX (retrieval);
CharadesSTA, QVHighlights, TaCoS, ActivityNetCaptions, DiDeMo, QuerYD (grounding); HACS, FineAction, ActivityNet
(localization); YoutubeVIS, LVVIS, COCOPseudoVIS (VIS).

Deliberate bad inputs (each must be skipped and listed, the rest converted): a Kinetics row whose video is missing,
a YouTube-VIS video without annotations, a YouTube-VIS video with a malformed segmentation, a COCO image without
annotations.
"""
from __future__ import annotations

import csv
import json
import pathlib

import numpy as np
from PIL import Image

from data_helpers import make_test_video

KINETICS = [  # (relative path in train.csv, class name, frames)
    ("abseiling/-3B32lodo2M_000059_000069.mp4", "abseiling", 40),
    ("air drumming/--nQbRBEz2s_000104_000114.mp4", "air drumming", 33),
    ("answering questions/-0G1n4oUTrg_000006_000016.mp4", "answering questions", 20),
    ("abseiling/0wR5jVB-WPk_000417_000427.mp4", "abseiling", 12),
]
KINETICS_MISSING = "air drumming/zz-missing_000000_000010.mp4"
KINETICS_LABELS = {"abseiling": 0, "air drumming": 1, "answering questions": 2}

SSV2 = [("12345.webm", "Putting something, something and something on the table", 24),
        ("220847.webm", "Pushing something from left to right", 48),
        ("98123.webm", "Pushing something from left to right", 10)]
SSV2_LABELS = {"Pushing something from left to right": 0,
               "Putting something, something and something on the table": 1,
               "Moving something up": 2}

# (video_id, dataset, captions or plain WebVid text, frames, fps)
RETRIEVAL = [
    ("video7020", "MSRVTT", ["a man is singing on stage", "a person sings"], 30, 10),
    ("video7020", "MSRVTT", ["someone performs a song"], 30, 10),  # a second row for the same video
    ("video118", "MSRVTT", ["a cartoon dog runs"], 24, 8),
    ("-4wsuPCjDBc_5_15", "MSVD", ["a cat plays with a toy", "a kitten is playing"], 20, 8),
    ("v_QOlSCBRmfWY", "ActivityNet", ["A woman stands in a kitchen. She puts sunscreen on her arms."], 36, 2),
    ("10015567@N08_3655084291_d8b58466fa.mp4", "DiDeMo", ["the dog jumps into the pool. it swims back."], 40, 1),
    ("1004_Juno_00.00.32.176-00.00.36.963", "LSMDC", ["SOMEONE looks up at the sky."], 20, 8),
    ("--07WQ2iBlw_000001_000011", "VATEX", ["a boy shows how to tie a knot"], 20, 8),
]

# (video_id, start, end, text, relevant_windows, dataset, frames, fps)
GROUNDING = [
    ("3MSZA", 1.1, 4.0, "person opens the door", [[1.1, 4.0]], "CharadesSTA", 24, 4),
    ("3MSZA", 4.2, 5.5, "person sits down", [[4.2, 5.5]], "CharadesSTA", 24, 4),
    ("NUCsGAEVnKw_360.0_510.0", 2.0, 30.0, "a man talks about a car",
     [[2.0, 8.0], [16.0, 30.0]], "QVHighlights", 40, 1),
    ("s13-d21", 3.0, 7.0, "the person takes out a cutting board", [[3.0, 7.0]], "TaCoS", 60, 1),
    ("s13-d21", 8.0, 14.0, "the person washes the carrot", [[8.0, 14.0]], "TaCoS", 60, 1),
    ("s13-d21", 15.0, 35.0, "the person cuts the carrot", [[15.0, 35.0]], "TaCoS", 60, 1),
    ("s13-d21", 36.0, 40.0, "the person puts the carrot on a plate", [[36.0, 40.0]], "TaCoS", 60, 1),
    ("s13-d21", 41.0, 59.0, "the person cleans up", [[41.0, 59.0]], "TaCoS", 60, 1),
    ("v_QOlSCBRmfWY", 2.0, 9.0, "A woman stands in a kitchen.", [[2.0, 9.0]], "ActivityNetCaptions", 36, 2),
    ("10015567@N08_3655084291_d8b58466fa.mp4", 5.0, 10.0, "the dog jumps in", [[5.0, 10.0]], "DiDeMo", 40, 1),
    ("video-0OZ5uqhjHkE", 0.5, 3.5, "a lighthouse on a cliff", [[0.5, 3.5]], "QuerYD", 20, 4),
]

LOCALIZATION = [  # one row per (video, class)
    ("--0edUL8zmA", 1.0, 6.0, "archery", [[1.0, 6.0]], "HACS", 40, 4),
    ("--0edUL8zmA", 7.0, 9.0, "bowling", [[7.0, 9.0]], "HACS", 40, 4),
    ("v_00000082.mp4", 2.0, 12.0, "surfing", [[2.0, 5.0], [8.0, 12.0]], "FineAction", 32, 2),
    ("v_00000082.mp4", 5.5, 7.5, "diving", [[5.5, 7.5]], "FineAction", 32, 2),
    ("v_QOlSCBRmfWY", 3.0, 12.0, "Applying sunscreen", [[3.0, 12.0]], "ActivityNet", 36, 2),
]
LOCALIZATION_LABELS = {"HACS": {"archery": 0, "bowling": 1},
                       "FineAction": {"diving": 0, "surfing": 1},
                       "ActivityNet": {"Applying sunscreen": 0, "Archery": 1, "Ballet": 2}}

VIS_SIZE = (48, 64)  # (H, W) of every VIS frame
YTVIS_CATEGORIES = [{"id": 1, "name": "person"}, {"id": 2, "name": "giant_panda"}, {"id": 3, "name": "lizard"}]
COCO_CATEGORIES = [{"id": 1, "name": "person"}, {"id": 2, "name": "bicycle"}, {"id": 3, "name": "car"},
                   {"id": 18, "name": "dog"}]
LVVIS_NUM_CLASSES = 120  # more than the original's 100-class threshold: class subsampling applies


def _write_csv(path: pathlib.Path, rows, header=None, delimiter=","):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        if header:
            w.writerow(header)
        w.writerows(rows)


def _write_json(path: pathlib.Path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1), encoding="utf-8")


def _rle_counts(mask: np.ndarray) -> list[int]:
    flat = np.asarray(mask, np.uint8).ravel(order="F")
    counts, value, run = [], 0, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return counts


def _rle_string(counts: list[int]) -> str:
    """pycocotools' compressed RLE string (LEB128-like, delta from counts[i-2] for i > 2)."""
    out = []
    for i, c in enumerate(counts):
        x = c - counts[i - 2] if i > 2 else c
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5
            more = not ((x == 0 and not ch & 0x10) or (x == -1 and ch & 0x10))
            if more:
                ch |= 0x20
            out.append(chr(ch + 48))
    return "".join(out)


def _box(h, w, y0, y1, x0, x1) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _frames(folder: pathlib.Path, names, seed: int):
    rng = np.random.default_rng(seed)
    for name in names:
        img = rng.integers(0, 255, (*VIS_SIZE, 3), dtype=np.uint8)
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / name, quality=90)


def write_original_datasets(root) -> pathlib.Path:
    """Write the tree under `root`; returns the path of its all.yaml."""
    root = pathlib.Path(root)
    seed = iter(range(1000))

    # ---- Kinetics-400
    k400 = root / "kinetics400"
    _write_csv(k400 / "train.csv", [(p, c) for p, c, _ in KINETICS] + [(KINETICS_MISSING, "air drumming")])
    _write_json(k400 / "label2id.json", KINETICS_LABELS)
    for p, _, n in KINETICS:
        make_test_video(k400 / "videos_train" / p, n, (64, 48), 8, seed=next(seed))

    # ---- SSv2 (quoted labels with commas)
    ssv2_meta = root / "metadata" / "ssv2"
    _write_csv(ssv2_meta / "train.csv", [(p, c) for p, c, _ in SSV2])
    _write_json(ssv2_meta / "label2id.json", SSV2_LABELS)
    for p, _, n in SSV2:
        make_test_video(root / "ssv2" / "videos" / p, n, (64, 48), 12, seed=next(seed), codec="libvpx")

    # ---- retrieval
    ret_roots = {"MSRVTT": root / "MSRVTT", "MSVD": root / "MSVD" / "MSVD_Videos",
                 "ActivityNet": root / "ActivityNet" / "train", "DiDeMo": root / "DiDeMo",
                 "LSMDC": root / "LSMDC", "VATEX": root / "VATEX"}
    _write_csv(root / "metadata" / "task_retrieval" / "train.csv",
               [(v, ds, repr(c)) for v, ds, c, _, _ in RETRIEVAL], header=("video_id", "dataset", "text"))
    written = set()
    for v, ds, _, n, fps in RETRIEVAL:
        name = v + ".avi" if ds in ("LSMDC", "MSVD") else (v if v.endswith(".mp4") else v + ".mp4")
        if (ds, name) not in written:
            make_test_video(ret_roots[ds] / name, n, (64, 48), fps, seed=next(seed))
            written.add((ds, name))

    # ---- grounding
    g_roots = {"CharadesSTA": root / "Charades_v1_480", "QVHighlights": root / "QVHighlights" / "videos",
               "TaCoS": root / "TACoS", "ActivityNetCaptions": root / "ActivityNet" / "train",
               "DiDeMo": root / "DiDeMo", "QuerYD": root / "QuerYD"}
    header = ("video_id", "start_second", "end_second", "text", "relevant_windows", "dataset")
    _write_csv(root / "metadata" / "task_grounding" / "train.csv",
               [(v, s, e, t, repr(w), ds) for v, s, e, t, w, ds, _, _ in GROUNDING], header=header)
    written = set()
    for v, _, _, _, _, ds, n, fps in GROUNDING:
        name = v + "-cam-002.avi" if ds == "TaCoS" else (v if v.endswith(".mp4") else v + ".mp4")
        path = g_roots[ds] / name
        if path not in written and not path.exists():
            make_test_video(path, n, (64, 48), fps, seed=next(seed))
        written.add(path)

    # ---- localization (nested label2id)
    l_roots = {"HACS": root / "hacs" / "training", "FineAction": root / "fineaction",
               "ActivityNet": root / "ActivityNet" / "train"}
    _write_csv(root / "metadata" / "task_localization" / "train.csv",
               [(v, s, e, t, repr(w), ds) for v, s, e, t, w, ds, _, _ in LOCALIZATION], header=header)
    _write_json(root / "metadata" / "task_localization" / "label2id.json", LOCALIZATION_LABELS)
    for v, _, _, _, _, ds, n, fps in LOCALIZATION:
        name = ("v_" + v if ds == "HACS" else v)
        name = name if name.endswith(".mp4") else name + ".mp4"
        if not (l_roots[ds] / name).exists():
            make_test_video(l_roots[ds] / name, n, (64, 48), fps, seed=next(seed))

    # ---- VIS
    vis_meta = root / "metadata" / "task_vis"
    h, w = VIS_SIZE
    yt_root, lv_root, coco_root = (root / "ytvis19" / "train" / "JPEGImages", root / "lvvis" / "train" / "JPEGImages",
                                   root / "COCO2017" / "images" / "train2017")
    # YouTube-VIS: uncompressed RLE per frame (null where absent). Video 2 has no annotation; video 4 has a
    # malformed segmentation (its counts do not cover the frame).
    yt_videos, yt_anns = [], []
    for vid, folder, n in ((1, "003234408d", 20), (2, "0043f083b5", 6), (3, "0044fa5fba", 10), (4, "005a527edd", 8)):
        names = [f"{folder}/{i * 5:05d}.jpg" for i in range(n)]
        _frames(yt_root, names, next(seed))
        yt_videos.append({"id": vid, "file_names": names, "length": n, "height": h, "width": w})
    person = [{"counts": _rle_counts(_box(h, w, 4 + i % 6, 30, 5, 25)), "size": [h, w]} for i in range(20)]
    person[3] = None
    panda = [{"counts": _rle_counts(_box(h, w, 20, 44, 20 + i, 50 + i)), "size": [h, w]} for i in range(20)]
    yt_anns += [{"id": 1, "video_id": 1, "category_id": 1, "segmentations": person, "height": h, "width": w,
                 "iscrowd": 0},
                {"id": 2, "video_id": 1, "category_id": 2, "segmentations": panda, "height": h, "width": w,
                 "iscrowd": 0},
                {"id": 3, "video_id": 3, "category_id": 3, "height": h, "width": w, "iscrowd": 0,
                 "segmentations": [{"counts": _rle_counts(_box(h, w, 10, 20, 10, 30)), "size": [h, w]}] * 10},
                {"id": 4, "video_id": 1, "category_id": 1, "height": h, "width": w, "iscrowd": 0,  # 2nd person
                 "segmentations": [{"counts": _rle_counts(_box(h, w, 36, 46, 40, 60)), "size": [h, w]}] * 20},
                {"id": 5, "video_id": 4, "category_id": 2, "height": h, "width": w, "iscrowd": 0,
                 "segmentations": [{"counts": [5, 7, 9], "size": [h, w]}] * 8}]
    _write_json(vis_meta / "train_YoutubeVIS.json", {"videos": yt_videos, "annotations": yt_anns,
                                                    "categories": YTVIS_CATEGORIES})
    # LV-VIS: compressed RLE strings, many classes.
    lv_cats = [{"id": i + 1, "name": f"lvvis_class_{i + 1:04d}"} for i in range(LVVIS_NUM_CLASSES)]
    lv_videos = []
    for vid, folder, n in ((1, "00000", 18), (2, "00007", 16)):
        names = [f"{folder}/{i:05d}.jpg" for i in range(n)]
        _frames(lv_root, names, next(seed))
        lv_videos.append({"id": vid, "file_names": names, "length": n, "height": h, "width": w})
    lv_anns = [{"id": 1, "video_id": 1, "category_id": 57, "height": h, "width": w, "iscrowd": 0,
                "segmentations": [{"counts": _rle_string(_rle_counts(_box(h, w, 5, 25, 3 + i, 30 + i))),
                                   "size": [h, w]} for i in range(18)]},
               {"id": 2, "video_id": 2, "category_id": 101, "height": h, "width": w, "iscrowd": 0,
                "segmentations": [{"counts": _rle_string(_rle_counts(_box(h, w, 30, 47, 10, 50))),
                                   "size": [h, w]}] * 16}]
    _write_json(vis_meta / "train_LVVIS.json", {"videos": lv_videos, "annotations": lv_anns,
                                               "categories": lv_cats})
    # COCO pseudo-videos: polygons (axis-aligned rectangles) and one crowd RLE; image 30 has no annotation.
    images = [{"id": 9, "file_name": "000000000009.jpg", "height": h, "width": w},
              {"id": 25, "file_name": "000000000025.jpg", "height": h, "width": w},
              {"id": 30, "file_name": "000000000030.jpg", "height": h, "width": w}]
    _frames(coco_root, [i["file_name"] for i in images], next(seed))
    coco_anns = [{"id": 1, "image_id": 9, "category_id": 1, "iscrowd": 0,  # person: sequential id 0
                  "segmentation": [[4, 6, 20, 6, 20, 40, 4, 40]]},
                 {"id": 2, "image_id": 9, "category_id": 18, "iscrowd": 0,
                  "segmentation": [[30, 10, 60, 10, 60, 30, 30, 30]]},
                 {"id": 3, "image_id": 25, "category_id": 3, "iscrowd": 1,
                  "segmentation": {"counts": _rle_counts(_box(h, w, 12, 40, 8, 56)), "size": [h, w]}},
                 {"id": 4, "image_id": 25, "category_id": 1, "iscrowd": 0,
                  "segmentation": [[2, 2, 10, 2, 10, 10, 2, 10]]}]
    _write_json(vis_meta / "train_COCOPseudoVIS.json", {"images": images, "annotations": coco_anns,
                                                       "categories": COCO_CATEGORIES})
    _write_json(vis_meta / "label2id.json", vis_label2id())

    yaml_text = ALL_YAML.format(root=root.as_posix())
    (root / "all.yaml").write_text(yaml_text, encoding="utf-8")
    return root / "all.yaml"


def vis_label2id() -> dict:
    """VIS label tables: ids are the category values the original writes into its masks (raw category_id for
    YouTube-VIS / LV-VIS, `id2sequential_id` for COCO), so row k of a table is the class of mask value k."""
    return {"YoutubeVIS": {c["name"]: c["id"] for c in YTVIS_CATEGORIES},
            "LVVIS": {f"lvvis_class_{i + 1:04d}": i + 1 for i in range(LVVIS_NUM_CLASSES)},
            "COCOPseudoVIS": {c["name"]: i for i, c in enumerate(COCO_CATEGORIES)}}


ALL_YAML = """\
# the original metadata format (scripts/dataset_metadata/all.yaml), pointed at a generated tree
datasets:
  Kinetics:
    train:
      mode: "train"
      data_path: "{root}/kinetics400"
      prefix: "{root}/kinetics400/videos_train"
      label2id_path: "{root}/kinetics400/label2id.json"
      split: ","
      num_frames: 16
      num_segments: 4
      num_crops: 3
      input_size: 224
      short_side_size: 224
  SSV2:
    train:
      mode: "train"
      data_path: "{root}/metadata/ssv2"
      prefix: "{root}/ssv2/videos"
      label2id_path: "{root}/metadata/ssv2/label2id.json"
      split: ","
      num_frames: 16
      num_segments: 4
      num_crops: 3
      input_size: 224
      short_side_size: 224
  TaskRetrieval:
    train:
      mode: "train"
      data_path: "{root}/metadata/task_retrieval/"
      prefix: ""
      num_frames: 16
      input_size: 224
      short_side_size: 224
      data_dict:
        root_dir:
          MSRVTT: {root}/MSRVTT
          MSVD: {root}/MSVD/MSVD_Videos
          ActivityNet: {root}/ActivityNet/train
          DiDeMo: {root}/DiDeMo
          LSMDC: {root}/LSMDC
          VATEX: {root}/VATEX
        trimmed30s:
          MSRVTT: False
          MSVD: False
          ActivityNet: False
          DiDeMo: True
          LSMDC: False
          VATEX: False
          WebVid: False
        is_paragraph_retrieval:
          MSRVTT: False
          MSVD: False
          ActivityNet: True
          DiDeMo: True
          LSMDC: False
          VATEX: False
          WebVid: False
  TaskGrounding:
    train:
      mode: "train"
      data_path: "{root}/metadata/task_grounding/"
      prefix: ""
      num_frames: 16
      input_size: 224
      short_side_size: 224
      test_num_segment: 1
      test_num_crop: 1
      sample_type: 'fixfps'
      data_dict:
        root_dir:
          CharadesSTA: {root}/Charades_v1_480
          QVHighlights: {root}/QVHighlights/videos
          TaCoS: {root}/TACoS
          ActivityNetCaptions: {root}/ActivityNet/train
          DiDeMo: {root}/DiDeMo
          QuerYD: {root}/QuerYD
  TaskLocalization:
    train:
      mode: "train"
      data_path: "{root}/metadata/task_localization"
      prefix: ""
      label2id_path: "{root}/metadata/task_localization/label2id.json"
      num_frames: 16
      input_size: 224
      short_side_size: 224
      test_num_segment: 4
      test_num_crop: 3
      window_size: 384
      extract_feature: False
      method: 'resize'
      sample_type: 'uniform'
      data_dict:
        root_dir:
          HACS: {root}/hacs/training
          FineAction: {root}/fineaction
          ActivityNet: {root}/ActivityNet/train
  TaskVIS:
    train:
      mode: "train"
      data_path: "{root}/metadata/task_vis/"
      prefix: ""
      label2id_path: "{root}/metadata/task_vis/label2id.json"
      split: ","
      num_frames: 16
      num_crops: 3
      input_size: 224
      short_side_size: 224
      data_dict:
        root_dir:
          COCOPseudoVIS: {root}/COCO2017/images/train2017
          YoutubeVIS: {root}/ytvis19/train/JPEGImages
          LVVIS: {root}/lvvis/train/JPEGImages
"""
