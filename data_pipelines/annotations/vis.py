"""Video instance segmentation: YouTube-VIS / LV-VIS JSON (``train_<Dataset>.json``), one item per video.

``videos[{id, file_names[], height, width}]``, ``annotations[{video_id, category_id, segmentations[]}]``
(one RLE dict or null per frame; uncompressed counts for YouTube-VIS, compressed strings for LV-VIS),
``categories[{id, name}]``. Frames are image files ``video_root/file_names[i]``.

Category index: ``--class-names`` (flat, or nested ``{dataset: {name: id}}``) when given, else the position
of the category in ``categories`` sorted by id (0-based; the original's mask map adds 1 for background).
Videos without any annotation are dropped (the original asserts foreground).

COCO instance JSON (``images``/``annotations``/``categories``, e.g. ``train_COCOPseudoVIS.json``) gives
single-frame items: the image is stored once and the reader builds the pseudo-video (16 randomly rotated
copies, spec §6.7). Polygons are rasterised with Pillow (boundary pixels may differ from pycocotools);
crowd RLEs are used as they are. Category ids are remapped to 0..N-1 in id order (``id2sequential_id``).
"""
from __future__ import annotations

import os
import re

from .common import AnnotationError, ClassNames, Item, read_json


def dataset_of(path) -> str:
    """``train_YoutubeVIS.json`` -> ``YoutubeVIS`` (the original parses the name the same way)."""
    m = re.match(r"(?:train|valid|val|test)_(.+)\.json$", os.path.basename(str(path)))
    return m.group(1) if m else ""


def category_names(path, **options) -> tuple[str, ...]:
    data = read_json(path)
    return tuple(c["name"] for c in sorted(data.get("categories", []), key=lambda c: c["id"]))


def parse(path, video_root, classes: ClassNames | None = None, **options) -> list[Item]:
    data = read_json(path)
    if isinstance(data, dict) and "images" in data and "videos" not in data and "annotations" in data:
        return _parse_coco(path, data, video_root, classes)
    if not isinstance(data, dict) or "videos" not in data or "annotations" not in data:
        raise AnnotationError(path, None, "expected YTVIS JSON with 'videos' and 'annotations' (or COCO 'images')")
    dataset = dataset_of(path)
    per_video = _instances(path, data, classes, dataset, "video_id", "segmentations")
    items = []
    for v in data["videos"]:
        vid, files = _required(path, v, "a video", "id", "file_names")
        instances = per_video.get(vid)
        if not instances or not files:
            continue
        for seq, segs in instances:
            if len(segs) != len(files):
                raise AnnotationError(path, None, f"video {vid}: {len(segs)} segmentations for "
                                                  f"{len(files)} frames")
        frame_files = tuple(os.path.join(video_root, f) for f in files)
        items.append(_item(os.path.dirname(files[0]) or str(vid), dataset, frame_files, instances))
    if not items:
        raise AnnotationError(path, None, "no annotated video")
    return items


def _required(path, entry, what: str, *keys: str) -> tuple:
    """The values of `keys` in one JSON entry, or an AnnotationError naming what lacks them."""
    try:
        return tuple(entry[k] for k in keys)
    except (KeyError, TypeError):
        raise AnnotationError(path, None, f"{what} lacks {'/'.join(keys)}") from None


def _item(video_id: str, dataset: str, frame_files: tuple[str, ...], instances) -> Item:
    """One image sequence (or one image) with its instances' categories and per-frame segmentations."""
    return Item(video_id=video_id, source=frame_files[0], dataset=dataset,
                fields={"categories": [seq for seq, _ in instances]}, frame_files=frame_files,
                masks=tuple(segs for _, segs in instances))


def _instances(path, data, classes, dataset, owner_key, seg_key) -> dict:
    """owner id (video or image) -> [(category index, segmentations tuple)] in annotation order."""
    cats = sorted(data.get("categories", []), key=lambda c: c["id"])
    by_id = {c["id"]: (i, c["name"]) for i, c in enumerate(cats)}
    out: dict = {}
    for i, ann in enumerate(data["annotations"]):
        owner, cat, segs = _required(path, ann, f"annotation {i}", owner_key, "category_id", seg_key)
        if cat not in by_id:
            raise AnnotationError(path, None, f"annotation {i}: unknown category_id {cat}")
        seq, name = by_id[cat]
        if classes is not None:
            try:
                seq = classes.index(name, dataset)
            except KeyError as err:
                raise AnnotationError(path, None, f"annotation {i}: {err.args[0]}") from None
        # COCO has one segmentation per annotation; YTVIS one per frame.
        out.setdefault(owner, []).append((seq, tuple(segs) if seg_key == "segmentations" else (segs,)))
    return out


def _parse_coco(path, data, video_root, classes) -> list[Item]:
    dataset = dataset_of(path) or "COCO"
    per_image = _instances(path, data, classes, dataset, "image_id", "segmentation")
    items = []
    for img in data["images"]:
        image_id, name = _required(path, img, "an image", "id", "file_name")
        instances = per_image.get(image_id)
        if instances:
            items.append(_item(os.path.splitext(name)[0], dataset, (os.path.join(video_root, name),), instances))
    if not items:
        raise AnnotationError(path, None, "no annotated image")
    return items
