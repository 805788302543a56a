"""Annotation parsers: each turns one annotation file into a list of :class:`Item` (one per record).

Parsers do no video I/O; a missing video becomes a "skipped" entry at conversion time, not an error here.
Malformed annotations raise :class:`AnnotationError` naming the file (and the line when it has lines).
"""
from __future__ import annotations

from streamformer_jax.tasks import registry

from .common import AnnotationError, ClassNames, Item, load_class_names

__all__ = ["AnnotationError", "ClassNames", "Item", "load_class_names", "parse_annotations", "class_names_for"]


def parse_annotations(task: str, path, video_root, classes: ClassNames | None = None,
                      **options) -> list[Item]:
    """The task's parser (`TaskSpec.parse_annotations`). ``options``: ``subset``/``dataset`` for localization
    JSON (parsers ignore options they do not use)."""
    spec = registry.get(task)
    return spec.parse_annotations(path, video_root, classes, video_file=spec.video_file, task=task, **options)


def class_names_for(task: str, path, classes: ClassNames | None, **options) -> list[str]:
    """Class names to record in metadata.json (empty for caption tasks)."""
    if classes is not None:
        return list(classes.names)
    spec = registry.get(task)
    if spec.annotation_class_names is None:
        return []
    return list(spec.annotation_class_names(path, **options))
