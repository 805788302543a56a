"""Kinetics / SSv2 classification lists.

Accepted annotation files:

* ``path,label`` CSV (the original's ``train.csv``; a header line is allowed): ``label`` is a class index or a
  class name (looked up in ``--class-names``). Quoted fields are allowed (SSv2 label texts contain commas).
* ``path label`` whitespace-separated lists (VideoMAE/UMT style, ``id label`` for SSv2); the label is the last
  field, so paths may contain spaces.
* SSv2's original JSON list (``something-something-v2-train.json``: ``[{"id", "template", ...}]``) with
  ``labels.json`` as class names; the video is ``<id>.webm``.
"""
from __future__ import annotations

import os

from .common import AnnotationError, ClassNames, Item, read_json, read_rows, resolve
from . import original


def _label(text: str, classes: ClassNames | None, path, lineno: int) -> int:
    text = text.strip()
    if text.lstrip("-").isdigit():
        label = int(text)
        if label < 0 or (classes is not None and label >= len(classes.names)):
            n = len(classes.names) if classes else "?"
            raise AnnotationError(path, lineno, f"label index {label} out of range [0, {n})")
        return label
    if classes is None:
        raise AnnotationError(path, lineno, f"class name {text!r} needs --class-names")
    try:
        return classes.index(text)
    except KeyError as err:
        raise AnnotationError(path, lineno, str(err.args[0])) from None


def _is_header(fields: list[str], classes: ClassNames | None) -> bool:
    """A first row like ``path,label``: a non-numeric, unknown label and a first field without a file suffix
    (so a first *data* row with a misspelt class is reported, not silently dropped as a header)."""
    label = fields[-1].strip()
    if label.lstrip("-").isdigit() or os.path.splitext(fields[0].strip())[1]:
        return False
    return classes is None or label not in classes.names


def _split(line_fields: list[str]) -> list[str]:
    """A row without commas is a whitespace list: split off the last field (the label)."""
    if len(line_fields) == 1:
        return line_fields[0].strip().rsplit(None, 1)
    return line_fields


def parse_list(path, video_root, classes: ClassNames | None = None, *, task: str = "classification",
               **options) -> list[Item]:
    """Items of a classification list (``options`` are other tasks' parser options, unused here)."""
    if str(path).endswith(".json"):
        return _parse_ssv2_json(path, video_root, classes, task)
    items = []
    for n, (lineno, raw) in enumerate(read_rows(path)):
        fields = _split(raw)
        if n == 0 and len(fields) == 2 and _is_header(fields, classes):
            continue
        if len(fields) != 2 or not fields[0].strip():
            raise AnnotationError(path, lineno, f"expected 'path,label' (or 'path label'), got {raw!r}")
        rel = fields[0].strip()
        label = _label(fields[1], classes, path, lineno)
        items.append(Item(video_id=os.path.splitext(rel)[0], source=resolve(video_root, rel),
                          fields={"label": label}))
    if not items:
        raise AnnotationError(path, None, f"no {task} entries")
    return items


def _parse_ssv2_json(path, video_root, classes: ClassNames | None, task: str) -> list[Item]:
    data = read_json(path)
    if not isinstance(data, list):
        raise AnnotationError(path, None, "SSv2 JSON must be a list of {id, template}")
    if classes is None:
        raise AnnotationError(path, None, "SSv2 JSON needs --class-names (labels.json)")
    items = []
    for i, entry in enumerate(data):
        try:
            vid = str(entry["id"])
            # The official labels.json keys are the templates with the brackets removed.
            name = entry["template"].replace("[", "").replace("]", "")
        except (KeyError, TypeError, AttributeError):
            raise AnnotationError(path, None, f"entry {i} lacks 'id'/'template'") from None
        try:
            label = classes.index(name)
        except KeyError as err:
            raise AnnotationError(path, None, f"entry {i}: {err.args[0]}") from None
        items.append(Item(video_id=vid, source=resolve(video_root, vid + ".webm"), fields={"label": label}))
    return items


def read_original(block) -> original.OriginalTask:
    """Kinetics / SSV2 block of the original metadata: ``data_path/train.csv`` read as ``pandas.read_csv(header=None,
    delimiter=split)``: one sample per row, video ``os.path.join(prefix, column 0)``, label ``label2id[column 1]``."""
    path = original.data_file(block)
    table = original.label2id(block)
    classes = original.class_names(table, str(block["label2id_path"]))
    prefix = str(block.get("prefix") or "")
    items = []
    for lineno, row in read_rows(path, delimiter=str(block.get("split") or ",")):
        if len(row) < 2 or not row[0].strip():
            raise AnnotationError(path, lineno, f"expected 'path{block.get('split') or ','}label', got {row!r}")
        name = row[1]
        if name not in table:
            raise AnnotationError(path, lineno, f"class {name!r} is not in {block['label2id_path']}")
        items.append(Item(video_id=os.path.splitext(row[0])[0], source=os.path.join(prefix, row[0]),
                          fields={"label": int(table[name])}))
    if not items:
        raise AnnotationError(path, None, "no rows")
    return original.OriginalTask(items, classes.tables(), [path])
