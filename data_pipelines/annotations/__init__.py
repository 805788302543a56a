"""Annotation parsers: each turns one annotation file into a list of :class:`Item` (one per record).

Parsers do no video I/O; a missing video becomes a "skipped" entry at conversion time, not an error here.
Malformed annotations raise :class:`AnnotationError` naming the file (and the line when it has lines).
"""
from __future__ import annotations

from streamformer_jax.tasks import registry

from .common import AnnotationError, ClassNames, Item, load_class_names
from .original import OriginalTask, load_metadata

__all__ = ["AnnotationError", "ClassNames", "Item", "OriginalTask", "load_class_names", "load_metadata",
           "parse_annotations", "class_names_for"]


def parse_annotations(task: str, path, video_root, classes: ClassNames | None = None,
                      **options) -> list[Item]:
    """The task's parser (`TaskSpec.parse_annotations`). ``options``: ``subset``/``dataset`` for localization
    JSON (parsers ignore options they do not use)."""
    spec = registry.get(task)
    return spec.parse_annotations(path, video_root, classes, video_file=spec.video_file, task=task, **options)


def class_names_for(task: str, path, classes: ClassNames | None, **options) -> list[str] | dict[str, list[str]]:
    """The label table(s) to record in metadata.json: names by id, or ``{dataset: names by id}`` for per-dataset
    tables (nested label2id); empty for caption tasks."""
    if classes is not None:
        return classes.tables()
    spec = registry.get(task)
    if spec.annotation_class_names is None:
        return []
    names = spec.annotation_class_names(path, **options)
    return {k: list(v) for k, v in names.items()} if isinstance(names, dict) else list(names)
