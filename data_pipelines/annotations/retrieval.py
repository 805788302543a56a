"""Video-text retrieval captions, grouped into one item per video (captions in file order).

Accepted annotation files:

* the original's CSV (``task_retrieval.py``): header with ``video_id``, ``dataset``, ``text``; ``text`` is a
  Python-literal list of captions, or a plain string (WebVid). Video file: ``video_id`` + ``.avi`` for LSMDC
  and MSVD, ``.mp4`` otherwise, unless ``video_id`` already has a suffix.
* MSRVTT's ``MSRVTT_data.json``: ``{"videos": [{"video_id"}], "sentences": [{"video_id", "caption"}]}``.
* a JSON list of ``{"video" | "video_id", "caption" | "captions": str | [str]}`` (CLIP4Clip/UMT style).
"""
from __future__ import annotations

import os

from .common import AnnotationError, Item, parse_literal, read_dict_rows, read_json, resolve

def _group(path, video_root, entries, video_file) -> list[Item]:
    """entries: (video_id, dataset, [captions]) in file order -> one Item per (dataset, video_id)."""
    order, captions = [], {}
    for vid, dataset, caps in entries:
        key = (dataset, vid)
        if key not in captions:
            order.append(key)
            captions[key] = []
        captions[key].extend(caps)
    items = []
    for dataset, vid in order:
        name = video_file(vid, dataset)
        items.append(Item(video_id=os.path.splitext(vid)[0], source=resolve(video_root, name, dataset),
                          fields={"captions": captions[(dataset, vid)]}, dataset=dataset))
    if not items:
        raise AnnotationError(path, None, "no retrieval entries")
    return items


def _captions(value, path, lineno) -> list[str]:
    caps = [value] if isinstance(value, str) else value
    if not isinstance(caps, (list, tuple)) or not caps or not all(isinstance(c, str) for c in caps):
        raise AnnotationError(path, lineno, "captions must be a string or a non-empty list of strings")
    return list(caps)


def parse(path, video_root, classes=None, *, video_file, **options) -> list[Item]:
    """Items of a retrieval file; ``video_file(video_id, dataset)`` names the videos (the task's rules)."""
    if str(path).endswith(".json"):
        return _group(path, video_root, _json_entries(path), video_file)
    entries = []
    for lineno, row in read_dict_rows(path, ("video_id", "dataset", "text")):
        text = row["text"].strip()
        value = parse_literal(text, path, lineno, "text") if text.startswith("[") else text
        if not row["video_id"].strip():
            raise AnnotationError(path, lineno, "empty video_id")
        entries.append((row["video_id"].strip(), row["dataset"].strip(), _captions(value, path, lineno)))
    return _group(path, video_root, entries, video_file)


def _json_entries(path):
    data = read_json(path)
    if isinstance(data, dict) and "sentences" in data:
        # MSRVTT_data.json: keep the order of the "videos" list when present.
        videos = [v["video_id"] for v in data.get("videos", [])]
        by_video: dict[str, list[str]] = {v: [] for v in videos}
        for i, s in enumerate(data["sentences"]):
            try:
                by_video.setdefault(s["video_id"], []).append(str(s["caption"]))
            except (KeyError, TypeError):
                raise AnnotationError(path, None, f"sentence {i} lacks video_id/caption") from None
        return [(v, "MSRVTT", caps) for v, caps in by_video.items() if caps]
    if not isinstance(data, list):
        raise AnnotationError(path, None, "expected a list of {video, caption} or MSRVTT_data.json")
    entries = []
    for i, e in enumerate(data):
        vid = e.get("video", e.get("video_id")) if isinstance(e, dict) else None
        caps = e.get("caption", e.get("captions")) if isinstance(e, dict) else None
        if not vid or caps is None:
            raise AnnotationError(path, None, f"entry {i} lacks video/caption")
        entries.append((str(vid), str(e.get("dataset", "")), _captions(caps, path, None)))
    return entries
