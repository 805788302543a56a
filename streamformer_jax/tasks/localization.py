"""Temporal action localization (spec §5.1, §6.6): each frame's vector against the label embeddings of the
sample's dataset, positive at the frame's action class."""
from __future__ import annotations

import collections
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from data_pipelines.records import schema
from data_pipelines.annotations import localization as annotations
from data_pipelines.pipeline.builtin import CLASS_NAMES, BuiltinClip
from data_pipelines.pipeline.transforms import LocalizationTransform
from streamformer_jax.tasks import losses, registry
from streamformer_jax.tasks.grounding import row_segments
from streamformer_jax.tasks.heads import TaskHead
from streamformer_jax.tasks.templates import VIDEO_TEMPLATES


def localization_loss(x: registry.LossInputs):
    """Per-frame sigmoid loss over the sample's label set; accuracy over the foreground frames."""
    labels = jnp.asarray(x.batch["label"], jnp.int32)
    loss, z = losses.localization_loss(x.pooled, x.text[x.task], labels, x.logit_scale, x.logit_bias,
                                       valid=x.text.get(f"{x.task}_valid"), dataset_id=x.batch.get("dataset_id"))
    fg = labels >= 0
    return loss, jnp.sum((jnp.argmax(z, -1) == labels) & fg) / jnp.maximum(jnp.sum(fg), 1)


def check_record(ex: Mapping[str, Any]) -> None:
    k = len(np.reshape(ex["segments"], (-1, 2)))
    if k != len(ex["segment_labels"]):
        raise schema.SchemaError(f"{ex['video_id']!r}: one label per segment (annotation row) required")
    owner = np.asarray(ex.get("relevant_window_caption", ()), np.int64)
    if len(owner) != len(np.reshape(ex.get("relevant_windows", np.zeros((0, 2))), (-1, 2))) or np.any(owner >= k) \
            or np.any(owner < 0):
        raise schema.SchemaError(f"{ex['video_id']!r}: relevant_window_caption must name a row of each relevant "
                                 "window")


def segment_counts(fields: Mapping[str, Any]) -> dict[str, int]:
    return {"segments": len(fields["segments"]), **collections.Counter(f"label/{x}" for x in fields["segment_labels"])}


def segment_rows(fields: Mapping[str, Any]) -> int:
    """Samples of a record: one per (video, class) annotation row."""
    return len(fields["segment_labels"])


def describe(fields: Mapping[str, Any], class_name) -> dict:
    ds = fields.get("dataset", "")
    names = [class_name(int(c), ds) for c in fields["segment_labels"]]
    return {"labels": names, "segments": row_segments(fields["segments"], fields, lambda row: names[row])}


def builtin_segment(clip: BuiltinClip) -> dict:
    return {"segments": np.array([clip.seconds], np.float32), "segment_labels": np.array([clip.cls], np.int32)}


LOCALIZATION = registry.TaskSpec(
    name="localization", official_name="TaskLocalization", text_kind=registry.LABELS,
    record_fields=("segments", "segment_labels"), optional_record_fields=("relevant_windows", "relevant_window_caption"),
    check_record=check_record, parse_annotations=annotations.parse, read_original=annotations.read_original,
    annotation_class_names=annotations.class_names_of, record_counts=segment_counts, record_samples=segment_rows,
    per_dataset_labels=True,
    # The original's `task_localization.py`: HACS "v_" + id, then ".mp4" unless already there; TaCoS
    # "-cam-002.avi"; others ".mp4" unless already there.
    datasets={"HACS": registry.DatasetRule(video_prefix="v_"),
              "TaCoS": registry.DatasetRule(video_suffix="-cam-002.avi", always=True)},
    transform=LocalizationTransform, pipeline_defaults=dict(crop="short_side", flip=False),
    builtin_fields=builtin_segment, builtin_class_names=CLASS_NAMES, make_head=TaskHead, loss=localization_loss,
    templates=VIDEO_TEMPLATES, describe=describe)
