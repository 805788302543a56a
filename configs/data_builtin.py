"""The tiny built-in dataset (every task, a few synthetic encoded clips) at small sizes, for the quickstart
and smoke tests. `get_config("some/cache/dir")` (or `--config=configs/data_builtin.py:some/cache/dir`)."""
import importlib.util
import pathlib


def _pretrain_config():
    # Config files are loaded by path (ml_collections config_flags), so load the sibling file by path too.
    spec = importlib.util.spec_from_file_location("data_pretrain", pathlib.Path(__file__).with_name("data_pretrain.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config(cache_dir: str = "builtin_data"):
    config = _pretrain_config()
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
