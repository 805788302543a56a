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

Variants (comma-separated, the first may be bare): `tiny`, `steps=N`, `mesh=dp|fsdp|fsdp_tp`, and the TPU pod
variants `v5e_256`, `v5p_128`, `v4_128` (and their 4-chip versions `v5e_4`, `v5p_8`, `v4_8`): preset, remat
policy and clips per chip chosen from ahead-of-time TPU compiles (`python -m streamformer_jax.train.aot`; table and
method in docs/training.md, "TPU pods"): compiled and estimated on a CPU, not measured on a TPU. They keep the
recipe's 7 micro-batches per optimizer step, so the optimizer batch grows with the slice (chips x clips per chip
x 7) and the learning rate follows the original's linear rule, 2e-5 x clips per step / 256.
Any field can be overridden with `--config.key=value`; a misspelt key is an error.
"""
import ml_collections

from streamformer_jax.train.config_files import load_sibling

common = load_sibling(__file__, "common")  # configs are loaded by path, so their helpers too

# The original: 16 clips per GPU x 8 GPUs per micro-batch, update_freq 7.
ORIGINAL_MICRO_BATCH = 128
ORIGINAL_ACCUM = 7

# TPU slices (v4 / v5p "-N" counts TensorCores: v5p-128 and v4-128 are 64 chips): (chips, sharding preset, remat
# policy, clips per chip, scan the blocks). From the ahead-of-time sweep of docs/training.md ("TPU pods").
# Remat by name: keep each block's attention inputs/outputs and the residual after the spatial attention; recompute
# the layer norms, the softmaxes and the MLP (`models/block.py:CHECKPOINT_NAMES`).
REMAT_BY_NAME = "names:temporal_qkv,temporal_attended,spatial_qkv,spatial_attended,spatial_residual"
POD_VARIANTS = {
    "v5e_256": (256, "dp", "full", 16, True),
    "v5p_128": (64, "dp", "none", 16, True),
    "v4_128": (64, "dp", REMAT_BY_NAME, 16, True),
    "v5e_4": (4, "dp", "full", 16, True),
    "v5p_8": (4, "dp", "none", 16, True),
    "v4_8": (4, "dp", REMAT_BY_NAME, 16, True),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = common.parse_arg(arg, variant="", tiny=False, steps=0, mesh="")
    tiny = arg.tiny or arg.variant == "tiny"
    if arg.variant not in ("", "tiny", *POD_VARIANTS):
        raise ValueError(f"unknown variant {arg.variant!r}; choose from '' (the original recipe), 'tiny' or a TPU "
                         f"slice: {', '.join(POD_VARIANTS)}")

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
    if arg.variant in POD_VARIANTS:
        chips, preset, remat, per_chip, scan = POD_VARIANTS[arg.variant]
        config.mesh.data, config.mesh.fsdp, config.mesh.tensor = {"dp": (-1, 1, 1), "fsdp": (1, -1, 1)}[preset]
        config.mesh.rules = preset
        config.model.remat_policy = remat
        config.model.scan_layers = scan
        config.micro_batch_size = chips * per_chip
        config.optim.lr = 2e-5 * config.micro_batch_size * config.accum_steps / 256
    if arg.steps:
        config.total_steps = arg.steps
    if arg.mesh:
        presets = {"dp": (-1, 1, 1), "fsdp": (1, -1, 1), "fsdp_tp": (1, -1, 2)}
        config.mesh.data, config.mesh.fsdp, config.mesh.tensor = presets[arg.mesh]
        config.mesh.rules = arg.mesh
    return config
