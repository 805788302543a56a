"""Temporal grounding (spec §5.1, §6.5): each frame's vector against the clip's caption, positive inside the
caption's window(s)."""
from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from data_pipelines.records import schema
from data_pipelines.annotations import grounding as annotations
from data_pipelines.pipeline.builtin import BuiltinClip
from data_pipelines.pipeline.targets import row_windows
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


def query_rows(fields: Mapping[str, Any]) -> int:
    """Samples of a record: one per query (annotation row)."""
    return len(fields["captions"])


def row_segments(spans, fields: Mapping[str, Any], label_of) -> list[dict]:
    """[{"label", "start", "end"}]: where each annotation row is positive (its relevant windows when it has
    several, else its own [start, end]); `label_of(row)` names the row."""
    out = []
    for row in range(len(np.reshape(spans, (-1, 2)))):
        for s, e in row_windows(spans, fields.get("relevant_windows", np.zeros((0, 2))),
                                fields.get("relevant_window_caption", ()), row):
            out.append({"label": label_of(row), "start": round(float(s), 6), "end": round(float(e), 6)})
    return out


def describe(fields: Mapping[str, Any], class_name) -> dict:
    return {"captions": list(fields["captions"]),
            "segments": row_segments(fields["windows"], fields, lambda row: fields["captions"][row])}


def builtin_window(clip: BuiltinClip) -> dict:
    return {"captions": [f"the {clip.class_name} square appears"], "windows": np.array([clip.seconds], np.float32)}


GROUNDING = registry.TaskSpec(
    name="grounding", official_name="TaskGrounding", text_kind=registry.CAPTIONS,
    record_fields=("captions", "windows"), optional_record_fields=("relevant_windows", "relevant_window_caption"),
    check_record=check_record, parse_annotations=annotations.parse, read_original=annotations.read_original,
    record_counts=caption_counts, record_samples=query_rows,
    # The original's `task_grounding.py`: TaCoS ids + "-cam-002.avi"; others ".mp4" unless already there.
    datasets={"TaCoS": registry.DatasetRule(video_suffix="-cam-002.avi", always=True)},
    transform=GroundingTransform, pipeline_defaults=dict(crop="short_side", flip=False),
    builtin_fields=builtin_window, make_head=TaskHead, loss=grounding_loss, describe=describe)
