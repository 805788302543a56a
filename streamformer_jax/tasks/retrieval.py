"""Video-text retrieval (spec §5.1, §6.4): the last frame's vector against every caption of the global batch."""
from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp

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


def builtin_captions(clip: BuiltinClip) -> dict:
    return {"captions": [f"a {clip.class_name} square {clip.direction}", f"a {clip.class_name} block slides across"]}


RETRIEVAL = registry.TaskSpec(
    name="retrieval", official_name="TaskRetrieval", text_kind=registry.CAPTIONS, record_fields=("captions",),
    parse_annotations=annotations.parse, record_counts=caption_counts,
    # A video id with a suffix is the file name; LSMDC and MSVD store .avi files.
    keep_video_suffix=True,
    datasets={"LSMDC": registry.DatasetRule(video_suffix=".avi"), "MSVD": registry.DatasetRule(video_suffix=".avi")},
    transform=RetrievalTransform, pipeline_defaults=dict(crop="short_side", flip=True),
    builtin_fields=builtin_captions, builtin_whole_clip=True, make_head=TaskHead, loss=retrieval_loss)
