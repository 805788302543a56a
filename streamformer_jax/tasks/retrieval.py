"""Video-text retrieval (spec §5.1, §6.4): the last frame's vector against every caption of the global batch."""
from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from data_pipelines.records import schema
from data_pipelines.annotations import retrieval as annotations
from data_pipelines.pipeline.builtin import BuiltinClip
from data_pipelines.pipeline.transforms import RetrievalTransform
from streamformer_jax.tasks import losses, registry
from streamformer_jax.tasks.heads import TaskHead


def retrieval_loss(x: registry.LossInputs):
    """Sigmoid loss over the [B, B] clip-caption logits; accuracy = top-1 caption is the clip's own."""
    captions = x.model.caption_embedding(x.batch, x.text)
    loss, z = losses.retrieval_loss(x.pooled[:, -1], captions, x.logit_scale, x.logit_bias)
    return loss, jnp.mean(jnp.argmax(z, -1) == jnp.arange(z.shape[0]))


def caption_counts(fields: Mapping[str, Any]) -> dict[str, int]:
    return {"captions": len(fields["captions"])}


def caption_rows(fields: Mapping[str, Any]) -> int:
    """Samples of a record: its annotation rows (records without `caption_row`: one)."""
    rows = np.asarray(fields.get("caption_row", ()), np.int64)
    return int(rows.max()) + 1 if rows.size else 1


def check_record(ex: Mapping[str, Any]) -> None:
    rows = np.asarray(ex.get("caption_row", ()), np.int64)
    if rows.size and (rows.shape != (len(ex["captions"]),) or rows.min() != 0 or np.any(np.diff(rows) < 0)
                      or np.any(np.diff(rows) > 1)):
        raise schema.SchemaError(f"{ex['video_id']!r}: caption_row must give each caption's row, 0, 1, ... in order")


def describe(fields: Mapping[str, Any], class_name) -> dict:
    rows = np.asarray(fields.get("caption_row", ()), np.int64)
    out = {"captions": list(fields["captions"])}
    if rows.size:
        out["rows"] = [[c for c, r in zip(fields["captions"], rows) if r == k] for k in range(int(rows.max()) + 1)]
    if fields.get("trim_seconds"):
        out["trim_seconds"] = float(fields["trim_seconds"])
    return out


def builtin_captions(clip: BuiltinClip) -> dict:
    return {"captions": [f"a {clip.class_name} square {clip.direction}", f"a {clip.class_name} block slides across"]}


RETRIEVAL = registry.TaskSpec(
    name="retrieval", official_name="TaskRetrieval", text_kind=registry.CAPTIONS, record_fields=("captions",),
    optional_record_fields=("caption_row", "trim_seconds"), check_record=check_record,
    parse_annotations=annotations.parse, read_original=annotations.read_original, record_counts=caption_counts,
    record_samples=caption_rows,
    # The original's `task_retrieval.py`: LSMDC and MSVD always get ".avi" (LSMDC ids contain dots); the others
    # ".mp4" unless the id already ends with it.
    datasets={"LSMDC": registry.DatasetRule(video_suffix=".avi", always=True),
              "MSVD": registry.DatasetRule(video_suffix=".avi", always=True)},
    transform=RetrievalTransform, pipeline_defaults=dict(crop="short_side", flip=True),
    builtin_fields=builtin_captions, builtin_whole_clip=True, make_head=TaskHead, loss=retrieval_loss,
    describe=describe)
