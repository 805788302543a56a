"""Pieces shared by the annotation parsers: the work item, the error type, class names, path resolution."""
from __future__ import annotations

import ast
import csv
import dataclasses
import json
import os
from typing import Any, Iterator, Sequence


class AnnotationError(ValueError):
    """A malformed annotation. ``str(err)`` is ``"FILE:LINE: message"`` (``"FILE: message"`` without a line)."""

    def __init__(self, path, line: int | None, message: str):
        self.path, self.line, self.message = str(path), line, message
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")


@dataclasses.dataclass(frozen=True)
class Item:
    """One record to convert: where its pixels are and its task fields (schema names, plain Python values).

    ``source`` is a video file, or for image sequences (VIS) ``frame_files`` lists the frames and ``source``
    is the first one (used in error reports). ``masks`` (VIS only) holds per instance a list of per-frame
    segmentations in COCO form (RLE dict or None), decoded by the converter after resizing is known.
    """

    video_id: str
    source: str
    fields: dict[str, Any]
    dataset: str = ""
    duration: float | None = None  # from the annotation, when it gives one
    frame_files: tuple[str, ...] = ()
    masks: tuple = ()
    # Why this item cannot be converted (e.g. a VIS video without annotations, a malformed segmentation): the
    # converter lists it as skipped with this reason, with its path and dataset, and goes on.
    problem: str | None = None


@dataclasses.dataclass(frozen=True)
class ClassNames:
    """Class-name table: ``names[i]`` is class i. ``per_dataset`` holds nested label2id tables when given (then
    ``names`` is empty: a class id means something only within its dataset's table)."""

    names: tuple[str, ...]
    per_dataset: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)

    def tables(self) -> list[str] | dict[str, list[str]]:
        """The label tables for metadata.json: names by id, or per dataset ``{dataset: names by id}`` (an id
        that no class has is an empty name: that row of the label embeddings is unused)."""
        if not self.per_dataset:
            return list(self.names)
        return {ds: names_by_id(t) for ds, t in self.per_dataset.items()}

    def index(self, name: str, dataset: str = "") -> int:
        if self.per_dataset:
            table = self.per_dataset.get(dataset)
            if table is None:
                raise KeyError(f"dataset {dataset!r} not in the class table ({sorted(self.per_dataset)})")
            if name not in table:
                raise KeyError(f"class {name!r} not in the {dataset} class table")
            return table[name]
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"unknown class {name!r}") from None


def load_class_names(path) -> ClassNames:
    """Read class names: a text file (line i = class i), a ``{name: id}`` JSON (label2id.json, SSv2's
    labels.json with string ids) or a nested ``{dataset: {name: id}}`` JSON (localization/VIS)."""
    path = str(path)
    if path.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            table = json.load(f)
        if not isinstance(table, dict) or not table:
            raise AnnotationError(path, None, "class table must be a non-empty JSON object")
        if all(isinstance(v, dict) for v in table.values()):
            nested = {}
            for ds, t in table.items():
                try:
                    nested[ds] = {str(k): int(v) for k, v in t.items()}
                except (TypeError, ValueError):
                    raise AnnotationError(path, None, f"{ds}: class ids must be integers") from None
                if any(i < 0 for i in nested[ds].values()) or len(set(nested[ds].values())) != len(nested[ds]):
                    raise AnnotationError(path, None, f"{ds}: class ids must be distinct and >= 0")
            return ClassNames((), nested)
        flat = {str(k): int(v) for k, v in table.items()}
        ids = sorted(flat.values())
        if ids != list(range(len(ids))):
            raise AnnotationError(path, None, "class ids must be 0..N-1 without gaps")
        return ClassNames(tuple(sorted(flat, key=flat.get)))
    names = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            name = line.strip()
            if not name:
                raise AnnotationError(path, lineno, "empty class name")
            names.append(name)
    if len(set(names)) != len(names):
        raise AnnotationError(path, None, "duplicate class names")
    return ClassNames(tuple(names))


def names_by_id(label2id: dict[str, int]) -> list[str]:
    """``{name: id}`` -> ``names[id]`` (spec §10.22: rows ordered by id, not by JSON key order); ids without a
    class get an empty name."""
    names = [""] * (max(label2id.values()) + 1 if label2id else 0)
    for name, i in label2id.items():
        names[int(i)] = name
    return names


def read_rows(path, delimiter: str = ",") -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) for each non-blank CSV row; line numbers are physical lines (1-based)."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        start = 1
        try:
            for row in reader:
                if any(cell.strip() for cell in row):
                    yield start, row
                start = reader.line_num + 1
        except csv.Error as err:
            raise AnnotationError(path, reader.line_num, f"CSV syntax error: {err}") from None


def read_dict_rows(path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of a CSV with a header line, as dicts; checks the header has the ``required`` columns."""
    rows = read_rows(path)
    try:
        _, header = next(rows)
    except StopIteration:
        raise AnnotationError(path, 1, "empty file") from None
    header = [h.strip() for h in header]
    missing = [c for c in required if c not in header]
    if missing:
        raise AnnotationError(path, 1, f"header lacks columns {missing} (has {header})")
    for lineno, row in rows:
        if len(row) != len(header):
            raise AnnotationError(path, lineno, f"expected {len(header)} fields, got {len(row)}")
        yield lineno, dict(zip(header, row))


def read_json(path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise AnnotationError(path, err.lineno, f"invalid JSON: {err.msg}") from None


def read_jsonl(path) -> Iterator[tuple[int, dict]]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as err:
                    raise AnnotationError(path, lineno, f"invalid JSON: {err.msg}") from None


def parse_literal(text: str, path, lineno: int, what: str) -> Any:
    """A Python literal cell (caption lists, window lists), as the original loaders' ``eval``/literal_eval."""
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        raise AnnotationError(path, lineno, f"{what} is not a Python literal: {text[:60]!r}") from None


def parse_float(text: str, path, lineno: int, what: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        raise AnnotationError(path, lineno, f"{what} must be a number, got {text!r}") from None


def parse_windows(value: Any, path, lineno: int) -> list[tuple[float, float]]:
    """[[s, e], ...] (or one [s, e]) -> list of (s, e) with s <= e."""
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        value = [value]
    try:
        windows = [(float(s), float(e)) for s, e in value]
    except (TypeError, ValueError):
        raise AnnotationError(path, lineno, f"windows must be [[start, end], ...], got {value!r}") from None
    for s, e in windows:
        if not (0 <= s <= e):
            raise AnnotationError(path, lineno, f"bad window [{s}, {e}] (need 0 <= start <= end)")
    return windows


def resolve(video_root, name: str, dataset: str = "") -> str:
    """Video path. ``video_root`` a mapping ``{dataset: root}`` (the original metadata's ``root_dir``):
    exactly ``root[dataset]/name``, as the original loaders join them. A single root: ``root/dataset/name``
    when that exists (one root with a folder per dataset), else ``root/name``. A missing file is not an error
    here: the converter reports it as skipped."""
    if isinstance(video_root, dict):
        return os.path.join(video_root[dataset], name)
    if dataset:
        candidate = os.path.join(video_root, dataset, name)
        if os.path.exists(candidate):
            return candidate
    return os.path.join(video_root, name)
