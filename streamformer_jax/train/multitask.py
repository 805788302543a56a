"""The multitask pretraining model and its per-task losses (spec §5.1-§5.3, §1.9).

Public API (stable; the trainer builds on it)
=============================================

Tasks (`TASKS`): "kinetics", "ssv2", "retrieval", "grounding", "localization", "vis" (the data pipeline's names;
`OFFICIAL_TASK_NAMES` maps them to the original's `Kinetics`, `SSV2`, `TaskRetrieval`, ...).

``MultiTaskModel(backbone_config, tasks, *, text_config=None, init_logit_scale=log(10), init_logit_bias=-10.,
                 rngs=0, backbone=None, text_encoder=None)``  (an `nnx.Module`)
    .backbone      StreamFormer (`streamformer_jax.models`), flat names `backbone.<our backbone names>`
    .heads         nnx.Dict task -> TaskHead: `heads.<task>.logit_scale`, `heads.<task>.logit_bias` (0-dim);
                   `heads.vis` is a VISHead that adds `w_v`, `v_proj`, `head_layernorm`, `head_mlp`
                   (initialised as copies of the backbone's MAP head: value rows, out-proj, LN, MLP)
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
``multitask_flat_params(model) -> {name: array}``  (all nnx.Params, dotted names as above)

``task_loss(model, task, batch, text, *, rng=None, max_vis_classes=100) -> (loss f32[], metrics {str: f32[]})``
    Pure and jit-able (call it inside `nnx.jit` / `nnx.value_and_grad` or on a merged model); `task` is static.
    = `head_loss(model, task, backbone_features(model, batch["video"]), batch, text, ...)`: the two halves are
    public too (e.g. to share one backbone pass between several head losses).
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
    class_names: {task: [names ordered by id] | {dataset: [names ordered by id]}}; templates by task
    (`templates.TASK_TEMPLATES`: 28 VIDEO_TEMPLATES, VIS "{}"). `class_names_by_id(label2id)` orders a
    (possibly nested) label2id dict by id (spec §10.22). `dataset_ids(names, datasets)` -> int32 [B] (host).

Masks (name -> bool, for optax; `mask_tree(state, mask)` turns one into the pytree of an nnx.State):
``trainable_mask(names) -> {name: bool}``  False for `text_encoder.*` and, when the model has spatial LoRA,
    the spatial base projections `backbone.layers.<l>.attention.{qkv,out}.base.*` (their LoRA trains).
``weight_decay_mask(names) -> {name: bool}``  the original's groups: no decay for biases (`*.bias`,
    `backbone.embeddings.patch_bias`) and LayerNorm scales (the 1-D tensors of the original); decay for
    everything else, incl. 0-dim gates, `logit_scale`/`logit_bias`, position/time tables, the probe, LoRA.
``trainable_filter(lora=True)``: an nnx filter (path, value) -> bool for `nnx.Optimizer(wrt=...)` /
    `nnx.DiffState`: nnx.All(nnx.Param, <trainable>).
"""
from __future__ import annotations

import json
import pathlib
import re
from typing import Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from streamformer_jax.models.config import StreamFormerConfig
from streamformer_jax.models.layers import HostRngs
from streamformer_jax.models.streamformer import StreamFormer, normalize_pixels
from streamformer_jax.text.model import SiglipTextConfig, SiglipTextModel
from streamformer_jax.train import losses
from streamformer_jax.train.heads import DEFAULT_LOGIT_BIAS, DEFAULT_LOGIT_SCALE, TaskHead, VISHead
from streamformer_jax.train.templates import TASK_TEMPLATES

TASKS = ("kinetics", "ssv2", "retrieval", "grounding", "localization", "vis")
OFFICIAL_TASK_NAMES = {"kinetics": "Kinetics", "ssv2": "SSV2", "retrieval": "TaskRetrieval",
                       "grounding": "TaskGrounding", "localization": "TaskLocalization", "vis": "TaskVIS"}
LABEL_TASKS = ("kinetics", "ssv2", "localization", "vis")
CAPTION_TASKS = ("retrieval", "grounding")


def _name(path) -> str:
    return ".".join(str(p) for p in path)


class MultiTaskModel(nnx.Module):
    """StreamFormer backbone + per-task heads (+ the frozen text tower); see the module docstring."""

    def __init__(self, backbone_config: StreamFormerConfig, tasks: Sequence[str], *,
                 text_config: SiglipTextConfig | None = None, init_logit_scale: float = DEFAULT_LOGIT_SCALE,
                 init_logit_bias: float = DEFAULT_LOGIT_BIAS, rngs: HostRngs | int | None = 0,
                 backbone: StreamFormer | None = None, text_encoder: SiglipTextModel | None = None):
        unknown = [t for t in tasks if t not in TASKS]
        if unknown or not tasks:
            raise ValueError(f"unknown tasks {unknown}; choose from {TASKS}" if unknown else "no tasks given")
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
            if t == "vis":
                heads[t] = VISHead(backbone_config, init_logit_scale, init_logit_bias, rngs=rngs)
                heads[t].copy_from_map_head(self.backbone.head)
            else:
                heads[t] = TaskHead(init_logit_scale, init_logit_bias)
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
        from streamformer_jax.models.params import model_from_flat_params
        from streamformer_jax.text.model import EXTRAS_PREFIX, load_text_model, text_from_state

        p = pathlib.Path(path)
        extras: dict[str, np.ndarray] = {}
        text_config = None
        if _is_siglip_dir(p):
            from streamformer_jax.convert.siglip import import_siglip

            config, flat, extras, _ = import_siglip(p, num_frames=num_frames, lora_rank=lora_rank, seed=seed)
            if any(k.startswith(EXTRAS_PREFIX) for k in extras):
                text_config = SiglipTextConfig.from_hf_dict(json.loads((p / "config.json").read_text()))
        else:
            from streamformer_jax.checkpoint import is_checkpoint, load_any
            from streamformer_jax.convert.pretrain import read_extras

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
        """Replace the backbone parameters (names/shapes must match exactly, e.g. `load_any(path)[1]`)."""
        from streamformer_jax.models.params import model_from_flat_params

        self.backbone = model_from_flat_params(self.config, flat, "backbone parameters")
        if reinit_vis_projection and "vis" in self.heads:
            self.heads["vis"].copy_from_map_head(self.backbone.head)

    def set_params(self, flat: Mapping[str, object]) -> None:
        """Overwrite some parameters by flat name (shape-checked)."""
        state = nnx.state(self, nnx.Param)
        flat_state = dict((_name(p), v) for p, v in nnx.to_flat_state(state))
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


def _is_siglip_dir(p: pathlib.Path) -> bool:
    try:
        return json.loads((p / "config.json").read_text()).get("model_type") in ("siglip", "siglip_vision_model")
    except (OSError, json.JSONDecodeError):
        return False


def multitask_flat_params(model: MultiTaskModel) -> dict[str, jax.Array]:
    return {_name(p): v.get_value() for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


# ---- official pretraining-wrapper tensors -> head params (declarative; torch Linear [out, in] -> kernel) ----
_VIS_RULES = [("w_v.kernel", "w_v.weight", "linear"), ("w_v.bias", "w_v.bias", "reshape"),
              ("v_proj.kernel", "v_proj.weight", "linear"), ("v_proj.bias", "v_proj.bias", "reshape"),
              ("head_layernorm.scale", "head_layernorm.weight", "copy"),
              ("head_layernorm.bias", "head_layernorm.bias", "copy"),
              ("head_mlp.fc1.kernel", "head_mlp.fc1.weight", "linear"), ("head_mlp.fc1.bias", "head_mlp.fc1.bias", "copy"),
              ("head_mlp.fc2.kernel", "head_mlp.fc2.weight", "linear"), ("head_mlp.fc2.bias", "head_mlp.fc2.bias", "copy")]


def official_head_params(extras: Mapping[str, np.ndarray], model: MultiTaskModel) -> dict[str, np.ndarray]:
    """`task_heads.<Task>.*` tensors of an official pretraining checkpoint -> our head params (those present)."""
    shapes = {k: tuple(v.shape) for k, v in multitask_flat_params(model).items()}
    out = {}
    for task in model.tasks:
        theirs = f"task_heads.{OFFICIAL_TASK_NAMES[task]}."
        rules = [("logit_scale", "logit_scale", "copy"), ("logit_bias", "logit_bias", "copy")]
        rules += _VIS_RULES if task == "vis" else []
        for ours, key, kind in rules:
            if theirs + key not in extras:
                continue
            a = np.asarray(extras[theirs + key], np.float32)
            name = f"heads.{task}.{ours}"
            out[name] = (a.T if kind == "linear" else a).reshape(shapes[name])
    return out


# ---- the losses ----
def _caption_embedding(model: MultiTaskModel, batch, text) -> jax.Array:
    if "caption_embedding" in text:
        return jax.lax.stop_gradient(jnp.asarray(text["caption_embedding"], jnp.float32))
    if "caption_ids" not in batch:
        raise ValueError("retrieval/grounding need text['caption_embedding'] [B, D] or batch['caption_ids'] [B, L]")
    return model.encode_captions(batch["caption_ids"])


def backbone_features(model: MultiTaskModel, video: jax.Array) -> dict[str, jax.Array]:
    """uint8 [B, T, H, W, 3] (normalised here) or already-normalised float video -> backbone outputs."""
    pixels = normalize_pixels(video) if video.dtype == jnp.uint8 else video.astype(jnp.float32)
    return model.backbone(pixels)


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
    scale, bias = head.logit_scale[...], head.logit_bias[...]
    pooled = features["pooler_output"].astype(jnp.float32)  # [B, T, D]
    if task in ("kinetics", "ssv2"):
        labels = jnp.asarray(batch["label"], jnp.int32)
        loss, z = losses.classification_loss(pooled[:, -1], text[task], labels, scale, bias)
        acc = jnp.mean(jnp.argmax(z, -1) == labels)
    elif task == "retrieval":
        loss, z = losses.retrieval_loss(pooled[:, -1], _caption_embedding(model, batch, text), scale, bias)
        acc = jnp.mean(jnp.argmax(z, -1) == jnp.arange(z.shape[0]))
    elif task == "grounding":
        labels = jnp.asarray(batch["label"], jnp.float32)
        loss, z = losses.grounding_loss(pooled, _caption_embedding(model, batch, text), labels, scale, bias)
        acc = jnp.mean((z > 0) == (labels > 0.5))
    elif task == "localization":
        labels = jnp.asarray(batch["label"], jnp.int32)
        loss, z = losses.localization_loss(pooled, text[task], labels, scale, bias,
                                           valid=text.get(f"{task}_valid"), dataset_id=batch.get("dataset_id"))
        fg = labels >= 0
        acc = jnp.sum((jnp.argmax(z, -1) == labels) & fg) / jnp.maximum(jnp.sum(fg), 1)
    elif task == "vis":
        tokens = features["last_hidden_state"]  # [B, T, N, D]
        gh, gw = model.backbone.embeddings.patch_grid(batch["video"].shape[2], batch["video"].shape[3])
        patches = head.project(tokens).reshape(*tokens.shape[:2], gh, gw, tokens.shape[-1])
        mask = jnp.asarray(batch["mask"], jnp.int32)
        loss, z, target = losses.vis_loss(patches, text[task], mask, scale, bias, valid=text.get(f"{task}_valid"),
                                          dataset_id=batch.get("dataset_id"), rng=rng, max_classes=max_vis_classes,
                                          return_target=True)
        ok = target >= 0  # pixel accuracy over the valid pixels, among the classes scored for the sample
        acc = jnp.sum((jnp.argmax(z, -1) == target) & ok) / jnp.maximum(jnp.sum(ok), 1)
    else:
        raise ValueError(f"unknown task {task!r}")
    metrics = {"loss": loss, "logit_scale": jnp.asarray(scale, jnp.float32),
               "logit_bias": jnp.asarray(bias, jnp.float32), "accuracy": jnp.asarray(acc, jnp.float32)}
    return loss, metrics


# ---- masks ----
_SPATIAL_BASE = re.compile(r"^backbone\.layers\.\d+\.attention\.(qkv|out)\.base\.")


def _names(names_or_params) -> list[str]:
    return list(names_or_params.keys() if isinstance(names_or_params, Mapping) else names_or_params)


def is_trainable(name: str, lora: bool = True) -> bool:
    if name.startswith("text_encoder."):
        return False
    return not (lora and _SPATIAL_BASE.match(name))


def trainable_mask(names_or_params: Iterable[str] | Mapping[str, object]) -> dict[str, bool]:
    """The original split: text tower frozen; with spatial LoRA, the spatial base qkv/out frozen (LoRA trains)."""
    names = _names(names_or_params)
    lora = any(".attention.qkv.lora_a." in n for n in names)
    return {n: is_trainable(n, lora) for n in names}


def trainable_filter(lora: bool = True):
    """nnx filter selecting the trainable parameters (`lora`: whether the model has spatial LoRA)."""
    return nnx.All(nnx.Param, lambda path, value: is_trainable(_name(path), lora))


def decays(name: str) -> bool:
    last = name.rsplit(".", 1)[-1]
    if last == "bias" or name.endswith("embeddings.patch_bias"):
        return False
    if last == "scale":  # LayerNorm weights (1-D in the original)
        return False
    return True


def weight_decay_mask(names_or_params: Iterable[str] | Mapping[str, object]) -> dict[str, bool]:
    """The original groups: no decay for `ndim == 1` tensors and names ending in `.bias`, decay otherwise
    (0-dim gates and logit scale/bias included). Our kernels are multi-dimensional where the original's are
    2-D, so the rule is written on names: biases (incl. `patch_bias`) and LayerNorm scales."""
    return {n: decays(n) for n in _names(names_or_params)}


def mask_tree(state: nnx.State, mask: Mapping[str, bool]) -> nnx.State:
    """A pytree like `state` (nnx.State of params) with the mask's booleans as leaves (optax masks)."""
    flat = [(p, mask[_name(p)]) for p, _ in nnx.to_flat_state(state)]
    return nnx.from_flat_state(flat)


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
    tasks). Templates from `templates.TASK_TEMPLATES`. Per-dataset sets are padded to one [K, C, D] table
    with "<task>_valid" [K, C]."""
    from streamformer_jax.text.embeddings import compute_label_embeddings

    text, datasets = {}, {}
    for task, names in class_names.items():
        templates = TASK_TEMPLATES[task]
        if isinstance(names, Mapping):
            sets = {ds: compute_label_embeddings(text_model, tokenizer, list(n), templates, batch_size=batch_size)
                    for ds, n in names.items()}
            cmax = max(e.shape[0] for e in sets.values())
            d = next(iter(sets.values())).shape[1]
            table = np.zeros((len(sets), cmax, d), np.float32)
            valid = np.zeros((len(sets), cmax), bool)
            for k, e in enumerate(sets.values()):
                table[k, : e.shape[0]], valid[k, : e.shape[0]] = e, True
            text[task], text[f"{task}_valid"], datasets[task] = table, valid, list(sets)
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
