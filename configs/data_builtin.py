"""The tiny built-in dataset (every task, a few synthetic encoded clips) at small sizes, for the quickstart
and smoke tests. `get_config("some/cache/dir")` (or `--config=configs/data_builtin.py:some/cache/dir`)."""
from streamformer_jax.train.config_files import load_sibling


def get_config(cache_dir: str = "builtin_data"):
    config = load_sibling(__file__, "data_pretrain").get_config()  # configs are loaded by path, so siblings too
    config.builtin_dir = cache_dir
    config.global_batch_size = 8
    config.num_frames = 8
    config.image_size = 32
    config.worker_count = 0
    for name in config.tasks:
        config.tasks[name].patch_size = 8
        config.tasks[name].clip_seconds = 3.0  # Built-in clips are 5 s long.
        config.tasks[name].randaugment = ""  # Keep the quickstart fast and its colours checkable.
    return config
