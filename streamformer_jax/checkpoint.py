"""Our model checkpoint (the weights for inference and finetuning; training state is
`streamformer_jax.train.state_checkpoints`): `DIR/streamformer_config.json` + `DIR/params/` (orbax, a plain
nested dict).

Names in the nested dict are the stable dotted parameter names split at dots
(`{"layers": {"0": {"mlp": {"fc1": {"kernel": ...}}}}}`), independent of Flax internals, so they can be
read by any orbax user. Both parts are written under temporary names and renamed when complete, and the
config is written last: a directory without it is an incomplete checkpoint.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
from typing import Mapping

import numpy as np
import orbax.checkpoint as ocp

from streamformer_jax.convert.official import is_official_dir, read_official_dir
from streamformer_jax.models.config import StreamFormerConfig
from streamformer_jax.param_tree import flatten, nest

CONFIG_FILE = "streamformer_config.json"
PARAMS_DIR = "params"
FORMAT = "streamformer_jax"
FORMAT_VERSION = 1


def is_checkpoint(path: str | os.PathLike) -> bool:
    p = pathlib.Path(path)
    return (p / CONFIG_FILE).is_file() and (p / PARAMS_DIR).is_dir()


def save_checkpoint(path: str | os.PathLike, config: StreamFormerConfig, params: Mapping[str, object],
                    extra: Mapping[str, object] | None = None) -> pathlib.Path:
    """Write our checkpoint; `extra` (JSON-able) is stored beside the config (e.g. where it came from)."""
    p = pathlib.Path(path).absolute()
    p.mkdir(parents=True, exist_ok=True)
    (p / CONFIG_FILE).unlink(missing_ok=True)  # mark incomplete while the params change
    if (p / PARAMS_DIR).exists():
        shutil.rmtree(p / PARAMS_DIR)
    tree = nest({k: np.asarray(v, dtype=np.float32) for k, v in params.items()})
    with ocp.StandardCheckpointer() as ckptr:  # orbax writes to a temporary dir and renames it
        ckptr.save(p / PARAMS_DIR, tree)
        ckptr.wait_until_finished()
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": config.to_dict(), **(extra or {})}
    tmp = p / (CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, p / CONFIG_FILE)
    return p


def read_config(path: str | os.PathLike) -> StreamFormerConfig:
    p = pathlib.Path(path)
    try:
        meta = json.loads((p / CONFIG_FILE).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{p}: not a streamformer_jax checkpoint (no {CONFIG_FILE}; "
                                "an interrupted save leaves it out)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{p / CONFIG_FILE}: not valid JSON ({e})") from None
    if meta.get("format") != FORMAT or meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{p / CONFIG_FILE}: unsupported checkpoint format "
                         f"{meta.get('format')!r} v{meta.get('format_version')}")
    return StreamFormerConfig.from_dict(meta["model"])


def load_checkpoint(path: str | os.PathLike) -> tuple[StreamFormerConfig, dict[str, np.ndarray]]:
    p = pathlib.Path(path).absolute()
    config = read_config(p)
    if not (p / PARAMS_DIR).is_dir():
        raise FileNotFoundError(f"{p}: checkpoint has no {PARAMS_DIR}/ directory")
    with ocp.StandardCheckpointer() as ckptr:
        tree = ckptr.restore(p / PARAMS_DIR)
    return config, {k: np.asarray(v) for k, v in flatten(tree).items()}


def load_any(path: str | os.PathLike) -> tuple[StreamFormerConfig, dict[str, np.ndarray]]:
    """Our checkpoint or an official Hugging Face backbone directory, detected from the files present."""
    p = pathlib.Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such checkpoint directory")
    if is_checkpoint(p):
        return load_checkpoint(p)
    if is_official_dir(p):
        return read_official_dir(p)
    raise ValueError(f"{p}: neither a streamformer_jax checkpoint ({CONFIG_FILE} + {PARAMS_DIR}/) nor an "
                     "official directory (config.json + model.safetensors)")
