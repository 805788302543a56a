"""Temporal action localization, one item per video; each (video, class) annotation row is one sample.

Accepted annotation files:

* the original's CSV (``task_localization.py``): grounding's columns with ``text`` = class name and
  ``dataset`` in {HACS, FineAction, ActivityNet}. Video file (the task's rules): ``"v_" + video_id`` for HACS,
  then ``.mp4`` unless already there; TaCoS ``video_id + "-cam-002.avi"``; others ``.mp4`` unless already there.
* ActivityNet-style JSON (ActivityNet, HACS, FineAction): ``{"database": {vid: {"duration", "subset",
  "annotations": [{"segment": [s, e], "label": name}]}}}``. ``subset`` filters on the ``subset`` field. A
  video's segments of one class form one row (window = their span, relevant windows = the segments).

Record fields, one entry per row: ``segments[i]`` = the row's (start_second, end_second), ``segment_labels[i]``
= its class id; ``relevant_windows`` with ``relevant_window_caption`` (the row of each window). The original
labels a sampled frame with the row's class inside [start, end] when the row has at most one relevant window,
inside any of its relevant windows otherwise, and -1 elsewhere.

Class ids come from ``--class-names`` (flat, or nested ``{dataset: {name: id}}`` as the original's
label2id.json: ids index that dataset's table); without it, the sorted set of names in the file defines them.
"""
from __future__ import annotations

from streamformer_jax.tasks import registry

from . import original
from .common import AnnotationError, ClassNames, Item, parse_windows, read_json, resolve
from .grounding import window_rows


def parse(path, video_root, classes: ClassNames | None = None, *, video_file, subset: str | None = None,
          dataset: str | None = "", **options) -> list[Item]:
    """Returns the items; with ``classes=None`` the labels index :func:`class_names_of`. ``dataset`` names
    the source of a JSON file (it has no dataset column; "HACS" selects the ``v_`` file prefix);
    ``video_file(video_id, dataset)`` names the videos (the task's rules)."""
    dataset = dataset or ""
    rows = _json_rows(path, subset, dataset) if str(path).endswith(".json") else _csv_rows(path, video_root)
    if not rows:
        raise AnnotationError(path, None, "no localization entries")
    if classes is None:
        classes = ClassNames(tuple(sorted({r["text"] for _, r in rows})))
    return _items(path, rows, video_root, classes, video_file)


def _items(path, rows, video_root, classes: ClassNames, video_file) -> list[Item]:
    order, videos = [], {}
    for lineno, r in rows:
        try:
            label = classes.index(r["text"], r["dataset"])
        except KeyError as err:
            raise AnnotationError(path, lineno, str(err.args[0])) from None
        key = (r["dataset"], r["video_id"])
        if key not in videos:
            order.append(key)
            videos[key] = {"segments": [], "segment_labels": [], "relevant_windows": [],
                           "relevant_window_caption": [], "duration": r["duration"]}
        v = videos[key]
        v["relevant_window_caption"].extend([len(v["segments"])] * len(r["relevant"]))
        v["relevant_windows"].extend(r["relevant"])
        v["segments"].append(r["window"])
        v["segment_labels"].append(label)
        if r["duration"] is not None:
            v["duration"] = r["duration"]
    items = []
    for ds, vid in order:
        v = videos[(ds, vid)]
        duration = v.pop("duration")
        items.append(Item(video_id=vid, source=resolve(video_root, video_file(vid, ds), ds), fields=v, dataset=ds,
                          duration=duration))
    return items


def class_names_of(path, subset: str | None = None, **options) -> tuple[str, ...]:
    """The class table used when no ``--class-names`` is given (sorted names found in the file)."""
    rows = _json_rows(path, subset, "") if str(path).endswith(".json") else _csv_rows(path)
    return tuple(sorted({r["text"] for _, r in rows}))


def _csv_rows(path, video_root=None):
    return [(lineno, {**row, "text": row["text"].strip()}) for lineno, row in window_rows(path, video_root)]


def _json_rows(path, subset, dataset):
    data = read_json(path)
    database = data.get("database") if isinstance(data, dict) else None
    if not isinstance(database, dict):
        raise AnnotationError(path, None, "expected {'database': {video_id: {...}}}")
    rows = []
    for vid, entry in database.items():
        if subset and entry.get("subset") != subset:
            continue
        per_class: dict[str, list] = {}
        for i, ann in enumerate(entry.get("annotations", [])):
            try:
                windows = parse_windows([ann["segment"]], path, None)
                name = str(ann["label"])
            except (KeyError, TypeError):
                raise AnnotationError(path, None, f"{vid}: annotation {i} lacks segment/label") from None
            per_class.setdefault(name, []).extend(windows)
        duration = entry.get("duration")
        for name, windows in per_class.items():
            span = (min(s for s, _ in windows), max(e for _, e in windows))
            rows.append((None, {"video_id": str(vid), "dataset": dataset, "text": name, "window": span,
                                "relevant": windows, "duration": float(duration) if duration is not None else None}))
    return rows


def read_original(block) -> original.OriginalTask:
    """TaskLocalization block: ``data_path/train.csv``, nested ``label2id_path``, videos under
    ``data_dict.root_dir[dataset]``. The label of a row is ``label2id[dataset][text]`` (the bare class name)."""
    path = original.data_file(block)
    classes = original.class_names(original.label2id(block), str(block["label2id_path"]))
    roots = original.root_dirs(block)
    items = _items(path, _csv_rows(path, roots), roots, classes, registry.get("localization").video_file)
    if not items:
        raise AnnotationError(path, None, "no localization entries")
    return original.OriginalTask(items, classes.tables(), [path])
