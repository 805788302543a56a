r"""Multitask pretraining of StreamFormer (spec §5): the original recipe, and a `tiny` variant for CPUs.

The original recipe (default variant):
  ViT-B/16, 16 frames at 224², initialised from SigLIP (`--config.model.init=DIR`), six tasks mixed one task per
  micro-batch, 7 micro-batches of 128 clips = 896 clips per optimizer step, AdamW β = (0.9, 0.999), ε = 1e-8,
  weight decay 0.05 (decay groups as the original: no decay for 1-D parameters and biases), learning rate
  7e-5 = 2e-5 × 896 / 256, 20 epochs, no warm-up, cosine decay to 0 over the whole run, no clipping, bf16
  compute with float32 master weights. Trainable: everything except the spatial attention's base qkv/out
  projections (their LoRA is trained) and the text tower (frozen).

  python -m streamformer_jax.train --config configs/pretrain_multitask.py --workdir /ckpt/sf_pretrain \
      --config.data_dir=/data/records --config.model.init=/ckpt/siglip_init

Tiny (trains on the built-in dataset on a 2-core CPU in about a minute):

  python -m streamformer_jax.train --config configs/pretrain_multitask.py:tiny --workdir /tmp/sf_tiny

Variants (comma-separated, the first may be bare): `tiny`, `steps=N`, `mesh=dp|fsdp|fsdp_tp`.
Any field can be overridden with `--config.key=value`; a misspelt key is an error.
"""
import ml_collections

from streamformer_jax.train.config_files import load_sibling

common = load_sibling(__file__, "common")  # configs are loaded by path, so their helpers too

# The original: 16 clips per GPU x 8 GPUs per micro-batch, update_freq 7.
ORIGINAL_MICRO_BATCH = 128
ORIGINAL_ACCUM = 7


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = common.parse_arg(arg, variant="", tiny=False, steps=0, mesh="")
    tiny = arg.tiny or arg.variant == "tiny"
    if arg.variant not in ("", "tiny"):
        raise ValueError(f"unknown variant {arg.variant!r}; choose from '' (the original recipe) or 'tiny'")

    config = common.base_config()
    config.name = "pretrain_multitask"
    config.model = common.model_config("vit_b16")
    config.optim = common.optim_config(lr=2e-5 * ORIGINAL_MICRO_BATCH * ORIGINAL_ACCUM / 256, weight_decay=0.05)
    config.micro_batch_size = ORIGINAL_MICRO_BATCH
    config.accum_steps = ORIGINAL_ACCUM
    config.total_steps = -1
    config.epochs = 20.0
    config.log_every = 50
    config.checkpoint.every_steps = 1000
    # The recipe trains on converted data from a SigLIP start point: both must be given (one-line error).
    config.required = ("data_dir", "model.init")
    common.finalize_data(config, common.load_sibling(__file__, "data_pretrain").get_config())

    if tiny:
        common.tiny_overrides(config)
        config.optim.lr = 1e-3
        config.optim.warmup_steps = 2
        config.accum_steps = 6  # one cycle of the six tasks per optimizer step
        config.required = ()  # the built-in dataset and a random start
    if arg.steps:
        config.total_steps = arg.steps
    if arg.mesh:
        presets = {"dp": (-1, 1, 1), "fsdp": (1, -1, 1), "fsdp_tp": (1, -1, 2)}
        config.mesh.data, config.mesh.fsdp, config.mesh.tensor = presets[arg.mesh]
        config.mesh.rules = arg.mesh
    return config
