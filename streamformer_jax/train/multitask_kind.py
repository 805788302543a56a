"""The "multitask" model kind: `tasks.model.MultiTaskModel` (backbone + one head per task + frozen text tower).

Text side:
  * `config.text.checkpoint` set, or a text tower inside `config.model.init` (a SigLIP HF directory or our
    checkpoint with pretraining extras): that SigLIP text tower, with the SentencePiece tokenizer from
    `config.text.tokenizer` (or the checkpoint / init directory).
  * otherwise, only where the config allows it (`config.text.allow_random`: the `tiny` variant, tests): a
    deterministic random-initialised tiny SigLIP text tower (seed `config.text.seed`, sizes
    `config.text.random`) with a hashing word tokenizer. Its label embeddings are fixed random-looking vectors,
    consistent between runs; the pipeline is the real one. The full recipe stops with one line instead.
Label embeddings of the label tasks (mean over the task's templates of normalised text embeddings, spec §5.3)
are computed once at start-up, per dataset for the tasks with per-dataset tables (localization, VIS: one padded
[K, C, D] table + validity, indexed by the batch's `dataset_id`); the captions of the caption tasks are
tokenised on the host per micro-batch and encoded by the frozen text tower inside the step.

Shape-only (`ModelSettings.abstract_text`, for ahead-of-time compiles): the same module tree, masks and label
tables, with ShapeDtypeStructs for values and a text tower of the given architecture; nothing is read or computed.
"""
from __future__ import annotations

import functools
import re
import zlib
from typing import Mapping, Sequence

import jax
import numpy as np
from flax import nnx

from streamformer_jax.models.layers import abstract_module
from streamformer_jax.models.params import model_from_flat_params
from streamformer_jax.param_tree import flat_params
from streamformer_jax.tasks import registry
from streamformer_jax.tasks.model import MultiTaskModel, build_label_embeddings, task_loss
from streamformer_jax.text.model import SiglipTextConfig, init_text_model, load_text_model, text_model_from_flat
from streamformer_jax.text.tokenizer import load_tokenizer
from streamformer_jax.train import param_groups
from streamformer_jax.train.pretrain_export import write_pretrain_export
from streamformer_jax.train.task_model import ModelSettings, TaskModel

_WORD = re.compile(r"[a-z0-9]+")


class HashTokenizer:
    """Lower-cases, drops punctuation, maps each word to 2 + crc32(word) % (vocab - 2); pads/ends with eos = 1
    (SigLIP pads with its eos token). A stand-in when no SentencePiece model is available."""

    eos_id = 1

    def __init__(self, vocab_size: int, max_length: int):
        self.vocab_size, self.max_length = int(vocab_size), int(max_length)

    def __call__(self, texts: Sequence[str], truncation: bool = True) -> np.ndarray:
        out = np.full((len(texts), self.max_length), self.eos_id, np.int32)
        for i, t in enumerate(texts):
            ids = [2 + zlib.crc32(w.encode()) % (self.vocab_size - 2) for w in _WORD.findall(str(t).lower())]
            ids = ids[: self.max_length - 1]
            out[i, : len(ids)] = ids
        return out


def _tokenizer(settings: ModelSettings, random_tower: bool, text_model):
    text = settings.text
    if random_tower:
        return HashTokenizer(text_model.config.vocab_size, text.max_length)
    return load_tokenizer(text.tokenizer or text.checkpoint or settings.init, max_length=text.max_length)


NO_TEXT_TOWER = ("no SigLIP text tower: give --config.model.init=SIGLIP_DIR (a SigLIP directory with its text "
                 "tower) or --config.text.checkpoint=DIR (the random stand-in tower is only for the tiny variant: "
                 "--config.text.allow_random=True)")


def random_tower_config(settings: ModelSettings) -> SiglipTextConfig:
    """The architecture of the random tiny text tower (`config.text.random`), projecting to the backbone's width."""
    text, bb = settings.text, settings.backbone
    r = text.random
    d = r.hidden_size or bb.hidden_size
    return SiglipTextConfig(vocab_size=r.vocab_size, hidden_size=d, intermediate_size=r.mlp_size or 2 * d,
                            num_hidden_layers=r.num_layers, num_attention_heads=r.num_heads,
                            max_position_embeddings=text.max_length, projection_size=bb.hidden_size)


def _random_tower(settings: ModelSettings):
    """The deterministic random tiny text tower (seed `config.text.seed`)."""
    text_cfg = random_tower_config(settings)
    tower = init_text_model(text_cfg, seed=settings.text.seed)
    scale = float(settings.text.random.get("init_scale", 1.0))
    if scale != 1.0:  # larger random weights: captions get distinct embeddings (see configs/common.py)
        flat = {k: np.asarray(v) * (scale if k.endswith(("kernel", "embedding")) else 1.0)
                for k, v in flat_params(tower).items()}
        tower = text_model_from_flat(text_cfg, flat)
    return tower


def build(settings: ModelSettings, class_names: Mapping[str, list[str] | dict[str, list[str]]]) -> TaskModel:
    """`class_names`: per task, names by id or {dataset: names by id} (`label_tables.label_sets`)."""
    tasks = [t for t in registry.names() if t in class_names]
    if settings.abstract_text is not None:
        return _shape_only(settings, tasks, class_names)
    bb, text_cfg = settings.backbone, settings.text
    allow_random = bool(text_cfg.get("allow_random", False))
    if settings.init:
        model = MultiTaskModel.from_pretrained(
            settings.init, tasks, text=text_cfg.checkpoint or None, lora_rank=bb.lora_rank,
            num_frames=bb.num_frames, seed=settings.seed)
        if model.config.dtype != bb.dtype:
            model.config = model.config.replace(dtype=bb.dtype)
            model.backbone = model_from_flat_params(model.config, flat_params(model.backbone))
        random_text = model.text_encoder is None
        if random_text:
            if not allow_random:
                raise ValueError(f"{settings.init}: {NO_TEXT_TOWER}")
            model.text_encoder = nnx.data(_random_tower(settings))
    else:
        random_text = not text_cfg.checkpoint
        if random_text and not allow_random:
            raise ValueError(NO_TEXT_TOWER)
        tower = _random_tower(settings) if random_text else load_text_model(text_cfg.checkpoint)
        model = MultiTaskModel(bb, tasks, rngs=settings.seed, text_encoder=tower)
    tokenizer = _tokenizer(settings, random_text, model.text_encoder)

    labels = {}
    for task in tasks:
        if registry.get(task).text_kind == registry.LABELS:
            if not class_names[task]:
                raise ValueError(f"task {task!r} has no class names in its metadata.json")
            labels[task] = class_names[task]
    # Rows ordered by id; prompts from the bare class names with the task's templates.
    text, _ = build_label_embeddings(model.text_encoder, tokenizer, labels, batch_size=128)

    def prepare_batch(batch):
        if "caption" in batch:
            return {"caption_ids": np.asarray(tokenizer(list(batch["caption"])), np.int32)}
        return {}

    # The original wrapper's own (dead) logit scalars keep the heads' initial values (spec §10.10).
    first_head = model.heads[tasks[0]]
    wrapper_scalars = (float(np.asarray(first_head.logit_scale[...])), float(np.asarray(first_head.logit_bias[...])))

    def export(flat, out_dir):
        """Heads, text tower and tokenizer beside the exported backbone (`train.pretrain_export`)."""
        write_pretrain_export(out_dir, flat, tasks=tasks, backbone_config=bb.replace(dtype="float32"),
                              text_config=model.text_encoder.config if model.text_encoder is not None else None,
                              tokenizer=tokenizer, label_sets={t: class_names[t] for t in tasks},
                              wrapper_logit_scale=wrapper_scalars[0], wrapper_logit_bias=wrapper_scalars[1])

    return _task_model(settings, model, text, prepare_batch, export=export, tokenizer=tokenizer)


def _shape_only(settings: ModelSettings, tasks: list[str], class_names: Mapping[str, list[str] | dict[str, list[str]]]
                ) -> TaskModel:
    """The shapes `build_label_embeddings` gives: [C, D] per flat table, [K, C, D] + valid [K, C] per dataset."""
    tower = settings.abstract_text
    model = abstract_module(functools.partial(MultiTaskModel, tasks=tasks, text_config=tower), settings.backbone)
    text = {}
    for t in tasks:
        if registry.get(t).text_kind != registry.LABELS:
            continue
        names = class_names[t]
        if isinstance(names, Mapping):
            k, c = len(names), max(len(n) for n in names.values())
            text[t] = jax.ShapeDtypeStruct((k, c, tower.output_size), np.float32)
            text[f"{t}_valid"] = jax.ShapeDtypeStruct((k, c), np.bool_)
        else:
            text[t] = jax.ShapeDtypeStruct((len(names), tower.output_size), np.float32)
    return _task_model(settings, model, text, None)


def _task_model(settings: ModelSettings, model: MultiTaskModel, text, prepare_batch, export=None,
                tokenizer=None) -> TaskModel:
    names = list(flat_params(model))
    trainable = param_groups.trainable_by_mode(names, settings.trainable)
    decay = param_groups.weight_decay_mask(names)
    return TaskModel(model=model, loss=task_loss, trainable=lambda n: trainable.get(n, False),
                     decay=lambda n: decay.get(n, True), backbone=settings.backbone, text=text,
                     prepare_batch=prepare_batch, export=export, tokenizer=tokenizer)

