"""The "multitask" model kind: `train.multitask.MultiTaskModel` (backbone + task heads + frozen text tower).

Text side:
  * `config.text.checkpoint` set, or a text tower inside `config.model.init` (a SigLIP HF directory or our
    checkpoint with pretraining extras): that SigLIP text tower, with the SentencePiece tokenizer from
    `config.text.tokenizer` (or the checkpoint / init directory).
  * otherwise (tests, quickstart): a deterministic random-initialised tiny SigLIP text tower (seed
    `config.text.seed`, sizes `config.text.random`) with a hashing word tokenizer. Its label
    embeddings are fixed random-looking vectors, consistent between runs; the pipeline is the real one.
Label embeddings (mean over the task's templates of normalised text embeddings, spec §5.3) are computed once
at start-up; captions (retrieval, grounding) are tokenised on the host per micro-batch and encoded by the
frozen text tower inside the step.
"""
from __future__ import annotations

import re
import zlib
from typing import Mapping, Sequence

import numpy as np

from streamformer_jax.train.model import TaskModel, backbone_config, register_model_kind

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
    from streamformer_jax.text.tokenizer import load_tokenizer

    source = config.text.tokenizer or config.text.checkpoint or config.model.init
    return load_tokenizer(source, max_length=config.text.max_length)


def build(config, class_names: Mapping[str, list[str]], *, abstract_text=None) -> TaskModel:
    """abstract_text: a `SiglipTextConfig`; build a shape-only model instead (no parameter values, no
    checkpoint read, label embeddings as ShapeDtypeStructs) whose frozen text tower has that architecture, for
    ahead-of-time compilation (`streamformer_jax.train.aot`)."""
    from streamformer_jax.text.embeddings import compute_label_embeddings
    from streamformer_jax.text.model import SiglipTextConfig, init_text_model, load_text_model
    from streamformer_jax.train import multitask
    from streamformer_jax.train.templates import TASK_TEMPLATES

    tasks = [t for t in multitask.TASKS if t in class_names]
    bb = backbone_config(config)

    def random_tower():
        r = config.text.random
        d = r.hidden_size or bb.hidden_size
        text_cfg = SiglipTextConfig(vocab_size=r.vocab_size, hidden_size=d, intermediate_size=r.mlp_size or 2 * d,
                                    num_hidden_layers=r.num_layers, num_attention_heads=r.num_heads,
                                    max_position_embeddings=config.text.max_length, projection_size=bb.hidden_size)
        return init_text_model(text_cfg, seed=config.text.seed)

    if abstract_text is not None:
        return _masked(config, *_abstract_model(bb, tasks, class_names, abstract_text))
    if config.model.init:
        model = multitask.MultiTaskModel.from_pretrained(
            config.model.init, tasks, text=config.text.checkpoint or None, lora_rank=bb.lora_rank,
            num_frames=bb.num_frames, seed=config.seed)
        if model.config.dtype != bb.dtype:
            from streamformer_jax.models.params import flat_params, model_from_flat_params

            model.config = model.config.replace(dtype=bb.dtype)
            model.backbone = model_from_flat_params(model.config, flat_params(model.backbone))
        random_text = model.text_encoder is None
        if random_text:
            from flax import nnx

            model.text_encoder = nnx.data(random_tower())
    else:
        random_text = not config.text.checkpoint
        tower = random_tower() if random_text else load_text_model(config.text.checkpoint)
        model = multitask.MultiTaskModel(bb, tasks, rngs=int(config.seed), text_encoder=tower)
    tokenizer = _tokenizer(config, random_text, model.text_encoder)

    text = {}
    for task in tasks:
        if task in multitask.LABEL_TASKS:
            names = class_names[task]
            if not names:
                raise ValueError(f"task {task!r} has no class names in its metadata.json")
            text[task] = compute_label_embeddings(model.text_encoder, tokenizer, names, TASK_TEMPLATES[task],
                                                  batch_size=128)

    def prepare_batch(batch):
        if "caption" in batch:
            return {"caption_ids": np.asarray(tokenizer(list(batch["caption"])), np.int32)}
        return {}

    return _masked(config, model, text, prepare_batch)


def _abstract_model(bb, tasks, class_names, text_config):
    import jax
    from flax import nnx

    from streamformer_jax.text.model import SiglipTextModel
    from streamformer_jax.train import multitask

    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: multitask.MultiTaskModel(
            bb, tasks, rngs=None, text_encoder=SiglipTextModel(text_config, rngs=None)))
    text = {t: jax.ShapeDtypeStruct((len(class_names[t]), text_config.output_size), np.float32)
            for t in tasks if t in multitask.LABEL_TASKS}
    return model, text, None


def _masked(config, model, text, prepare_batch) -> TaskModel:
    from streamformer_jax.train import multitask

    bb = backbone_config(config)
    names = list(multitask.multitask_flat_params(model))
    trainable = multitask.trainable_mask(names)
    if config.model.trainable == "all":
        trainable = {n: not n.startswith("text_encoder.") for n in names}
    elif config.model.trainable != "original":
        raise ValueError(f"config.model.trainable must be 'original' or 'all', got {config.model.trainable!r}")
    decay = multitask.weight_decay_mask(names)
    return TaskModel(model=model, loss=multitask.task_loss, trainable=lambda n: trainable.get(n, False),
                     decay=lambda n: decay.get(n, True), backbone=bb, text=text, prepare_batch=prepare_batch)


register_model_kind("multitask", build)
