"""Shared pieces of the training configs (`configs/pretrain_multitask.py`, `configs/finetune_*.py`).

Config files are loaded by path (ml_collections `config_flags`), so they load this module by path too
(`streamformer_jax.train.config_files.load_sibling`). Every config is a plain `ml_collections.ConfigDict`; the
trainer locks it, so an override of a key that does not exist (`--config.totl_steps=5`) is an error.
"""
from __future__ import annotations

import ml_collections

from streamformer_jax.models.config import get_preset
from streamformer_jax.train.config_files import load_sibling


def parse_arg(arg: str | None, **defaults):
    """big_vision-style `file.py:variant,key=value,flag` → ConfigDict of typed options.

    The first entry may be given bare (it sets the first default's key); `flag` alone means True.
    Types follow the defaults (bool / int / float / str).
    """
    out = ml_collections.ConfigDict(dict(defaults))
    if not arg:
        return out
    keys = list(defaults)
    for i, item in enumerate(a for a in arg.split(",") if a):
        if "=" in item:
            key, value = item.split("=", 1)
        elif i == 0 and keys and not isinstance(defaults[keys[0]], bool):
            key, value = keys[0], item
        else:
            key, value = item, "True"
        if key not in defaults:
            raise ValueError(f"unknown config option {key!r} in {arg!r}; known: {sorted(defaults)}")
        kind = type(defaults[key])
        if kind is bool:
            out[key] = value.lower() in ("1", "true", "yes", "")
        else:
            out[key] = kind(value)
    return out


def model_config(preset: str = "vit_b16", **overrides) -> ml_collections.ConfigDict:
    """Backbone architecture: a preset of `streamformer_jax.models.config` plus field overrides."""
    c = ml_collections.ConfigDict()
    c.kind = "multitask"  # model + loss family (see streamformer_jax.train.model_kinds.register_model_kind)
    c.preset = preset
    c.dtype = "bfloat16"  # matmul compute dtype; parameters (master weights) are always float32
    c.remat_policy = "none"  # "none" or a jax.checkpoint_policies name, e.g. "nothing_saveable"
    c.scan_layers = False  # trace the blocks as one lax.scan (same parameters and names; one block to compile)
    # The architecture (StreamFormerConfig fields), filled from the preset so each can be overridden.
    c.overrides = architecture(preset, **overrides)
    c.init = ""  # backbone checkpoint to start from: ours or an official HF directory ("" = random init)
    c.trainable = "original"  # "original": spatial qkv/out base frozen, LoRA + rest trained; "all"
    return c


ARCH_FIELDS = ("hidden_size", "num_layers", "num_heads", "mlp_size", "image_size", "patch_size", "num_frames",
               "lora_rank", "causal_temporal")


def architecture(preset: str, **overrides) -> ml_collections.ConfigDict:
    arch = get_preset(preset, **overrides)
    return ml_collections.ConfigDict({k: getattr(arch, k) for k in ARCH_FIELDS})


def text_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # Path to a converted SigLIP text tower; "" = a deterministic random-initialised tiny tower (tests/quickstart).
    c.checkpoint = ""
    c.tokenizer = ""  # SentencePiece model for a real tower ("" = look in `checkpoint`)
    c.seed = 0
    c.max_length = 64  # tokens per text (the original pads to 64)
    # Without a text tower (checkpoint == "" and none in model.init): False = stop with an error (the recipe);
    # True = use the random tower below (the tiny variant and tests).
    c.allow_random = False
    # The random tower used when checkpoint == "" (hidden_size 0 = the backbone's width, mlp_size 0 = 2x).
    # init_scale multiplies its initial kernels and embeddings (SigLIP's std 0.02); scripts/pretrain_quality.py
    # uses 25 with 4 layers x 8 heads so that the built-in captions get distinct embeddings.
    c.random = ml_collections.ConfigDict(dict(vocab_size=4096, hidden_size=0, mlp_size=0, num_layers=1,
                                              num_heads=4, init_scale=1.0))
    return c


def optim_config(lr: float, weight_decay: float = 0.05, warmup_steps: int = 0) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.lr = lr
    c.min_lr = 0.0
    c.warmup_steps = warmup_steps  # linear warm-up from warmup_lr, then cosine to min_lr over the rest of the run
    c.warmup_epochs = 0.0  # alternative to warmup_steps when the run length is given in epochs
    c.warmup_lr = 0.0
    c.b1 = 0.9
    c.b2 = 0.999
    c.eps = 1e-8
    c.weight_decay = weight_decay
    c.clip_grad_norm = 0.0  # 0 = no clipping (the original); the norm is always logged
    c.mu_dtype = ""  # "" = float32 first moment; "bfloat16" halves its memory
    return c


def mesh_config(data: int = -1, fsdp: int = 1, tensor: int = 1, rules: str = "dp") -> ml_collections.ConfigDict:
    """One (data, fsdp, tensor) mesh; `rules` is a preset of streamformer_jax.sharding.RULES (dp/fsdp/fsdp_tp)."""
    c = ml_collections.ConfigDict()
    c.data, c.fsdp, c.tensor = data, fsdp, tensor
    c.rules = rules
    return c


def checkpoint_config(every_steps: int = 1000, keep: int = 3) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.every_steps = every_steps
    c.keep = keep  # the last K checkpoints are kept
    c.async_save = True
    return c


def distributed_config() -> ml_collections.ConfigDict:
    """jax.distributed: "auto" initialises on TPU pods / SLURM / when the env vars below are set."""
    c = ml_collections.ConfigDict()
    c.initialize = "auto"  # "auto" | "yes" | "no"
    c.coordinator_address = ""  # or env JAX_COORDINATOR_ADDRESS
    c.num_processes = 0  # or env JAX_NUM_PROCESSES
    c.process_id = -1  # or env JAX_PROCESS_ID
    return c


def base_config() -> ml_collections.ConfigDict:
    """Fields every training config has."""
    c = ml_collections.ConfigDict()
    c.seed = 42
    c.total_steps = 1000  # run length in optimizer steps; -1 = derive from `epochs`
    c.epochs = 0.0  # used when total_steps == -1: epochs x (clips in the mix) / clips per step
    c.micro_batch_size = 128  # global clips per micro-batch (all hosts); one task per micro-batch
    c.accum_steps = 1  # micro-batches per optimizer step (gradient accumulation)
    c.tasks = ""  # comma-separated subset of the task mix, e.g. "kinetics,retrieval" ("" = every task with data)
    c.data_dir = ""  # converted data root with one sub-directory per task ("" = the built-in small dataset)
    c.builtin_dir = ""  # where the built-in dataset is cached ("" = WORKDIR/../builtin_data)
    c.log_every = 10
    c.progress_bar = True
    c.compilation_cache_dir = ""  # JAX persistent compilation cache ("" = off); speeds up restarts
    c.peak_tflops_per_device = 0.0  # MFU denominator; 0 = look up the device kind (bf16 dense peak)
    c.mesh = mesh_config()
    c.checkpoint = checkpoint_config()
    c.distributed = distributed_config()
    c.text = text_config()
    # Zero-shot evaluation of retrieval / grounding / localization during training (train/zero_shot_eval.py).
    c.eval_every = 0  # every N optimizer steps (and after the last one); 0 = off
    c.eval = eval_config()
    return c


def eval_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.tasks = "retrieval,grounding,localization"  # those the model has are evaluated
    c.data_dir = ""  # held-out records (<task>/ sub-directories); "" = held-out built-in clips (built-in data only)
    c.num_frames = 0  # frames per clip (0 = the model's)
    c.batch_size = 0  # clips per batch per host (0 = 2 per device)
    c.max_items = 0  # records per task (0 = all)
    return c


def finalize_data(config: ml_collections.ConfigDict, data: ml_collections.ConfigDict) -> None:
    """Attach a data-pipeline config (configs/data_*.py) with the run's clip shape and batch size."""
    data.global_batch_size = config.micro_batch_size
    data.seed = config.seed
    data.data_axes = ("data", "fsdp")
    config.data = data


def tiny_overrides(config: ml_collections.ConfigDict) -> None:
    """Shrink a config so that it trains on the built-in dataset on a 2-core CPU in about a minute."""
    config.model.preset = "tiny"
    config.model.overrides = architecture("tiny", num_frames=4, image_size=32, patch_size=16, lora_rank=4)
    config.model.dtype = "float32"  # bf16 gives no speed-up on CPUs (the recipe uses bf16)
    config.micro_batch_size = 8
    config.total_steps = 20
    config.log_every = 1
    config.checkpoint.every_steps = 10
    config.checkpoint.keep = 2
    config.peak_tflops_per_device = 0.205  # this project's 2-core CPU, float32 matmul peak
    config.text.max_length = 16
    config.text.allow_random = True  # no SigLIP download on a CPU: the documented random text tower
    data = load_sibling(__file__, "data_builtin").get_config()
    data.num_frames = 4
    data.image_size = 32
    for name in data.tasks:
        data.tasks[name].patch_size = 16
    finalize_data(config, data)


def classifier_config(task: str) -> ml_collections.ConfigDict:
    """The "classifier" model kind's head (streamformer_jax.train.classifier_kind)."""
    c = ml_collections.ConfigDict()
    c.task = task  # the task whose labels are classified (one of the data tasks)
    c.num_classes = 0  # 0 = the number of class names in the task's metadata.json
    # "mean": per-frame MAP vectors averaged over frames; "last": the last frame's; "official_bug": the original
    # AR model's grouping (only to continue from the released AR checkpoints).
    c.pooling = "mean"
    c.export_ar_checkpoint = False  # also write WORKDIR/export/ar_checkpoint.pt (the original AR layout; torch)
    return c


def augment_config() -> ml_collections.ConfigDict:
    """Batch-level regularisation of the finetuning loss (spec §7.1; streamformer_jax.train.regularisation)."""
    c = ml_collections.ConfigDict()
    c.mixup = 0.8  # mixup alpha; 0 = off
    c.cutmix = 1.0  # cutmix alpha; 0 = off
    c.mix_prob = 1.0  # probability that a micro-batch is mixed
    c.switch_prob = 0.5  # probability of cutmix rather than mixup when both are on
    c.label_smoothing = 0.1
    c.random_erasing = 0.25  # per-frame probability of one N(0, 1)-filled box
    return c


def finetune_config(task: str, arg: str | None) -> ml_collections.ConfigDict:
    """Single-task action-recognition finetuning from a pretrained StreamFormer, as the original (spec §7.1).

    Model kind "classifier": backbone -> per-frame MAP pooling averaged over frames -> fc_norm -> linear
    classifier; spatial base qkv/out frozen, LoRA and everything else trained; soft-target cross-entropy with
    mixup 0.8 / cutmix 1.0 (prob 1.0, switch 0.5), label smoothing 0.1 and random erasing 0.25 (`augment`);
    RandAugment rand-m7-n4-mstd0.5-inc1 in the data pipeline. The run's `WORKDIR/export` holds the backbone and
    the head for `python -m eval.action_recognition evaluate`.
    """
    arg = parse_arg(arg, variant="", steps=0)
    if arg.variant not in ("", "tiny"):
        raise ValueError(f"unknown variant {arg.variant!r}; choose from '' or 'tiny'")
    config = base_config()
    config.name = f"finetune_{task}"
    config.model = model_config("vit_b16")
    config.model.kind = "classifier"
    config.model.classifier = classifier_config(task)
    config.augment = augment_config()
    config.tasks = task  # only this task's records count (e.g. for the epoch length)
    config.micro_batch_size = 128  # 16 per GPU x 8 GPUs
    config.accum_steps = 1
    # lr 2e-4 x total_batch x num_sample(2) / 256, 5 warm-up epochs, cosine to 1e-6 (scaled the same way).
    config.optim = optim_config(lr=2e-4 * 128 * 2 / 256, weight_decay=0.05)
    config.optim.min_lr = 1e-6 * 128 * 2 / 256
    config.optim.warmup_lr = 1e-6 * 128 * 2 / 256
    config.optim.warmup_epochs = 5.0
    config.total_steps = -1
    config.epochs = 30.0
    config.log_every = 50
    data = load_sibling(__file__, "data_pretrain").get_config()  # RandAugment on for kinetics and ssv2
    finalize_data(config, data)
    if arg.variant == "tiny":
        # The built-in dataset (kinetics: 8 clips, label = colour) without RandAugment, whose colour ops
        # (invert, solarize, posterize, ...) would rewrite that label; the batch regularisation stays on.
        tiny_overrides(config)
        config.total_steps = 40
        config.checkpoint.every_steps = 20
        config.optim.lr, config.optim.warmup_epochs, config.optim.warmup_steps = 1e-3, 0.0, 2
        config.optim.min_lr = config.optim.warmup_lr = 0.0
    config.data.task_order = (task,)
    config.data.task_weights = ml_collections.ConfigDict({task: 1})
    if arg.steps:
        config.total_steps = arg.steps
    return config
