"""Clip classification against label embeddings: Kinetics-400 and Something-Something v2 (spec §5.1, §6.1-§6.2).

The clip's feature is the last frame's pooled vector (it has seen the whole clip); the loss is the sigmoid loss
against every class's label embedding (`losses.classification_loss`).
"""
from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp

from data_pipelines.annotations import classification as annotations
from data_pipelines.pipeline.builtin import CLASS_NAMES, DIRECTIONS, BuiltinClip
from data_pipelines.pipeline.randaugment import ORIGINAL_VIDEO_SPEC
from data_pipelines.pipeline.transforms import KineticsTransform, SSv2Transform
from streamformer_jax.tasks import losses, registry
from streamformer_jax.tasks.heads import TaskHead
from streamformer_jax.tasks.templates import VIDEO_TEMPLATES


def classification_loss(x: registry.LossInputs):
    """Sigmoid loss of the last frame's vector against every label; accuracy = top-1 class."""
    labels = jnp.asarray(x.batch["label"], jnp.int32)
    loss, z = losses.classification_loss(x.pooled[:, -1], x.text[x.task], labels, x.logit_scale, x.logit_bias)
    return loss, jnp.mean(jnp.argmax(z, -1) == labels)


def label_counts(fields: Mapping[str, Any]) -> dict[str, int]:
    return {f"label/{fields['label']}": 1}


def describe(fields: Mapping[str, Any], class_name) -> dict:
    return {"labels": [class_name(int(fields["label"]), fields.get("dataset", ""))]}


def _spec(name: str, official_name: str, transform: type, flip: bool, builtin_label, class_names):
    return registry.TaskSpec(
        name=name, official_name=official_name, text_kind=registry.LABELS, record_fields=("label",),
        parse_annotations=annotations.parse_list, read_original=annotations.read_original, record_counts=label_counts,
        transform=transform, pipeline_defaults=dict(crop="rrc", flip=flip, randaugment=ORIGINAL_VIDEO_SPEC),
        builtin_fields=lambda clip: {"label": builtin_label(clip)}, builtin_class_names=class_names,
        builtin_whole_clip=True, make_head=TaskHead, loss=classification_loss, templates=VIDEO_TEMPLATES,
        describe=describe)


def _colour(clip: BuiltinClip) -> int:
    return clip.cls


def _direction(clip: BuiltinClip) -> int:
    return int(clip.reverse)


KINETICS = _spec("kinetics", "Kinetics", KineticsTransform, True, _colour, CLASS_NAMES)
# Something-Something's labels are direction-sensitive ("pushing left to right"): never flipped; the built-in
# clips' label is the square's direction.
SSV2 = _spec("ssv2", "SSV2", SSv2Transform, False, _direction, DIRECTIONS)
