"""The multitask pretraining model: the backbone, one head per registered task, the frozen text tower, and the
per-task losses (spec §5.1-§5.3, §1.9). What differs between tasks (head, loss, templates, official head names)
is each task's `TaskSpec` (`streamformer_jax.tasks.registry`); this module only dispatches on the registry.

Public API (stable; the trainer builds on it)
=============================================

Tasks: `registry.names()` ("kinetics", "ssv2", "retrieval", "grounding", "localization", "vis" and any task
registered later; each spec's `official_name` is the original's `Kinetics`, `SSV2`, `TaskRetrieval`, ...).

``MultiTaskModel(backbone_config, tasks, *, text_config=None, init_logit_scale=log(10), init_logit_bias=-10.,
                 rngs=0, backbone=None, text_encoder=None)``  (an `nnx.Module`)
    .backbone      StreamFormer (`streamformer_jax.models`), flat names `backbone.<our backbone names>`
    .heads         nnx.Dict task -> the spec's head (`make_head`): `heads.<task>.logit_scale`,
                   `heads.<task>.logit_bias` (0-dim); `heads.vis` is a VISHead that adds `w_v`, `v_proj`,
                   `head_layernorm`, `head_mlp` (initialised from the backbone's MAP head: value rows, out-proj,
                   LN, MLP; `init_from_backbone`)
    .text_encoder  frozen SigLIP text tower (`streamformer_jax.text.SiglipTextModel`) or None;
                   flat names `text_encoder.<...>`. Needed only to encode captions inside the step.
    .tasks         tuple of task names.
  `rngs`: an int seed or `HostRngs` (host-side NumPy init) or None (zeros; for abstract models).
  The original wrapper's own `logit_scale`/`logit_bias` are dead parameters (spec §10.10) and are not kept.

``MultiTaskModel.from_pretrained(path, tasks, *, text=None, lora_rank=32, num_frames=16, seed=0, ...)``
    backbone from a SigLIP HF dir (spec §4 import, text tower + logit scale/bias from it), from our checkpoint
    or from an official backbone dir (`streamformer_jax.checkpoint.load_any`; its `pretrain_extras.safetensors`,
    if any, supplies the text tower, the per-head logit scale/bias and the VIS projection of an official
    pretraining checkpoint). `text`: a text-tower source overriding that (see `text.load_text_model`).
``model.load_backbone_params(flat)``: replace the backbone with flat backbone params (`load_any` output).
`param_tree.flat_params(model)` -> {name: array} (all nnx.Params, dotted names as above).
``model.caption_embedding(batch, text)``: the captions of a caption task's batch (see below), [B, D].

``task_loss(model, task, batch, text, *, rng=None, max_vis_classes=100) -> (loss f32[], metrics {str: f32[]})``
    Pure and jit-able (call it inside `nnx.jit` / `nnx.value_and_grad` or on a merged model); `task` is static.
    = `head_loss(model, task, backbone_features(model, batch["video"]), batch, text, ...)`: the two halves are
    public too (e.g. to share one backbone pass between several head losses). `head_loss` calls the task's
    `TaskSpec.loss`.
    batch (global arrays):
      "video"        uint8 [B, T, H, W, 3] (normalised inside to SigLIP's [-1, 1]) or float (already normalised)
      kinetics/ssv2  "label" int32 [B]
      retrieval      captions via text["caption_embedding"] or batch["caption_ids"] (see below)
      grounding      "label" float32 [B, T] (1 inside the window) + captions as retrieval
      localization   "label" int32 [B, T] (-1 background); "dataset_id" int32 [B] when per-dataset label sets
      vis            "mask" int32 [B, T, h, w] (-1 ignored; any resolution, logits are bilinearly resized to
                     it); "dataset_id" int32 [B] when per-dataset label sets
      "caption_ids"  int32 [B, 64] (SigLIP tokenizer output) - used when text has no "caption_embedding";
                     encoded by model.text_encoder under stop_gradient
    text (arrays, usually the same every step; build once with `build_label_embeddings`):
      "kinetics", "ssv2"               [C, D] label embeddings (mean of normalised template embeddings)
      "localization", "vis"            [C, D], or [K, C, D] per dataset + "<task>_valid" bool [K, C]
      "caption_embedding"              optional [B, D] precomputed caption embeddings (retrieval/grounding)
    rng: a PRNG key, required for VIS when a label set has more than `max_vis_classes` classes (the seeded
      replacement of the original's Python `random` negative sampling); e.g. `jax.random.fold_in(key, step)`.
    Retrieval uses every caption of the global batch as negatives (the original's all-gather / ring exchange
    is implicit under GSPMD; see `losses.retrieval_loss`). Metrics: "loss", "logit_scale", "logit_bias" and a
    task accuracy ("accuracy": top-1 class / caption, frame sign for grounding, foreground frames for
    localization, valid pixels for VIS).

``build_label_embeddings(text_model, tokenizer, class_names) -> (text dict, {task: [dataset names]})``
    class_names: {task: [names ordered by id] | {dataset: [names ordered by id]}} (an empty name: an id without a
    class, an invalid row); templates by task (`TaskSpec.templates`: 28 VIDEO_TEMPLATES, VIS "{}"). `class_names_by_id(label2id)` orders a
    (possibly nested) label2id dict by id (spec §10.22). `dataset_ids(names, datasets)` -> int32 [B] (host).

Trainable and weight-decay groups of these parameters: `streamformer_jax.train.param_groups`.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from streamformer_jax.checkpoint import is_checkpoint, load_any
from streamformer_jax.convert.pretrain import read_extras
from streamformer_jax.convert.siglip import import_siglip, is_siglip_dir
from streamformer_jax.key_rules import Rule, to_ours
from streamformer_jax.models.config import StreamFormerConfig
from streamformer_jax.models.layers import HostRngs
from streamformer_jax.models.params import model_from_flat_params
from streamformer_jax.models.streamformer import StreamFormer, model_pixels
from streamformer_jax.param_tree import flat_variables, shapes
from streamformer_jax.tasks import losses, registry
from streamformer_jax.tasks.heads import DEFAULT_LOGIT_BIAS, DEFAULT_LOGIT_SCALE
from streamformer_jax.text.embeddings import compute_label_embeddings
from streamformer_jax.text.model import (EXTRAS_PREFIX, SiglipTextConfig, SiglipTextModel, load_text_model,
                                         text_from_state)


class MultiTaskModel(nnx.Module):
    """StreamFormer backbone + per-task heads (+ the frozen text tower); see the module docstring."""

    def __init__(self, backbone_config: StreamFormerConfig, tasks: Sequence[str], *,
                 text_config: SiglipTextConfig | None = None, init_logit_scale: float = DEFAULT_LOGIT_SCALE,
                 init_logit_bias: float = DEFAULT_LOGIT_BIAS, rngs: HostRngs | int | None = 0,
                 backbone: StreamFormer | None = None, text_encoder: SiglipTextModel | None = None):
        unknown = [t for t in tasks if t not in registry.names()]
        if unknown or not tasks:
            raise ValueError(f"unknown tasks {unknown}; choose from {registry.names()}" if unknown
                             else "no tasks given")
        if isinstance(rngs, (int, np.integer)):
            rngs = HostRngs(int(rngs))
        self.config = backbone_config
        self.tasks = tuple(dict.fromkeys(tasks))
        with nnx.use_eager_sharding(False):  # placement is the trainer's job (sharding.shard_state)
            self._build(backbone_config, init_logit_scale, init_logit_bias, rngs, backbone, text_config,
                        text_encoder)

    def _build(self, backbone_config, init_logit_scale, init_logit_bias, rngs, backbone, text_config, text_encoder):
        self.backbone = backbone if backbone is not None else StreamFormer(backbone_config, rngs=rngs)
        heads = {}
        for t in self.tasks:
            heads[t] = registry.get(t).make_head(backbone_config, init_logit_scale, init_logit_bias, rngs=rngs)
            heads[t].init_from_backbone(self.backbone)
        self.heads = nnx.Dict(heads)
        if text_encoder is None and text_config is not None:
            text_encoder = SiglipTextModel(text_config, rngs=rngs)
        self.text_encoder = text_encoder

    # ---- construction from checkpoints ----
    @classmethod
    def from_pretrained(cls, path, tasks: Sequence[str], *, text=None, text_num_heads: int | None = None,
                        lora_rank: int = 32, num_frames: int = 16, seed: int = 0,
                        init_logit_scale: float | None = None, init_logit_bias: float | None = None
                        ) -> "MultiTaskModel":
        """From a SigLIP HF directory (spec §4: backbone import with `lora_rank`/`num_frames`/`seed`, text tower
        and logit scale/bias from SiglipModel), or from `checkpoint.load_any` sources (our checkpoint, an
        official backbone dir) with the official pretraining extras when present. Explicit
        `init_logit_scale/bias` override the checkpoint's values; `text` overrides its text tower."""
        p = pathlib.Path(path)
        extras: dict[str, np.ndarray] = {}
        text_config = None
        if is_siglip_dir(p):
            config, flat, extras, _ = import_siglip(p, num_frames=num_frames, lora_rank=lora_rank, seed=seed)
            if any(k.startswith(EXTRAS_PREFIX) for k in extras):
                text_config = SiglipTextConfig.from_hf_dict(json.loads((p / "config.json").read_text()))
        else:
            config, flat = load_any(p)
            got = read_extras(p) if is_checkpoint(p) else None
            if got is not None:
                stored, aliases, _ = got
                extras = {**stored, **{a: stored[c] for a, c in aliases.items() if c in stored}}
        backbone = model_from_flat_params(config, flat, f"{p} (backbone)")
        if text is not None:
            text_encoder = load_text_model(text, num_heads=text_num_heads)
        elif any(k.startswith(EXTRAS_PREFIX) for k in extras):
            text_encoder = text_from_state(extras, EXTRAS_PREFIX, text_config, text_num_heads, source=f"{p} extras")
        else:
            text_encoder = None
        scale = init_logit_scale if init_logit_scale is not None else float(
            np.asarray(extras.get("logit_scale", DEFAULT_LOGIT_SCALE)))
        bias = init_logit_bias if init_logit_bias is not None else float(
            np.asarray(extras.get("logit_bias", DEFAULT_LOGIT_BIAS)))
        model = cls(config, tasks, init_logit_scale=scale, init_logit_bias=bias, rngs=None, backbone=backbone,
                    text_encoder=text_encoder)
        head_params = official_head_params(extras, model)
        if init_logit_scale is not None or init_logit_bias is not None:
            head_params = {k: v for k, v in head_params.items() if not k.endswith(("logit_scale", "logit_bias"))}
        if head_params:
            model.set_params(head_params)
        return model

    def load_backbone_params(self, flat: Mapping[str, object], *, reinit_vis_projection: bool = False) -> None:
        """Replace the backbone parameters (names/shapes must match exactly, e.g. `load_any(path)[1]`);
        `reinit_vis_projection`: initialise the heads that copy backbone weights (VIS) from the new backbone."""
        self.backbone = model_from_flat_params(self.config, flat, "backbone parameters")
        if reinit_vis_projection:
            for head in self.heads.values():
                head.init_from_backbone(self.backbone)

    def set_params(self, flat: Mapping[str, object]) -> None:
        """Overwrite some parameters by flat name (shape-checked)."""
        state = nnx.state(self, nnx.Param)
        flat_state = flat_variables(state)
        unknown = sorted(set(flat) - set(flat_state))
        if unknown:
            raise KeyError(f"unknown parameter names: {unknown[:20]}")
        for k, value in flat.items():
            var = flat_state[k]
            value = jnp.asarray(value, jnp.float32)
            if value.shape != var.get_value().shape:
                raise ValueError(f"{k}: expected shape {var.get_value().shape}, got {value.shape}")
            var.set_value(value)
        nnx.update(self, state)

    def encode_captions(self, caption_ids: jax.Array) -> jax.Array:
        """Frozen text tower on token ids [B, L] -> float32 [B, P] (no gradient)."""
        if self.text_encoder is None:
            raise ValueError("the model has no text encoder: pass text['caption_embedding'] or build the model "
                             "with a text tower")
        return jax.lax.stop_gradient(self.text_encoder.encode(caption_ids))

    def caption_embedding(self, batch: Mapping[str, jax.Array], text: Mapping[str, jax.Array]) -> jax.Array:
        """A caption task's captions [B, D]: `text["caption_embedding"]` when given, else the frozen text tower
        on `batch["caption_ids"]` (both without gradient)."""
        if "caption_embedding" in text:
            return jax.lax.stop_gradient(jnp.asarray(text["caption_embedding"], jnp.float32))
        if "caption_ids" not in batch:
            raise ValueError("caption tasks need text['caption_embedding'] [B, D] or batch['caption_ids'] [B, L]")
        return self.encode_captions(batch["caption_ids"])


# ---- official pretraining-wrapper tensors -> head params (the rule engine; names relative to a head) ----
_SCALE_BIAS_RULES = (Rule("logit_scale", "logit_scale", "vector"), Rule("logit_bias", "logit_bias", "vector"))


def official_head_params(extras: Mapping[str, np.ndarray], model: MultiTaskModel) -> dict[str, np.ndarray]:
    """`task_heads.<Task>.*` tensors of an official pretraining checkpoint -> our head params (those present)."""
    rules = [dataclasses.replace(r, ours=f"heads.{task}.{r.ours}",
                                 theirs=f"task_heads.{registry.get(task).official_name}.{r.theirs}")
             for task in model.tasks for r in _SCALE_BIAS_RULES + tuple(registry.get(task).official_head_rules)]
    return to_ours(extras, rules, shapes(model), "the official task heads", strict=False)


# ---- the losses ----
def backbone_features(model: MultiTaskModel, video: jax.Array) -> dict[str, jax.Array]:
    """uint8 [B, T, H, W, 3] (normalised here) or already-normalised float video -> backbone outputs."""
    return model.backbone(model_pixels(video))


def task_loss(model: MultiTaskModel, task: str, batch: Mapping[str, jax.Array], text: Mapping[str, jax.Array], *,
              rng: jax.Array | None = None, max_vis_classes: int = losses.NUM_MAX_CLASSES
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One micro-batch of one task -> (scalar loss, metrics). See the module docstring for the fields."""
    if task not in model.tasks:
        raise ValueError(f"task {task!r} is not one of the model's tasks {model.tasks}")
    features = backbone_features(model, batch["video"])
    return head_loss(model, task, features, batch, text, rng=rng, max_vis_classes=max_vis_classes)


def head_loss(model: MultiTaskModel, task: str, features: Mapping[str, jax.Array], batch: Mapping[str, jax.Array],
              text: Mapping[str, jax.Array], *, rng: jax.Array | None = None,
              max_vis_classes: int = losses.NUM_MAX_CLASSES) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`task_loss` after the backbone: `features` = `backbone_features(model, batch["video"])`."""
    head = model.heads[task]
    inputs = registry.LossInputs(task=task, model=model, head=head, features=features, batch=batch, text=text,
                                 rng=rng, max_vis_classes=max_vis_classes)
    loss, acc = registry.get(task).loss(inputs)
    scale, bias = head.logit_scale[...], head.logit_bias[...]
    metrics = {"loss": loss, "logit_scale": jnp.asarray(scale, jnp.float32),
               "logit_bias": jnp.asarray(bias, jnp.float32), "accuracy": jnp.asarray(acc, jnp.float32)}
    return loss, metrics


# ---- label embeddings ----
def class_names_by_id(label2id: Mapping) -> list[str] | dict[str, list[str]]:
    """`{name: id}` -> names ordered by id (ids must be 0..C-1); nested `{dataset: {name: id}}` -> per dataset.
    The original builds rows in JSON key order but indexes them by id (spec §10.22); this orders by id."""
    if label2id and all(isinstance(v, Mapping) for v in label2id.values()):
        return {ds: class_names_by_id(m) for ds, m in label2id.items()}
    ids = sorted(int(i) for i in label2id.values())
    if ids != list(range(len(ids))):
        raise ValueError(f"label ids must be exactly 0..{len(ids) - 1}; got {ids[:10]}...")
    names = [""] * len(ids)
    for name, i in label2id.items():
        names[int(i)] = name
    return names


def build_label_embeddings(text_model: SiglipTextModel, tokenizer, class_names: Mapping, *,
                           batch_size: int = 256) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """{task: names | {dataset: names}} -> (text dict for `task_loss`, {task: dataset order} for per-dataset
    tasks). Templates from each task's `TaskSpec.templates`. Per-dataset sets are padded to one [K, C, D] table
    with "<task>_valid" [K, C]."""
    text, datasets = {}, {}
    for task, names in class_names.items():
        templates = registry.get(task).templates
        if isinstance(names, Mapping):
            # One padded table; an empty name (an id no class has) and the padding are invalid rows.
            names = {ds: list(n) for ds, n in names.items()}
            present = [(k, i, name) for k, n in enumerate(names.values()) for i, name in enumerate(n) if name]
            if not present:
                raise ValueError(f"task {task!r}: its label tables have no class names")
            emb = compute_label_embeddings(text_model, tokenizer, [name for *_, name in present], templates,
                                           batch_size=batch_size)
            cmax = max(len(n) for n in names.values())
            table = np.zeros((len(names), cmax, emb.shape[1]), np.float32)
            valid = np.zeros((len(names), cmax), bool)
            for (k, i, _), e in zip(present, emb):
                table[k, i], valid[k, i] = e, True
            text[task], text[f"{task}_valid"], datasets[task] = table, valid, list(names)
        else:
            text[task] = compute_label_embeddings(text_model, tokenizer, list(names), templates,
                                                  batch_size=batch_size)
    return text, datasets


def dataset_ids(names: Sequence[str], datasets: Sequence[str]) -> np.ndarray:
    """Host-side: per-sample dataset names -> int32 ids in `datasets` order (error on an unknown name)."""
    index = {d: i for i, d in enumerate(datasets)}
    try:
        return np.asarray([index[str(n)] for n in names], np.int32)
    except KeyError as e:
        raise ValueError(f"dataset {e.args[0]!r} has no label set (known: {list(datasets)})") from None
