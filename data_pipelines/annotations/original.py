"""The original metadata file (`scripts/dataset_metadata/all.yaml` of the original code) and what each task's block
of it names, read as the original loaders read them (`python -m data_pipelines.convert from-metadata`).

    datasets:
      <Task>:                  # Kinetics, SSV2, TaskRetrieval, TaskGrounding, TaskLocalization, TaskVIS
        train:
          data_path: DIR       # holds train.csv (TaskVIS: train_<Dataset>.json files)
          prefix: DIR          # Kinetics/SSV2: joined to the first CSV column
          label2id_path: FILE  # {name: id}, or {dataset: {name: id}} (TaskLocalization, TaskVIS)
          split: ","           # Kinetics/SSV2: the CSV delimiter
          data_dict:
            root_dir: {Dataset: DIR, ...}     # the per-dataset video (or frame) roots
            trimmed30s: {Dataset: bool, ...}  # TaskRetrieval: sample only the first 30 s

Each task's reader (`TaskSpec.read_original`) returns an `OriginalTask`: the items to convert (one per video or
image, each carrying its annotation rows) and the label tables, ordered by id.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

from .common import AnnotationError, ClassNames, Item, names_by_id

TRAIN_SPLIT = "train"


@dataclasses.dataclass(frozen=True)
class OriginalTask:
    """One task of the original metadata: its items, its label tables, and the annotation files read.

    ``labels``: names by id (flat label2id), ``{dataset: names by id}`` (nested label2id), or None (caption
    tasks)."""

    items: list[Item]
    labels: list[str] | dict[str, list[str]] | None
    annotations: list[str]


def load_metadata(path) -> dict[str, dict]:
    """``{task key: its train block}`` in the file's order (the original iterates the yaml mapping in order)."""
    import yaml  # PyYAML: only this reader needs it

    path = str(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as err:
        line = getattr(getattr(err, "problem_mark", None), "line", None)
        raise AnnotationError(path, None if line is None else line + 1, f"invalid YAML: {err}") from None
    datasets = data.get("datasets") if isinstance(data, dict) else None
    if not isinstance(datasets, dict) or not datasets:
        raise AnnotationError(path, None, "expected the original metadata format: a 'datasets' mapping of tasks")
    out = {}
    for key, block in datasets.items():
        if not isinstance(block, dict):
            raise AnnotationError(path, None, f"datasets.{key} must be a mapping of splits")
        if TRAIN_SPLIT in block:
            if not isinstance(block[TRAIN_SPLIT], dict):
                raise AnnotationError(path, None, f"datasets.{key}.{TRAIN_SPLIT} must be a mapping")
            out[str(key)] = {**block[TRAIN_SPLIT], "_metadata": path, "_key": str(key)}
    return out


def where(block: Mapping[str, Any]) -> str:
    """``all.yaml: datasets.<Task>.train`` for error messages."""
    return f"datasets.{block.get('_key', '?')}.{TRAIN_SPLIT}"


def required(block: Mapping[str, Any], key: str):
    value = block.get(key)
    if value in (None, ""):
        raise AnnotationError(block.get("_metadata", "metadata"), None, f"{where(block)} lacks '{key}'")
    return value


def data_file(block: Mapping[str, Any], name: str = "train.csv") -> str:
    path = os.path.join(str(required(block, "data_path")), name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such annotation file ({where(block)}.data_path)")
    return path


def root_dirs(block: Mapping[str, Any]) -> dict[str, str]:
    roots = (block.get("data_dict") or {}).get("root_dir")
    if not isinstance(roots, dict) or not roots:
        raise AnnotationError(block.get("_metadata", "metadata"), None, f"{where(block)} lacks data_dict.root_dir")
    return {str(k): str(v) for k, v in roots.items()}


def dataset_flags(block: Mapping[str, Any], key: str) -> dict[str, bool]:
    """A per-dataset boolean of ``data_dict`` (e.g. ``trimmed30s``); absent datasets are False."""
    flags = (block.get("data_dict") or {}).get(key) or {}
    return {str(k): bool(v) for k, v in flags.items()}


def label2id(block: Mapping[str, Any]) -> dict:
    path = str(required(block, "label2id_path"))
    try:
        with open(path, encoding="utf-8") as f:
            table = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such label2id file ({where(block)}.label2id_path)") from None
    except json.JSONDecodeError as err:
        raise AnnotationError(path, err.lineno, f"invalid JSON: {err.msg}") from None
    if not isinstance(table, dict) or not table:
        raise AnnotationError(path, None, "label2id must be a non-empty JSON object")
    return table


def class_names(table: dict, path: str) -> ClassNames:
    """A label2id dict as `ClassNames` (flat ids as they are, gaps allowed; nested per dataset)."""
    if all(isinstance(v, dict) for v in table.values()):
        return ClassNames((), {str(ds): {str(k): int(v) for k, v in t.items()} for ds, t in table.items()})
    try:
        flat = {str(k): int(v) for k, v in table.items()}
    except (TypeError, ValueError):
        raise AnnotationError(path, None, "label2id values must be integer ids") from None
    return ClassNames(tuple(names_by_id(flat)), {})


def check_root(roots: Mapping[str, str], dataset: str, path, line) -> None:
    if dataset not in roots:
        raise AnnotationError(path, line, f"dataset {dataset!r} has no data_dict.root_dir entry "
                                          f"(has {sorted(roots)})")
