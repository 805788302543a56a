"""Video instance segmentation: YouTube-VIS / LV-VIS JSON (``train_<Dataset>.json``) and COCO instance JSON, one
item per annotated video or image (each is one sample).

``videos[{id, file_names[], height, width}]``, ``annotations[{video_id, category_id, segmentations[]}]``
(one RLE dict or null per frame; uncompressed counts for YouTube-VIS, compressed strings for LV-VIS),
``categories[{id, name}]``. Frames are image files ``video_root/file_names[i]``.

Category values (what the mask target holds, the row of the dataset's label table), as the original:
the raw ``category_id`` for YouTube-VIS / LV-VIS, ``id2sequential_id`` (the category's position in
``categories``) for COCO. The label table of a dataset lists names by value: from ``--class-names`` (nested
``{dataset: {name: id}}`` label2id, or one flat table for every dataset), else from the file's ``categories``
(by id for YouTube-VIS / LV-VIS, by position for COCO). The original's background value 0 is -1 here, so a
category valued 0 (COCO's first, "person") stays a class (the original lost it; docs/data_convert.md).

COCO instance JSON (``images``/``annotations``/``categories``, e.g. ``train_COCOPseudoVIS.json``) gives
single-frame items: the image is stored once and the reader builds the pseudo-video (16 randomly rotated
copies, spec §6.7). Polygons are rasterised with Pillow (boundary pixels may differ from cv2.fillPoly);
crowd RLEs are used as they are.

Bad items are listed, not fatal: a video or image without annotations, or whose segmentations do not match
its frames, becomes an item with a ``problem`` (skipped and listed by the converter); a segmentation that does
not decode is skipped the same way when the converter decodes it.
"""
from __future__ import annotations

import os
import re

from . import original
from .common import AnnotationError, ClassNames, Item, names_by_id, read_json


def dataset_of(path) -> str:
    """``train_YoutubeVIS.json`` -> ``YoutubeVIS`` (the original parses the name the same way)."""
    m = re.match(r"(?:train|valid|val|test)_(.+)\.json$", os.path.basename(str(path)))
    return m.group(1) if m else ""


def _is_coco(data) -> bool:
    return isinstance(data, dict) and "images" in data and "videos" not in data and "annotations" in data


def _category_values(data) -> dict:
    """category_id -> (mask value, name): raw ids for YTVIS-style files, positions for COCO."""
    cats = data.get("categories", [])
    if _is_coco(data):
        return {c["id"]: (i, c["name"]) for i, c in enumerate(cats)}
    return {c["id"]: (int(c["id"]), c["name"]) for c in cats}


def category_names(path, **options) -> dict[str, list[str]]:
    """The label table of a file without ``--class-names``: ``{dataset: names by mask value}``."""
    data = read_json(path)
    return {dataset_of(path): names_by_id({name: v for v, name in _category_values(data).values()})}


def parse(path, video_root, classes: ClassNames | None = None, *, dataset: str | None = None, **options
          ) -> list[Item]:
    """Items of one VIS file (``dataset``: its name, default from the file name). ``classes`` only names
    the label tables (see the module docstring); mask values are the original's."""
    data = read_json(path)
    dataset = dataset or dataset_of(path)
    if _is_coco(data):
        return _parse_coco(path, data, video_root, dataset or "COCO")
    if not isinstance(data, dict) or "videos" not in data or "annotations" not in data:
        raise AnnotationError(path, None, "expected YTVIS JSON with 'videos' and 'annotations' (or COCO 'images')")
    per_video = _instances(path, data, "video_id", "segmentations")
    items = []
    for v in data["videos"]:
        vid, files = _required(path, v, "a video", "id", "file_names")
        files = list(files)
        video_id = (os.path.dirname(files[0]) if files else "") or str(vid)
        frame_files = tuple(_join(video_root, f, dataset) for f in files)
        instances = per_video.get(vid, [])
        problem = None
        if not files:
            problem = "video has no frames"
        elif not instances:
            problem = "video has no annotations"
        else:
            bad = [len(segs) for _, segs in instances if len(segs) != len(files)]
            if bad:
                problem = f"malformed segmentations: {bad[0]} for {len(files)} frames"
        items.append(Item(video_id=video_id, source=frame_files[0] if frame_files else str(vid), dataset=dataset,
                          fields={"categories": [value for value, _ in instances]}, frame_files=frame_files,
                          masks=tuple(segs for _, segs in instances), problem=problem))
    if not any(it.problem is None for it in items):
        raise AnnotationError(path, None, "no annotated video")
    return items


def _required(path, entry, what: str, *keys: str) -> tuple:
    """The values of `keys` in one JSON entry, or an AnnotationError naming what lacks them."""
    try:
        return tuple(entry[k] for k in keys)
    except (KeyError, TypeError):
        raise AnnotationError(path, None, f"{what} lacks {'/'.join(keys)}") from None


def _join(video_root, name: str, dataset: str) -> str:
    if isinstance(video_root, dict):
        return os.path.join(video_root[dataset], name)
    return os.path.join(video_root, name)


def _instances(path, data, owner_key, seg_key) -> dict:
    """owner id (video or image) -> [(category value, segmentations tuple)] in annotation order."""
    values = _category_values(data)
    out: dict = {}
    for i, ann in enumerate(data["annotations"]):
        owner, cat, segs = _required(path, ann, f"annotation {i}", owner_key, "category_id", seg_key)
        if cat not in values:
            raise AnnotationError(path, None, f"annotation {i}: unknown category_id {cat}")
        # COCO has one segmentation per annotation; YTVIS one per frame.
        segs = tuple(segs) if seg_key == "segmentations" else (segs,)
        out.setdefault(owner, []).append((values[cat][0], segs))
    return out


def _parse_coco(path, data, video_root, dataset) -> list[Item]:
    per_image = _instances(path, data, "image_id", "segmentation")
    items = []
    for img in data["images"]:
        image_id, name = _required(path, img, "an image", "id", "file_name")
        instances = per_image.get(image_id, [])
        source = _join(video_root, name, dataset)
        items.append(Item(video_id=os.path.splitext(name)[0], source=source, dataset=dataset,
                          fields={"categories": [value for value, _ in instances]}, frame_files=(source,),
                          masks=tuple(segs for _, segs in instances),
                          problem=None if instances else "image has no annotations"))
    if not any(it.problem is None for it in items):
        raise AnnotationError(path, None, "no annotated image")
    return items


def read_original(block) -> original.OriginalTask:
    """TaskVIS block: every ``data_path/train_<Dataset>.json``, frames under ``data_dict.root_dir[Dataset]``,
    label tables from the nested ``label2id_path``."""
    folder = str(original.required(block, "data_path"))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder}: no such directory ({original.where(block)}.data_path)")
    roots = original.root_dirs(block)
    classes = original.class_names(original.label2id(block), str(block["label2id_path"]))
    items, files = [], []
    for name in sorted(os.listdir(folder)):  # the original: os.listdir order; sorted for a stable output
        if not (name.startswith("train_") and name.endswith(".json")):
            continue
        dataset = name.split("_")[1].split(".")[0]  # the original's rule
        path = os.path.join(folder, name)
        original.check_root(roots, dataset, path, None)
        items += parse(path, roots, dataset=dataset)
        files.append(path)
    if not files:
        raise FileNotFoundError(f"{folder}: no train_<Dataset>.json files ({original.where(block)}.data_path)")
    return original.OriginalTask(items, classes.tables(), files)
