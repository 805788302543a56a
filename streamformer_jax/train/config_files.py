"""Training configs are Python files (`configs/*.py` with an ml-collections `get_config(arg)`), loaded by path as
ml-collections' `config_flags` does (the `configs/` directory is not a package). One loader for the configs'
shared helpers, the tests and the scripts."""
from __future__ import annotations

import importlib.util
import pathlib
import types

import ml_collections

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[2] / "configs"


def load_module(path: str | pathlib.Path) -> types.ModuleType:
    """Execute the Python file `path` as a module of its own (a fresh copy per call)."""
    path = pathlib.Path(path)
    spec = importlib.util.spec_from_file_location(f"_sf_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_sibling(file: str | pathlib.Path, name: str) -> types.ModuleType:
    """`<name>.py` from the directory of `file` (a config file loading the configs' shared helpers)."""
    return load_module(pathlib.Path(file).with_name(f"{name}.py"))


def set_overrides(config: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
    """`{"checkpoint.every_steps": 2, ...}` -> set in place, as `--config.checkpoint.every_steps=2` would."""
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def load_config(name_or_path: str | pathlib.Path, arg: str | None = None) -> ml_collections.ConfigDict:
    """`get_config(arg)` of a config file: a path, or a name in the repository's `configs/` directory."""
    path = pathlib.Path(name_or_path)
    if path.suffix != ".py":
        path = CONFIG_DIR / f"{name_or_path}.py"
    module = load_module(path)
    return module.get_config() if arg is None else module.get_config(arg)
