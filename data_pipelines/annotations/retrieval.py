"""Video-text retrieval captions, grouped into one item per video; each annotation row stays one sample.

Accepted annotation files:

* the original's CSV (``task_retrieval.py``): header with ``video_id``, ``dataset``, ``text``; ``text`` is a
  Python-literal list of captions, or a plain string (WebVid). Video file (the task's rules): ``video_id +
  ".avi"`` for LSMDC and MSVD (always: LSMDC ids contain dots), else ``video_id + ".mp4"`` unless it already
  ends with ``.mp4``.
* MSRVTT's ``MSRVTT_data.json``: ``{"videos": [{"video_id"}], "sentences": [{"video_id", "caption"}]}`` (one
  row per sentence).
* a JSON list of ``{"video" | "video_id", "caption" | "captions": str | [str]}`` (CLIP4Clip/UMT style; one row
  per entry).

A record holds every caption of its video; ``caption_row[i]`` is the row caption i came from. The original draws
one row per sample and one caption of that row's list, so a video's rows are separate samples
(`TaskSpec.record_samples`). ``trim_seconds`` (30 for datasets with ``trimmed30s``, e.g. DiDeMo) limits frame
sampling to the first 30 s of videos longer than that.
"""
from __future__ import annotations

from streamformer_jax.tasks import registry

from . import original
from .common import AnnotationError, Item, parse_literal, read_dict_rows, read_json, resolve

TRIM_SECONDS = 30.0  # the original's `trimmed30s`
# The released all.yaml's trimmed30s, used by the single-task command (from-metadata reads the file's own).
DEFAULT_TRIMMED = {"DiDeMo": True}


def _group(path, video_root, entries, video_file, trimmed) -> list[Item]:
    """entries: (video_id, dataset, [captions]) rows in file order -> one Item per (dataset, video_id)."""
    order, videos = [], {}
    for vid, dataset, caps in entries:
        key = (dataset, vid)
        if key not in videos:
            order.append(key)
            videos[key] = {"captions": [], "caption_row": [], "rows": 0}
        v = videos[key]
        v["caption_row"].extend([v["rows"]] * len(caps))
        v["captions"].extend(caps)
        v["rows"] += 1
    items = []
    for dataset, vid in order:
        v = videos[(dataset, vid)]
        fields = {"captions": v["captions"], "caption_row": v["caption_row"],
                  "trim_seconds": TRIM_SECONDS if trimmed.get(dataset) else 0.0}
        items.append(Item(video_id=vid, source=resolve(video_root, video_file(vid, dataset), dataset),
                          fields=fields, dataset=dataset))
    if not items:
        raise AnnotationError(path, None, "no retrieval entries")
    return items


def _captions(value, path, lineno) -> list[str]:
    caps = [value] if isinstance(value, str) else value
    if not isinstance(caps, (list, tuple)) or not caps or not all(isinstance(c, str) for c in caps):
        raise AnnotationError(path, lineno, "captions must be a string or a non-empty list of strings")
    return list(caps)


def parse(path, video_root, classes=None, *, video_file, trimmed=None, **options) -> list[Item]:
    """Items of a retrieval file; ``video_file(video_id, dataset)`` names the videos (the task's rules);
    ``trimmed``: {dataset: bool} (default `DEFAULT_TRIMMED`)."""
    trimmed = DEFAULT_TRIMMED if trimmed is None else trimmed
    if str(path).endswith(".json"):
        return _group(path, video_root, _json_entries(path), video_file, trimmed)
    return _group(path, video_root, _csv_entries(path, video_root), video_file, trimmed)


def _csv_entries(path, video_root=None):
    entries = []
    for lineno, row in read_dict_rows(path, ("video_id", "dataset", "text")):
        text, dataset = row["text"].strip(), row["dataset"].strip()
        # WebVid's text is one plain caption; the others a Python-literal list (the original's rule).
        value = text if dataset == "WebVid" or not text.startswith("[") else parse_literal(text, path, lineno,
                                                                                           "text")
        if not row["video_id"].strip():
            raise AnnotationError(path, lineno, "empty video_id")
        if isinstance(video_root, dict):
            original.check_root(video_root, dataset, path, lineno)
        entries.append((row["video_id"].strip(), dataset, _captions(value, path, lineno)))
    return entries


def read_original(block) -> original.OriginalTask:
    """TaskRetrieval block: ``data_path/train.csv``, videos under ``data_dict.root_dir[dataset]``,
    ``data_dict.trimmed30s`` per dataset."""
    path = original.data_file(block)
    roots = original.root_dirs(block)
    items = _group(path, roots, _csv_entries(path, roots), registry.get("retrieval").video_file,
                   original.dataset_flags(block, "trimmed30s"))
    return original.OriginalTask(items, None, [path])


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
