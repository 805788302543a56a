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
    if len(np.reshape(ex["segments"], (-1, 2))) != len(ex["segment_labels"]):
        raise schema.SchemaError(f"{ex['video_id']!r}: one label per segment required")


def segment_counts(fields: Mapping[str, Any]) -> dict[str, int]:
    return {"segments": len(fields["segments"]), **collections.Counter(f"label/{x}" for x in fields["segment_labels"])}


def builtin_segment(clip: BuiltinClip) -> dict:
    return {"segments": np.array([clip.seconds], np.float32), "segment_labels": np.array([clip.cls], np.int32)}


LOCALIZATION = registry.TaskSpec(
    name="localization", official_name="TaskLocalization", text_kind=registry.LABELS,
    record_fields=("segments", "segment_labels"), check_record=check_record,
    parse_annotations=annotations.parse, annotation_class_names=annotations.class_names_of,
    record_counts=segment_counts, datasets={"HACS": registry.DatasetRule(video_prefix="v_")},
    transform=LocalizationTransform, pipeline_defaults=dict(crop="short_side", flip=False),
    builtin_fields=builtin_segment, builtin_class_names=CLASS_NAMES, make_head=TaskHead, loss=localization_loss,
    templates=VIDEO_TEMPLATES)
