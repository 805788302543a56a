r"""Finetune a pretrained StreamFormer for action recognition on Kinetics-400 as the original (spec §7.1): model kind
"classifier" (per-frame MAP pooling averaged over frames, fc_norm, linear classifier), 16 x 224², 128 clips per
step, AdamW (0.9, 0.999) wd 0.05, lr 2e-4 with 5 warm-up epochs then cosine to 1e-6, 30 epochs; spatial base
weights frozen, LoRA and everything else trained; soft-target cross-entropy with mixup 0.8 / cutmix 1.0, label
smoothing 0.1, random erasing 0.25; RandAugment rand-m7-n4-mstd0.5-inc1.

  python -m streamformer_jax.train --config configs/finetune_k400.py --workdir /ckpt/finetune_k400 \
      --config.data_dir=/data/records --config.model.init=/ckpt/streamformer_pretrained

  python -m streamformer_jax.train --config configs/finetune_k400.py:tiny --workdir /tmp/finetune_k400_tiny   # CPU smoke run

`data_dir` must hold a `kinetics/` record directory (converter output). The run's WORKDIR/export holds the backbone
and the head for `python -m eval.action_recognition evaluate --checkpoint WORKDIR/export
--head WORKDIR/export/classifier_head.npz --dataset k400 ...` (docs/training.md, "Finetuning for action recognition").
"""
from streamformer_jax.train.config_files import load_sibling

common = load_sibling(__file__, "common")  # configs are loaded by path, so their helpers too


def get_config(arg: str | None = None):
    return common.finetune_config("kinetics", arg)
