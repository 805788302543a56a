"""Temporal grounding queries, grouped into one item per video; each query (annotation row) is one sample.

Accepted annotation files:

* the original's CSV (``task_grounding.py``): header with ``video_id``, ``start_second``, ``end_second``,
  ``text``, ``relevant_windows`` (Python-literal ``[[s, e], ...]``), ``dataset``; optional ``duration``.
  Video file (the task's rules): ``video_id + "-cam-002.avi"`` for TaCoS, else ``video_id + ".mp4"`` unless it
  already ends with ``.mp4``.
* Charades-STA text lists (``.txt``): ``VIDEO START END##sentence``; video ``VIDEO.mp4``.
* QVHighlights JSON lines (``.jsonl``): ``{"query", "vid", "duration", "relevant_windows"}``; the caption's
  window is the span of its relevant windows.

Each caption gets ``windows[i] = (start, end)`` and all its relevant windows (see the schema).
"""
from __future__ import annotations

from streamformer_jax.tasks import registry

from . import original
from .common import (AnnotationError, Item, parse_float, parse_literal, parse_windows, read_dict_rows,
                     read_jsonl, resolve)

WINDOW_COLUMNS = ("video_id", "start_second", "end_second", "text", "relevant_windows", "dataset")


class _Grouper:
    """Collects queries per (dataset, video) in first-seen order."""

    def __init__(self):
        self.order, self.videos = [], {}

    def add(self, vid, dataset, caption, window, relevant, duration):
        key = (dataset, vid)
        if key not in self.videos:
            self.order.append(key)
            self.videos[key] = {"captions": [], "windows": [], "relevant": [], "rel_caption": [],
                                "duration": duration}
        v = self.videos[key]
        v["rel_caption"].extend([len(v["captions"])] * len(relevant))
        v["captions"].append(caption)
        v["windows"].append(window)
        v["relevant"].extend(relevant)
        if duration is not None:
            v["duration"] = duration

    def items(self, path, video_root, video_file) -> list[Item]:
        if not self.order:
            raise AnnotationError(path, None, "no grounding entries")
        out = []
        for dataset, vid in self.order:
            v = self.videos[(dataset, vid)]
            fields = {"captions": v["captions"], "windows": v["windows"], "relevant_windows": v["relevant"],
                      "relevant_window_caption": v["rel_caption"]}
            out.append(Item(video_id=vid, source=resolve(video_root, video_file(vid, dataset), dataset),
                            fields=fields, dataset=dataset, duration=v["duration"]))
        return out


def parse(path, video_root, classes=None, *, video_file, **options) -> list[Item]:
    """Items of a grounding file; ``video_file(video_id, dataset)`` names the videos (the task's rules)."""
    p = str(path)
    if p.endswith(".jsonl"):
        return _parse_qvh(path, video_root, video_file)
    if p.endswith(".txt"):
        return _parse_charades(path, video_root, video_file)
    groups = _Grouper()
    for lineno, row in window_rows(path, video_root):
        groups.add(row["video_id"], row["dataset"], row["text"], row["window"], row["relevant"], row["duration"])
    return groups.items(path, video_root, video_file)


def window_rows(path, video_root=None):
    """(line, row) of an original grounding/localization CSV with parsed windows: ``window`` = (start_second,
    end_second), ``relevant`` = the relevant windows, ``duration`` (None when absent)."""
    for lineno, row in read_dict_rows(path, WINDOW_COLUMNS):
        start = parse_float(row["start_second"], path, lineno, "start_second")
        end = parse_float(row["end_second"], path, lineno, "end_second")
        if not 0 <= start <= end:
            raise AnnotationError(path, lineno, f"bad window [{start}, {end}]")
        relevant = parse_windows(parse_literal(row["relevant_windows"], path, lineno, "relevant_windows"),
                                 path, lineno)
        duration = (row.get("duration") or "").strip()
        dataset = row["dataset"].strip()
        if isinstance(video_root, dict):
            original.check_root(video_root, dataset, path, lineno)
        yield lineno, {"video_id": row["video_id"].strip(), "dataset": dataset, "text": row["text"],
                       "window": (start, end), "relevant": relevant,
                       "duration": parse_float(duration, path, lineno, "duration") if duration else None}


def read_original(block) -> original.OriginalTask:
    """TaskGrounding block: ``data_path/train.csv``, videos under ``data_dict.root_dir[dataset]``."""
    path = original.data_file(block)
    items = parse(path, original.root_dirs(block), video_file=registry.get("grounding").video_file)
    return original.OriginalTask(items, None, [path])


def _parse_charades(path, video_root, video_file) -> list[Item]:
    groups = _Grouper()
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            head, sep, caption = line.rstrip("\n").partition("##")
            parts = head.split()
            if not sep or len(parts) != 3:
                raise AnnotationError(path, lineno, "expected 'VIDEO START END##sentence'")
            start = parse_float(parts[1], path, lineno, "start")
            end = parse_float(parts[2], path, lineno, "end")
            window = parse_windows([start, end], path, lineno)[0]
            groups.add(parts[0], "CharadesSTA", caption.strip(), window, [window], None)
    return groups.items(path, video_root, video_file)


def _parse_qvh(path, video_root, video_file) -> list[Item]:
    groups = _Grouper()
    for lineno, entry in read_jsonl(path):
        try:
            vid, query, relevant = entry["vid"], entry["query"], entry["relevant_windows"]
        except (KeyError, TypeError):
            raise AnnotationError(path, lineno, "entry lacks vid/query/relevant_windows") from None
        windows = parse_windows(relevant, path, lineno)
        if not windows:
            raise AnnotationError(path, lineno, "no relevant window")
        span = (min(s for s, _ in windows), max(e for _, e in windows))
        duration = entry.get("duration")
        groups.add(str(vid), "QVHighlights", str(query), span, windows,
                   float(duration) if duration is not None else None)
    return groups.items(path, video_root, video_file)
