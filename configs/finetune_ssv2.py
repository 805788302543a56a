r"""Finetune a pretrained StreamFormer for action recognition on Something-Something v2: the recipe of
`configs/finetune_k400.py` (spec §7.1, documented there) on the `ssv2/` records of `--config.data_dir`, never
flipped (SSv2 labels are direction-sensitive).

  python -m streamformer_jax.train --config configs/finetune_ssv2.py --workdir /ckpt/finetune_ssv2 \
      --config.data_dir=/data/records --config.model.init=/ckpt/streamformer_pretrained
  python -m streamformer_jax.train --config configs/finetune_ssv2.py:tiny --workdir /tmp/finetune_ssv2_tiny

Then `python -m eval.action_recognition evaluate --dataset ssv2 ...` (2x3 views) on WORKDIR/export.
"""
from streamformer_jax.train.config_files import load_sibling

common = load_sibling(__file__, "common")  # configs are loaded by path, so their helpers too


def get_config(arg: str | None = None):
    return common.finetune_config("ssv2", arg)
