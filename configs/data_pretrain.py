"""Input pipeline settings for multitask pretraining (spec §5.4, §6). Usage:

    config = configs.data_pretrain.get_config()
    config.tasks.kinetics.data_dir = "/data/records/kinetics"   # converter output directories
    it = data_pipelines.pipeline.loader.make_train_iterator(config, mesh=mesh)

Set a task's data_dir to "" (or its weight to 0) to leave it out of the mix. The tasks, their order and their
augmentation defaults come from the task registry (`TaskSpec.pipeline_defaults`, `streamformer_jax.tasks`).
"""
import ml_collections

from streamformer_jax.tasks import registry


def task_config(crop: str = "short_side", flip: bool = True, **overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.data_dir = ""
    c.crop = crop  # "rrc" = random resized crop (§6.3); "short_side" = short-side resize + random crop.
    c.flip = flip  # Whole-clip horizontal flip with p = 0.5 (always off for ssv2, whatever this says).
    c.rrc_scale = (0.08, 1.0)
    c.rrc_ratio = (3 / 4, 4 / 3)
    c.scale_jitter = (1.0, 1.0)  # Short-side scale range; (1.0, 1.25) zooms in by up to 25%.
    c.clip_seconds = 16.0  # Grounding: fixfps window length in seconds (the original: its 16 frames, as seconds).
    c.patch_size = 16  # The model's patch size (VIS targets at mask_resolution="patch").
    # VIS targets: "input" = per pixel of the input (the original's loss on logits upsampled bilinearly to the
    # input) or "patch" = one per patch (a cheaper loss without the upsampling). Other tasks ignore it.
    c.mask_resolution = "input"
    c.randaugment = ""  # e.g. "rand-m7-n4-mstd0.5-inc1" (the original's Kinetics/SSv2 setting); "" = off.
    c.randaugment_interpolation = "bicubic"  # Geometric RandAugment ops; "bilinear" is ~3x cheaper.
    c.update(overrides)
    return c


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 42
    config.global_batch_size = 128  # Clips per micro-batch over all hosts (the original: 16 per GPU x 8).
    config.num_frames = 16
    config.image_size = 224
    config.data_axes = ("data",)  # Mesh axes the batch dimension is split over.
    # Host-side parallelism: decode/augment worker processes, each handing over whole batches.
    config.worker_count = 8
    config.worker_buffer_size = 2
    config.read_threads = 1
    config.read_buffer_size = 2
    # Mixture (§5.4): one task per micro-batch, visited in task_order. Empty task_weights = the original's
    # sampler over the tasks' samples (balancing, per-epoch reshuffles, cycles of f_k batches per task;
    # data_pipelines/pipeline/mixture.py); otherwise {task: consecutive micro-batches per cycle}.
    config.task_order = registry.names()
    config.task_weights = ml_collections.ConfigDict()
    config.balance_scale = 2.0
    config.builtin_dir = ""  # When set, use (and build if needed) the tiny built-in dataset there.
    config.tasks = ml_collections.ConfigDict({s.name: task_config(**s.pipeline_defaults) for s in registry.specs()})
    return config
