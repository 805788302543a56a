r"""Finetune a pretrained StreamFormer on Kinetics-400 (spec §7.1: 16 x 224², 128 clips per step, AdamW
(0.9, 0.999) wd 0.05, lr 2e-4 with 5 warm-up epochs then cosine to 2e-6, 30 epochs; spatial base weights frozen,
LoRA and everything else trained).

  python -m streamformer_jax.train --config configs/finetune_k400.py --workdir /ckpt/finetune_k400 \
      --config.data_dir=/data/records --config.model.init=/ckpt/streamformer_pretrained

  python -m streamformer_jax.train --config configs/finetune_k400.py:tiny --workdir /tmp/finetune_k400_tiny   # CPU smoke run

`data_dir` must hold a `kinetics/` record directory (converter output).
"""
import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location("_sf_configs_common", pathlib.Path(__file__).with_name("common.py"))
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)


def get_config(arg: str | None = None):
    return common.finetune_config("kinetics", arg)
