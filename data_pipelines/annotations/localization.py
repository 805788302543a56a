"""Temporal action localization, one item per video with every labelled segment.

Accepted annotation files:

* the original's CSV (``task_localization.py``): grounding's columns with ``text`` = class name and
  ``dataset`` in {HACS, FineAction, ActivityNet}; every relevant window of a row is a segment of that class.
  Video file: ``"v_" + video_id + ".mp4"`` for HACS, ``video_id + ".mp4"`` otherwise.
* ActivityNet-style JSON (ActivityNet, HACS, FineAction): ``{"database": {vid: {"duration", "subset",
  "annotations": [{"segment": [s, e], "label": name}]}}}``. ``subset`` filters on the ``subset`` field.

Class indices come from ``--class-names`` (flat, or nested ``{dataset: {name: id}}`` as the original's
label2id.json); without it, the sorted set of names in the file defines them.

The original draws one *row* (one action class) per sample; here a video's rows are merged, so a reader
recovers a row by choosing one label and taking the segments with that label.
"""
from __future__ import annotations

from .common import (AnnotationError, ClassNames, Item, parse_float, parse_literal, parse_windows,
                     read_dict_rows, read_json, resolve)


def parse(path, video_root, classes: ClassNames | None = None, *, video_file, subset: str | None = None,
          dataset: str | None = "", **options) -> list[Item]:
    """Returns the items; with ``classes=None`` the labels index :func:`class_names_of`. ``dataset`` names
    the source of a JSON file (it has no dataset column; "HACS" selects the ``v_`` file prefix);
    ``video_file(video_id, dataset)`` names the videos (the task's rules)."""
    dataset = dataset or ""
    if str(path).endswith(".json"):
        rows = _json_rows(path, subset, dataset)
    else:
        rows = _csv_rows(path)
    if not rows:
        raise AnnotationError(path, None, "no localization entries")
    if classes is None:
        classes = ClassNames(tuple(sorted({name for *_, name, _ in rows})))
    order, videos = [], {}
    for lineno, dataset, vid, duration, name, windows in rows:
        try:
            label = classes.index(name, dataset)
        except KeyError as err:
            raise AnnotationError(path, lineno, str(err.args[0])) from None
        key = (dataset, vid)
        if key not in videos:
            order.append(key)
            videos[key] = {"segments": [], "segment_labels": [], "duration": duration}
        videos[key]["segments"].extend(windows)
        videos[key]["segment_labels"].extend([label] * len(windows))
    return [Item(video_id=vid, source=resolve(video_root, video_file(vid, ds), ds),
                 fields={"segments": videos[(ds, vid)]["segments"],
                         "segment_labels": videos[(ds, vid)]["segment_labels"]},
                 dataset=ds, duration=videos[(ds, vid)]["duration"]) for ds, vid in order]


def class_names_of(path, subset: str | None = None, **options) -> tuple[str, ...]:
    """The class table used when no ``--class-names`` is given (sorted names found in the file)."""
    rows = _json_rows(path, subset, "") if str(path).endswith(".json") else _csv_rows(path)
    return tuple(sorted({name for *_, name, _ in rows}))


def _csv_rows(path):
    rows = []
    required = ("video_id", "text", "relevant_windows", "dataset")
    for lineno, row in read_dict_rows(path, required):
        windows = parse_windows(parse_literal(row["relevant_windows"], path, lineno, "relevant_windows"),
                                path, lineno)
        duration = row.get("duration", "").strip()
        duration = parse_float(duration, path, lineno, "duration") if duration else None
        rows.append((lineno, row["dataset"].strip(), row["video_id"].strip(), duration, row["text"].strip(),
                     windows))
    return rows


def _json_rows(path, subset, dataset):
    data = read_json(path)
    database = data.get("database") if isinstance(data, dict) else None
    if not isinstance(database, dict):
        raise AnnotationError(path, None, "expected {'database': {video_id: {...}}}")
    rows = []
    for vid, entry in database.items():
        if subset and entry.get("subset") != subset:
            continue
        for i, ann in enumerate(entry.get("annotations", [])):
            try:
                windows = parse_windows([ann["segment"]], path, None)
                name = str(ann["label"])
            except (KeyError, TypeError):
                raise AnnotationError(path, None, f"{vid}: annotation {i} lacks segment/label") from None
            duration = entry.get("duration")
            rows.append((None, dataset, str(vid), float(duration) if duration is not None else None,
                         name, windows))
    return rows
