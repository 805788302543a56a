"""Video instance segmentation as dense classification (spec §5.1, §6.7): the patch tokens, through the VIS
head's projection, against the label embeddings, per pixel of the category mask."""
from __future__ import annotations

import collections
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from data_pipelines.records import schema
from data_pipelines.annotations import vis as annotations
from data_pipelines.pipeline.builtin import CLASS_NAMES, BuiltinClip
from data_pipelines.pipeline.transforms import VISTransform
from streamformer_jax.key_rules import layer_norm, linear
from streamformer_jax.tasks import losses, registry
from streamformer_jax.tasks.heads import VISHead
from streamformer_jax.tasks.templates import SCENE_TEMPLATES

# The original's `task_heads.TaskVIS.*` projection tensors (the rule engine's tables, names relative to the head).
OFFICIAL_HEAD_RULES = (*linear("w_v", "w_v"), *linear("v_proj", "v_proj"),
                       *layer_norm("head_layernorm", "head_layernorm"), *linear("head_mlp.fc1", "head_mlp.fc1"),
                       *linear("head_mlp.fc2", "head_mlp.fc2"))


def vis_loss(x: registry.LossInputs):
    """Per-pixel cross entropy of the projected patch tokens, on logits upsampled to the mask's resolution (the
    input resolution by default, as the original; patch resolution with the data option
    `mask_resolution="patch"`), one frame at a time; accuracy over the valid pixels, among the classes scored
    for each sample."""
    tokens = x.features["last_hidden_state"]  # [B, T, N, D]
    video = x.batch["video"]
    gh, gw = x.model.backbone.embeddings.patch_grid(video.shape[2], video.shape[3])
    patches = x.head.project(tokens).reshape(*tokens.shape[:2], gh, gw, tokens.shape[-1])
    mask = jnp.asarray(x.batch["mask"], jnp.int32)
    return losses.vis_loss_by_frame(patches, x.text[x.task], mask, x.logit_scale, x.logit_bias,
                                    valid=x.text.get(f"{x.task}_valid"), dataset_id=x.batch.get("dataset_id"),
                                    rng=x.rng, max_classes=x.max_vis_classes)


def check_record(ex: Mapping[str, Any]) -> None:
    n_inst, n = len(ex["categories"]), len(ex["frames"])
    lengths = np.asarray(ex["mask_rle_lengths"], np.int64)
    if lengths.shape != (n_inst * n,) or lengths.sum() != len(ex["mask_rle_counts"]):
        raise schema.SchemaError(f"{ex['video_id']!r}: mask_rle_lengths must have instances*frames entries "
                                 "summing to len(mask_rle_counts)")


def instance_counts(fields: Mapping[str, Any]) -> dict[str, int]:
    return {"instances": len(fields["categories"]), **collections.Counter(f"label/{x}" for x in fields["categories"])}


def describe(fields: Mapping[str, Any], class_name) -> dict:
    ds = fields.get("dataset", "")
    return {"categories": [class_name(int(c), ds) for c in fields["categories"]]}


def builtin_instance(clip: BuiltinClip) -> dict:
    lengths, counts = schema.encode_masks(clip.masks())
    return {"categories": np.array([clip.cls], np.int32), "mask_rle_lengths": lengths, "mask_rle_counts": counts}


VIS = registry.TaskSpec(
    name="vis", official_name="TaskVIS", text_kind=registry.LABELS,
    record_fields=("categories", "mask_rle_lengths", "mask_rle_counts"), check_record=check_record,
    parse_annotations=annotations.parse, read_original=annotations.read_original,
    annotation_class_names=annotations.category_names, record_counts=instance_counts, per_dataset_labels=True, transform=VISTransform, pipeline_defaults=dict(crop="short_side", flip=True),
    builtin_fields=builtin_instance, builtin_class_names=CLASS_NAMES, make_head=VISHead, loss=vis_loss,
    templates=SCENE_TEMPLATES, official_head_rules=OFFICIAL_HEAD_RULES, describe=describe)
