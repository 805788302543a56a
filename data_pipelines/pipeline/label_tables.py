"""The label tables of a converted task directory (its metadata.json), in one canonical form shared by the input
pipeline (which turns a record's dataset into `dataset_id`) and the trainer (which embeds the tables).

* flat: `class_names` = names by id (Kinetics, SSv2, or a single table for every dataset);
* per dataset: `label_tables` = {dataset: names by id} (the original's nested label2id of localization and VIS;
  an empty name is an id no class has: its row takes no part in the loss). Datasets are ordered by name, and
  `dataset_id` indexes that order.
"""
from __future__ import annotations

from typing import Any, Mapping


def label_sets(meta: Mapping[str, Any]) -> list[str] | dict[str, list[str]]:
    """Names by id, or {dataset: names by id} in `dataset_order`."""
    tables = meta.get("label_tables")
    if tables:
        return {ds: list(tables[ds]) for ds in dataset_order(meta)}
    return list(meta.get("class_names", []))


def dataset_order(meta: Mapping[str, Any]) -> tuple[str, ...]:
    """The datasets of per-dataset label tables, in `dataset_id` order (empty for a flat table)."""
    return tuple(sorted(meta.get("label_tables") or ()))
