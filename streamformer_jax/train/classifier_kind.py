"""The "classifier" model kind: action-recognition finetuning as the original does it (spec §7.1).

Model: `streamformer_jax.models.classifier.VideoClassifier` (the original
`TimesformerModelSigLIPForVideoClassification`; flat names `backbone.*`, `fc_norm.*`, `classifier.*`). Its head is
exported as the head dict (`classifier_io.save_head`) that `python -m eval.action_recognition evaluate --head`
reads; evaluation pools clips with the same `pool_clip`.

Pooling (`config.model.classifier.pooling`): "mean" (default; per-frame MAP vectors averaged over frames),
"last", or "official_bug" (the original AR model's grouping; only to continue from the released AR
checkpoints).

Loss: soft-target cross-entropy on mixup/cutmix + label-smoothed targets, after per-frame random erasing
(`train.regularisation`, settings `config.augment`), all drawn from the step's PRNG key.

Trainable split (`config.model.trainable="original"`): the spatial attention's base qkv/out projections are
frozen (their LoRA trains); everything else trains: temporal branch, MLPs, LayerNorms, embeddings, MAP head,
fc_norm, classifier. Weight decay: the original's groups (no decay for biases and LayerNorm scales).

Initialisation: the backbone from `config.model.init` (our checkpoint, a training run's `WORKDIR/export`, a
pretraining `.pth` converted with `convert import-pytorch`, an official HF directory, or a SigLIP directory),
random without one; LoRA from the checkpoint (the original re-initialises it and then reloads it from the
pretraining checkpoint; a checkpoint without LoRA gets fresh LoRA: A ~ N(0, 0.02²), B = 0). `fc_norm` starts at (1, 0) and the
classifier at N(0, 0.02²) weights and zero bias: HF `_init_weights` (`trunc_normal_(std=0.02)`, whose ±2
absolute bounds never cut) for the freshly created head of `from_pretrained(..., ignore_mismatched_sizes)`.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from streamformer_jax.checkpoint import load_any
from streamformer_jax.convert import classifier_io
from streamformer_jax.convert.siglip import import_siglip, is_siglip_dir
from streamformer_jax.models.classifier import VideoClassifier, head_from_flat
from streamformer_jax.models.config import StreamFormerConfig
from streamformer_jax.models.params import model_from_flat_params
from streamformer_jax.models.streamformer import StreamFormer, init_model, model_pixels
from streamformer_jax.param_tree import flat_params
from streamformer_jax.train import param_groups
from streamformer_jax.train import regularisation
from streamformer_jax.train.task_model import ModelSettings, TaskModel

HEAD_FILE = "classifier_head.npz"  # classifier_io.save_head format
INFO_FILE = "classifier.json"
AR_CHECKPOINT_FILE = "ar_checkpoint.pt"  # the original AR layout (classifier_io.load_ar_checkpoint), when asked for


# ---------------------------------------------------------------------------------------------------- loss
@dataclasses.dataclass(frozen=True)
class ClassifierLoss:
    """`loss(model, task, batch, text, rng=key) -> (loss, {"loss", "accuracy"})` for the trainer.

    batch: "video" uint8 [B, T, H, W, 3] (or normalised float), "label" int [B]. Without `rng` (evaluation)
    nothing is drawn: plain label-smoothed cross-entropy on the clean clips. "accuracy" is the top-1 match
    with the dominant class of the (mixed) target.
    """

    reg: regularisation.Regularisation

    def __call__(self, model: VideoClassifier, task: str, batch, text=None, *, rng: jax.Array | None = None):
        x = model_pixels(batch["video"])
        labels = jnp.asarray(batch["label"], jnp.int32)
        if rng is None:
            targets = regularisation.smooth_one_hot(labels, model.num_classes, self.reg.label_smoothing)
        else:
            k_erase, k_mix = jax.random.split(rng)
            x = regularisation.random_erasing(k_erase, x, self.reg.random_erasing)  # per sample, before mixing
            params = regularisation.draw_mix(k_mix, self.reg, x.shape[2], x.shape[3])
            x, targets = regularisation.apply_mix(x, labels, params, model.num_classes, self.reg.label_smoothing)
        logits = model(x)
        loss = regularisation.soft_target_cross_entropy(logits, targets)
        acc = jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(targets, -1)).astype(jnp.float32)
        return loss, {"loss": loss, "accuracy": acc}


def regularisation_from_config(c) -> regularisation.Regularisation:
    fields = {f.name for f in dataclasses.fields(regularisation.Regularisation)}
    return regularisation.Regularisation(**{k: float(v) for k, v in dict(c).items() if k in fields})


# ---------------------------------------------------------------------------------------------- backbone init
def load_backbone(init: str, want: StreamFormerConfig, seed: int = 0) -> StreamFormer:
    """The backbone to finetune: from `init` (any supported source; architecture from it, compute dtype from
    `want`) or freshly initialised as `want` when `init` is empty."""
    if not init:
        return init_model(want, seed)
    p = pathlib.Path(init)
    if p.is_file():  # e.g. checkpoint-epoch.pth: the converter reads it once (torch) into our format
        raise ValueError(f"--config.model.init={p}: a file; convert it first with `python -m streamformer_jax.convert "
                         f"import-pytorch --src {p} --out CKPT` and pass CKPT")
    if is_siglip_dir(p):
        config, flat, _, _ = import_siglip(p, num_frames=want.num_frames, lora_rank=want.lora_rank, seed=seed)
    else:
        config, flat = load_any(p)
    config = config.replace(dtype=want.dtype)
    if want.lora_rank and not config.lora_rank:  # the original always finetunes with spatial LoRA
        config = config.replace(lora_rank=want.lora_rank)
        fresh = flat_params(init_model(config, seed))
        flat = {**{k: v for k, v in fresh.items() if ".lora_" in k}, **flat}
    return model_from_flat_params(config, flat, f"{p} (backbone)")


# ------------------------------------------------------------------------------------------------- export
def export_head(out: str | pathlib.Path, flat: Mapping[str, object], info: Mapping[str, object]) -> pathlib.Path:
    """Write the head (`save_head` .npz) and `classifier.json` (task, classes, pooling) into `out`."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    classifier_io.save_head(out / HEAD_FILE, head_from_flat(flat))
    (out / INFO_FILE).write_text(json.dumps({**info, "head": HEAD_FILE}, indent=2) + "\n")
    return out / HEAD_FILE


def export_ar_checkpoint(out: str | pathlib.Path, config: StreamFormerConfig, flat: Mapping[str, object]
                         ) -> pathlib.Path:
    """The original AR checkpoint layout (`{"model": state dict}`) for the PyTorch code; needs torch."""
    backbone = {k[len("backbone."):]: np.asarray(v, np.float32) for k, v in flat.items() if k.startswith("backbone.")}
    return classifier_io.save_ar_checkpoint(pathlib.Path(out) / AR_CHECKPOINT_FILE, config, backbone, head_from_flat(flat))


# ------------------------------------------------------------------------------------------------ builder
def build(settings: ModelSettings, class_names: Mapping[str, list[str]]) -> TaskModel:
    c = settings.classifier
    task = c.task
    names = list(class_names.get(task, []))
    num_classes = int(c.num_classes) or len(names)
    if not num_classes:
        raise ValueError(f"task {task!r}: no class names in its metadata.json; set --config.model.classifier."
                         "num_classes")
    backbone = load_backbone(settings.init, settings.backbone, seed=settings.seed)
    model = VideoClassifier(backbone.config, num_classes, pooling=c.pooling, rngs=settings.seed, backbone=backbone)
    flat_names = list(flat_params(model))
    trainable = param_groups.trainable_by_mode(flat_names, settings.trainable)
    decay = param_groups.weight_decay_mask(flat_names)
    bb_export = backbone.config.replace(dtype="float32")
    info = {"task": task, "num_classes": num_classes, "class_names": names, "pooling": c.pooling}

    def export(flat: Mapping[str, object], out: pathlib.Path) -> None:
        export_head(out, flat, info)
        if c.get("export_ar_checkpoint", False):
            export_ar_checkpoint(out, bb_export, flat)

    return TaskModel(model=model, loss=ClassifierLoss(regularisation_from_config(settings.augment)),
                     trainable=lambda n: trainable.get(n, False), decay=lambda n: decay.get(n, True),
                     backbone=backbone.config, export=export)

