"""Independent reference of the ORIGINAL pretraining data semantics (a test oracle; nothing here imports the
package under test).

Written from the original loaders of Go2Heart/StreamFormer (`datasets/kinetics_sparse.py`, `ssv2.py`,
`task_retrieval.py`, `task_grounding.py`, `task_localization.py`, `task_vis.py`, `multi_task.py`, `build.py` and
the `DistributedBatchTaskBalancedSampler`) and spec §5.4 / §6, reading the original metadata file
(`scripts/dataset_metadata/all.yaml`) and annotation files as they are. It reproduces, per task:

* the dataset length (one sample per annotation row; per annotated video/image for VIS),
* the path the original opens for each sample,
* the label id (and the label table of each dataset),
* the frame-index ranges its samplers draw from, and the targets for given frame indices,
* the balanced mixture (`balance_sample_num`) and the sampler's per-epoch task order.

Where the original has a bug that the project fixes on purpose, the fixed behaviour is given and the original's is
named in a comment (VIS: videos without annotations are skipped instead of `videos.pop(video_id)` popping by
position; COCO's first category keeps its class instead of colliding with background 0).
"""
from __future__ import annotations

import ast
import csv
import dataclasses
import json
import os
from typing import Any, Sequence

import numpy as np
import yaml

# yaml task key -> the project's task name; the concatenation order of all.yaml.
TASK_NAMES = {"Kinetics": "kinetics", "SSV2": "ssv2", "TaskRetrieval": "retrieval", "TaskGrounding": "grounding",
              "TaskLocalization": "localization", "TaskVIS": "vis"}
ACTION_PREFIX_DATASETS = ("FineAction", "HACS", "ActivityNet")  # captions get a random template prefix
NUM_MAX_CLASSES = 100  # VIS: more classes than this -> positives + random negatives (100 in total)


@dataclasses.dataclass
class Sample:
    """One item of an original dataset (index = position in the dataset's list)."""

    task: str
    dataset: str
    path: str  # the video file the original opens (VIS: the first frame file)
    fields: dict[str, Any]
    frame_paths: tuple[str, ...] = ()  # VIS frame files


def load_metadata(path) -> dict[str, dict]:
    """{task key: train-block dict} in the file's order (the original iterates the yaml dict in order)."""
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    return {key: block["train"] for key, block in data["datasets"].items() if "train" in block}


# --------------------------------------------------------------------------------------------- path rules
def retrieval_file(video_id: str, dataset: str) -> str:
    # task_retrieval.get_video_info: LSMDC/MSVD always get ".avi"; the rest ".mp4" unless it already ends so.
    if dataset in ("LSMDC", "MSVD"):
        return video_id + ".avi"
    return video_id if video_id.endswith(".mp4") else video_id + ".mp4"


def grounding_file(video_id: str, dataset: str) -> str:
    if dataset == "TaCoS":
        return video_id + "-cam-002.avi"
    return video_id if video_id.endswith(".mp4") else video_id + ".mp4"


def localization_file(video_id: str, dataset: str) -> str:
    if dataset == "TaCoS":
        return video_id + "-cam-002.avi"
    if dataset == "HACS":
        video_id = "v_" + video_id
    return video_id if video_id.endswith(".mp4") else video_id + ".mp4"


# --------------------------------------------------------------------------------------------- datasets
def _csv_dicts(path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def classification_samples(task_key: str, cfg: dict) -> list[Sample]:
    """Kinetics / SSV2: `train.csv` without header, `split` delimiter, col0 joined to `prefix`, col1 a name."""
    with open(cfg["label2id_path"], encoding="utf-8") as f:
        label2id = json.load(f)
    out = []
    with open(os.path.join(cfg["data_path"], "train.csv"), encoding="utf-8", newline="") as f:
        for row in csv.reader(f, delimiter=cfg.get("split", ",")):
            if not row:
                continue
            out.append(Sample(TASK_NAMES[task_key], "", os.path.join(cfg["prefix"], row[0]),
                              {"label": label2id[row[1]], "label_name": row[1]}))
    return out


def retrieval_samples(cfg: dict) -> list[Sample]:
    roots = cfg["data_dict"]["root_dir"]
    trim = cfg["data_dict"]["trimmed30s"]
    out = []
    for row in _csv_dicts(os.path.join(cfg["data_path"], "train.csv")):
        ds = row["dataset"]
        captions = [row["text"]] if ds == "WebVid" else list(ast.literal_eval(row["text"]))
        out.append(Sample("retrieval", ds, os.path.join(roots[ds], retrieval_file(row["video_id"], ds)),
                          {"captions": captions, "trimmed30s": bool(trim[ds])}))
    return out


def _window_row(row: dict) -> dict:
    return {"start": float(row["start_second"]), "end": float(row["end_second"]), "text": row["text"],
            "relevant_windows": [tuple(map(float, w)) for w in ast.literal_eval(row["relevant_windows"])]}


def grounding_samples(cfg: dict) -> list[Sample]:
    roots = cfg["data_dict"]["root_dir"]
    return [Sample("grounding", row["dataset"],
                   os.path.join(roots[row["dataset"]], grounding_file(row["video_id"], row["dataset"])),
                   _window_row(row))
            for row in _csv_dicts(os.path.join(cfg["data_path"], "train.csv"))]


def localization_samples(cfg: dict) -> list[Sample]:
    roots = cfg["data_dict"]["root_dir"]
    with open(cfg["label2id_path"], encoding="utf-8") as f:
        label2id = json.load(f)
    out = []
    for row in _csv_dicts(os.path.join(cfg["data_path"], "train.csv")):
        ds = row["dataset"]
        fields = _window_row(row)
        fields["label"] = label2id[ds][row["text"]]  # computed before any caption prefixing
        out.append(Sample("localization", ds, os.path.join(roots[ds], localization_file(row["video_id"], ds)),
                          fields))
    return out


def vis_samples(cfg: dict) -> list[Sample]:
    """Per `train_<Dataset>.json`: annotated videos (YTVIS/LV-VIS) or annotated images (COCO pseudo-videos).

    Each sample's fields: `instances` = [(category value written into the mask, [per-frame segmentation])],
    `size` = (H, W) of the annotation. Category value: the raw `category_id` for YTVIS/LV-VIS, COCO's
    `id2sequential_id` (position in `categories`) for COCOPseudoVIS.
    """
    roots = cfg["data_dict"]["root_dir"]
    out = []
    for name in sorted(os.listdir(cfg["data_path"])):  # the original: os.listdir order (unspecified)
        if not (name.startswith("train_") and name.endswith(".json")):
            continue
        ds = name.split("_")[1].split(".")[0]
        with open(os.path.join(cfg["data_path"], name), encoding="utf-8") as f:
            data = json.load(f)
        coco = ds == "COCOPseudoVIS"
        owners = data["images"] if coco else data["videos"]
        seq = {c["id"]: i for i, c in enumerate(data.get("categories", []))}
        by_owner: dict[Any, list] = {}
        for ann in data["annotations"]:
            by_owner.setdefault(ann["image_id" if coco else "video_id"], []).append(ann)
        for owner in owners:
            anns = by_owner.get(owner["id"])
            if not anns:  # FIX: the original pops by position for YTVIS/LV-VIS (removes the wrong video)
                continue
            if coco:
                files = (os.path.join(roots[ds], owner["file_name"]),)
                inst = [(seq[a["category_id"]], [a["segmentation"]], bool(a.get("iscrowd", 0))) for a in anns]
                size = (owner["height"], owner["width"])
            else:
                files = tuple(os.path.join(roots[ds], fn) for fn in owner["file_names"])
                inst = [(a["category_id"], list(a["segmentations"]), False) for a in anns]
                size = (anns[0]["height"], anns[0]["width"])
            out.append(Sample("vis", ds, files[0], {"instances": inst, "size": size, "id": owner["id"]},
                              frame_paths=files))
    return out


def task_samples(task_key: str, cfg: dict) -> list[Sample]:
    if task_key in ("Kinetics", "SSV2"):
        return classification_samples(task_key, cfg)
    return {"TaskRetrieval": retrieval_samples, "TaskGrounding": grounding_samples,
            "TaskLocalization": localization_samples, "TaskVIS": vis_samples}[task_key](cfg)


def label_tables(task_key: str, cfg: dict) -> dict[str, dict[int, str]] | dict[int, str]:
    """{id: name} (flat tasks) or {dataset: {id: name}} (nested label2id: localization, VIS)."""
    with open(cfg["label2id_path"], encoding="utf-8") as f:
        table = json.load(f)
    if all(isinstance(v, dict) for v in table.values()):
        return {ds: {int(i): n for n, i in t.items()} for ds, t in table.items()}
    return {int(i): n for n, i in table.items()}


# --------------------------------------------------------------------------------------------- mixture
def balanced_lengths(lengths: dict[str, int], scale: float = 2.0) -> dict[str, int]:
    """`MultiTaskDataset._balance_sample_num`: a dataset with len < max/scale is copied max // len times."""
    largest = max(lengths.values())
    return {k: n * (largest // n) if n < largest / scale else n for k, n in lengths.items()}


def sampler_epoch(lengths: dict[str, int], batch: int, replicas: int) -> list[str]:
    """The task of each micro-batch of one epoch of `DistributedBatchTaskBalancedSampler` (same on every rank).

    Walk each task (in order) in strides of batch*replicas until fewer remain; then re-order into cycles of
    f_k = b_k // min(b) consecutive batches per task, skipping exhausted tasks.
    """
    # Per task: the first batch is always taken; after each, the task is dropped once fewer than
    # batch*replicas indices remain, so a task of n >= batch*replicas samples gives n // (batch*replicas).
    per_task = {task: max(1, n // (batch * replicas)) for task, n in lengths.items() if n > 0}
    smallest = min(per_task.values())
    factors = {t: b // smallest for t, b in per_task.items()}
    left = dict(per_task)
    order = []
    while any(left.values()):
        for task in per_task:
            if left[task] <= 0:
                continue
            take = factors[task]  # the original reads f_k batches even past a task's end (its bug);
            take = min(take, left[task])  # these tests only use counts where that never happens
            order += [task] * take
            left[task] -= take
    return order


def batches_per_task(lengths: dict[str, int], batch: int, replicas: int) -> dict[str, int]:
    order = sampler_epoch(lengths, batch, replicas)
    return {t: order.count(t) for t in lengths if t in order}


def cycle_factors(lengths: dict[str, int], batch: int, replicas: int) -> dict[str, int]:
    b = batches_per_task(lengths, batch, replicas)
    return {t: n // min(b.values()) for t, n in b.items()}


# --------------------------------------------------------------------------------------------- frame sampling
def _py_round(x: float) -> int:
    return int(round(x))  # Python's round: half to even (np.round as used by the original agrees here)


def kinetics_ranges(n: int, t: int = 16) -> list[tuple[int, int]]:
    """`_get_seq_frames` (train): inclusive [lo, hi] per position, before `min(idx, n - 1)`."""
    seg = max(0.0, float(n - 1) / t)
    return [(min(int(np.round(seg * i)), n - 1), min(int(np.round(seg * (i + 1))), n - 1)) for i in range(t)]


localization_ranges = kinetics_ranges  # `loadvideo_decord` (uniform) in train mode uses the same rule


def ssv2_ranges(n: int, t: int = 16) -> list[tuple[int, int]]:
    avg = n // t
    if avg > 0:
        return [(i * avg, i * avg + avg - 1) for i in range(t)]
    if n > t:  # unreachable: avg > 0 whenever n >= t
        return [(0, n - 1)] * t
    return [(0, 0)] * t  # the original: all zeros for short videos


def vis_indices_short(n: int, t: int = 16) -> list[int]:
    return [0] * (t - n) + list(range(n))


def vis_ranges(n: int, t: int = 16) -> list[tuple[int, int]]:
    avg = n // t
    if avg > 0:
        return [(i * avg, i * avg + avg - 1) for i in range(t)]
    return [(i, i) for i in vis_indices_short(n, t)]


def retrieval_ranges(vlen: int, t: int = 16) -> list[tuple[int, int]] | None:
    """`get_frame_indices(sample='rand')`: one index in [a, b-2] per interval of linspace(0, vlen, acc+1);
    None when some interval is empty (then: a sorted random subset of acc frames, padded with the last)."""
    acc = min(t, vlen)
    edges = np.linspace(0, vlen, acc + 1).astype(int)
    ranges = [(int(a), int(b) - 2) for a, b in zip(edges[:-1], edges[1:])]
    if any(hi < lo for lo, hi in ranges):
        return None
    return ranges + [ranges[-1]] * (t - acc)


def retrieval_vlen(n: int, fps: float, trimmed30s: bool) -> int:
    if trimmed30s and n / fps > 30:
        return int(30 * fps)
    return n


def fixfps_ranges(start: float, end: float, n: int, fps: float, clip_len: int = 16) -> list[tuple[int, int]]:
    """`loadvideo_decord_fixfps`: `clip_len` used as seconds; duration = n / fps (from the video)."""
    duration = n / fps
    if end - start > clip_len:
        lo_t, hi_t = start, end
    else:
        centre, half = (start + end) / 2, clip_len / 2
        if centre - half < 0:
            lo_t, hi_t = 0, clip_len
        elif centre + half > duration:
            lo_t, hi_t = duration - clip_len, duration
        else:
            lo_t, hi_t = centre - half, centre + half
    s, e = int(lo_t * fps), int(hi_t * fps)
    if e - s < clip_len:
        e = s + clip_len
    seg = (e - s) / clip_len
    out = []
    for i in range(clip_len):
        a, b = int(s + seg * i), int(s + seg * (i + 1))
        lo, hi = (a, b) if b > a else (a, a)  # randint(a, b) is inclusive of b
        out.append((min(lo, n - 1), min(hi, n - 1)))
    return out


def timestamps(indices: Sequence[int], fps: float) -> list[float]:
    return [round(i / fps, 2) for i in indices]


# --------------------------------------------------------------------------------------------- targets
def grounding_labels(ts: Sequence[float], start: float, end: float, relevant: Sequence) -> np.ndarray:
    if len(relevant) <= 1:
        return np.array([1.0 if start <= t <= end else 0.0 for t in ts], np.float32)
    out = np.zeros(len(ts), np.float32)
    for s, e in relevant:
        for i, t in enumerate(ts):
            if s <= t <= e:
                out[i] = 1.0
    return out


def localization_labels(ts: Sequence[float], start: float, end: float, relevant: Sequence, label: int
                        ) -> np.ndarray:
    """Only this row's class is positive; -1 elsewhere (the uniform sampler's rule)."""
    if len(relevant) <= 1:
        return np.array([label if start <= t <= end else -1 for t in ts], np.int32)
    out = np.full(len(ts), -1, np.int32)
    for s, e in relevant:
        for i, t in enumerate(ts):
            if s <= t <= e:
                out[i] = label
    return out


# --------------------------------------------------------------------------------------------- VIS masks
def rle_decode(counts, height: int, width: int) -> np.ndarray:
    """COCO RLE (uncompressed list or compressed string) -> uint8 [H, W] (column-major runs, zeros first)."""
    if isinstance(counts, (str, bytes)):
        counts = _rle_string_counts(counts.encode() if isinstance(counts, str) else counts)
    flat = np.zeros(height * width, np.uint8)
    pos, value = 0, 0
    for c in counts:
        flat[pos:pos + c] = value
        pos += c
        value ^= 1
    return flat.reshape(width, height).T.copy()


def _rle_string_counts(s: bytes) -> list[int]:
    """pycocotools' compressed counts: 5-bit groups, continuation bit 0x20, sign bit 0x10, delta from
    counts[i-2] for i > 2."""
    counts, p = [], 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = s[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rectangle_polygon_mask(polygons, height: int, width: int) -> np.ndarray:
    """cv2.fillPoly of axis-aligned integer rectangles (the fixtures' COCO polygons): inclusive bounds."""
    mask = np.zeros((height, width), np.uint8)
    for poly in polygons:
        xs, ys = poly[0::2], poly[1::2]
        mask[int(min(ys)):int(max(ys)) + 1, int(min(xs)):int(max(xs)) + 1] = 1
    return mask


def segmentation_mask(seg, height: int, width: int) -> np.ndarray:
    if seg is None:
        return np.zeros((height, width), np.uint8)
    if isinstance(seg, list):
        return rectangle_polygon_mask(seg, height, width)
    h, w = seg["size"]
    return rle_decode(seg["counts"], h, w)


def vis_target(sample: Sample, frame_indices: Sequence[int]) -> np.ndarray:
    """int32 [T, H, W] category value per pixel, -1 for background (the original writes 0 and the head maps 0
    to -1; here background is -1 from the start so that a category valued 0 stays a class: the fix of COCO's
    first category). Per category the instance masks are OR-ed; categories are painted in first-seen order,
    later ones over earlier ones."""
    h, w = sample.fields["size"]
    union: dict[int, np.ndarray] = {}
    for value, segs, _crowd in sample.fields["instances"]:
        per_frame = np.stack([segmentation_mask(segs[0] if len(segs) == 1 else segs[i], h, w)
                              for i in frame_indices])
        union[value] = union[value] | per_frame if value in union else per_frame
    out = np.full((len(frame_indices), h, w), -1, np.int32)
    for value, m in union.items():
        out[m != 0] = value
    return out


def vis_subsampled(num_classes: int) -> bool:
    return num_classes > NUM_MAX_CLASSES


def sample_counts(samples: Sequence[Sample]) -> dict[str, dict[str, int]]:
    """Per dataset: {"videos": distinct files, "samples": annotation rows}."""
    out: dict[str, dict[str, Any]] = {}
    for s in samples:
        d = out.setdefault(s.dataset, {"videos": set(), "samples": 0})
        d["videos"].add(s.path)
        d["samples"] += 1
    return {ds: {"videos": len(v["videos"]), "samples": v["samples"]} for ds, v in out.items()}
