"""Annotation parsers: each turns one annotation file into a list of :class:`Item` (one per record).

Parsers do no video I/O; a missing video becomes a "skipped" entry at conversion time, not an error here.
Malformed annotations raise :class:`AnnotationError` naming the file (and the line when it has lines).
"""
from __future__ import annotations

from . import classification, grounding, localization, retrieval, vis
from .common import AnnotationError, ClassNames, Item, load_class_names

__all__ = ["AnnotationError", "ClassNames", "Item", "load_class_names", "parse_annotations", "class_names_for"]


def parse_annotations(task: str, path, video_root, classes: ClassNames | None = None,
                      **options) -> list[Item]:
    """Dispatch on the task. ``options``: ``subset``/``dataset`` for localization JSON."""
    if task in ("kinetics", "ssv2"):
        return classification.parse_list(path, video_root, classes, task)
    if task == "retrieval":
        return retrieval.parse(path, video_root)
    if task == "grounding":
        return grounding.parse(path, video_root)
    if task == "localization":
        return localization.parse(path, video_root, classes, subset=options.get("subset"),
                                  dataset=options.get("dataset") or "")
    if task == "vis":
        return vis.parse(path, video_root, classes)
    raise ValueError(f"unknown task {task!r}")


def class_names_for(task: str, path, classes: ClassNames | None, **options) -> list[str]:
    """Class names to record in metadata.json (empty for caption tasks)."""
    if classes is not None:
        return list(classes.names)
    if task == "localization":
        return list(localization.class_names_of(path, options.get("subset")))
    if task == "vis":
        return list(vis.category_names(path))
    return []
