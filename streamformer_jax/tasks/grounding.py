"""Temporal grounding (spec §5.1, §6.5): each frame's vector against the clip's caption, positive inside the
caption's window(s)."""
from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from data_pipelines.records import schema
from data_pipelines.annotations import grounding as annotations
from data_pipelines.pipeline.builtin import BuiltinClip
from data_pipelines.pipeline.transforms import GroundingTransform
from streamformer_jax.tasks import losses, registry
from streamformer_jax.tasks.heads import TaskHead
from streamformer_jax.tasks.retrieval import caption_counts


def grounding_loss(x: registry.LossInputs):
    """Per-frame sigmoid loss against the own caption; accuracy = the sign of each frame's logit."""
    labels = jnp.asarray(x.batch["label"], jnp.float32)
    captions = x.model.caption_embedding(x.batch, x.text)
    loss, z = losses.grounding_loss(x.pooled, captions, labels, x.logit_scale, x.logit_bias)
    return loss, jnp.mean((z > 0) == (labels > 0.5))


def check_record(ex: Mapping[str, Any]) -> None:
    if len(ex["captions"]) != len(np.reshape(ex["windows"], (-1, 2))):
        raise schema.SchemaError(f"{ex['video_id']!r}: one window per caption required")


def builtin_window(clip: BuiltinClip) -> dict:
    return {"captions": [f"the {clip.class_name} square appears"], "windows": np.array([clip.seconds], np.float32)}


GROUNDING = registry.TaskSpec(
    name="grounding", official_name="TaskGrounding", text_kind=registry.CAPTIONS,
    record_fields=("captions", "windows"), optional_record_fields=("relevant_windows", "relevant_window_caption"),
    check_record=check_record, parse_annotations=annotations.parse, record_counts=caption_counts,
    datasets={"TaCoS": registry.DatasetRule(video_suffix="-cam-002.avi")},
    transform=GroundingTransform, pipeline_defaults=dict(crop="short_side", flip=False),
    builtin_fields=builtin_window, make_head=TaskHead, loss=grounding_loss)
