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
"""
from __future__ import annotations

import re
import zlib
from typing import Mapping, Sequence

import numpy as np
from flax import nnx

from streamformer_jax.models.params import flat_params, model_from_flat_params
from streamformer_jax.tasks import registry
from streamformer_jax.tasks.model import MultiTaskModel, build_label_embeddings, multitask_flat_params, task_loss
from streamformer_jax.text.model import SiglipTextConfig, init_text_model, load_text_model
from streamformer_jax.text.tokenizer import load_tokenizer
from streamformer_jax.train import param_groups
from streamformer_jax.train.model_kinds import TaskModel, backbone_config, register_model_kind

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


def _tokenizer(config, random_tower: bool, text_model):
    if random_tower:
        return HashTokenizer(text_model.config.vocab_size, config.text.max_length)
    source = config.text.tokenizer or config.text.checkpoint or config.model.init
    return load_tokenizer(source, max_length=config.text.max_length)


NO_TEXT_TOWER = ("no SigLIP text tower: give --config.model.init=SIGLIP_DIR (a SigLIP directory with its text "
                 "tower) or --config.text.checkpoint=DIR (the random stand-in tower is only for the tiny variant: "
                 "--config.text.allow_random=True)")


def build(config, class_names: Mapping[str, list[str] | dict[str, list[str]]]) -> TaskModel:
    """`class_names`: per task, names by id or {dataset: names by id} (`label_tables.label_sets`)."""
    tasks = [t for t in registry.names() if t in class_names]
    bb = backbone_config(config)
    allow_random = bool(config.text.get("allow_random", False))

    def random_tower():
        r = config.text.random
        d = r.hidden_size or bb.hidden_size
        text_cfg = SiglipTextConfig(vocab_size=r.vocab_size, hidden_size=d, intermediate_size=r.mlp_size or 2 * d,
                                    num_hidden_layers=r.num_layers, num_attention_heads=r.num_heads,
                                    max_position_embeddings=config.text.max_length, projection_size=bb.hidden_size)
        return init_text_model(text_cfg, seed=config.text.seed)

    if config.model.init:
        model = MultiTaskModel.from_pretrained(
            config.model.init, tasks, text=config.text.checkpoint or None, lora_rank=bb.lora_rank,
            num_frames=bb.num_frames, seed=config.seed)
        if model.config.dtype != bb.dtype:
            model.config = model.config.replace(dtype=bb.dtype)
            model.backbone = model_from_flat_params(model.config, flat_params(model.backbone))
        random_text = model.text_encoder is None
        if random_text:
            if not allow_random:
                raise ValueError(f"{config.model.init}: {NO_TEXT_TOWER}")
            model.text_encoder = nnx.data(random_tower())
    else:
        random_text = not config.text.checkpoint
        if random_text and not allow_random:
            raise ValueError(NO_TEXT_TOWER)
        tower = random_tower() if random_text else load_text_model(config.text.checkpoint)
        model = MultiTaskModel(bb, tasks, rngs=int(config.seed), text_encoder=tower)
    tokenizer = _tokenizer(config, random_text, model.text_encoder)

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

    names = list(multitask_flat_params(model))
    trainable = param_groups.trainable_mask(names)
    if config.model.trainable == "all":
        trainable = {n: not n.startswith("text_encoder.") for n in names}
    elif config.model.trainable != "original":
        raise ValueError(f"config.model.trainable must be 'original' or 'all', got {config.model.trainable!r}")
    decay = param_groups.weight_decay_mask(names)
    return TaskModel(model=model, loss=task_loss, trainable=lambda n: trainable.get(n, False),
                     decay=lambda n: decay.get(n, True), backbone=bb, text=text, prepare_batch=prepare_batch)


register_model_kind("multitask", build)
