"""Read and write the official Hugging Face backbone directory (`config.json` + `model.safetensors`)."""
from __future__ import annotations

import json
import os
import pathlib

import numpy as np
from safetensors.numpy import load_file, save_file

from streamformer_jax.convert.keymap import official_to_ours, ours_to_official, strip_prefix
from streamformer_jax.models.config import StreamFormerConfig

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def is_official_dir(path: str | os.PathLike) -> bool:
    p = pathlib.Path(path)
    return (p / CONFIG).is_file() and (p / WEIGHTS).is_file()


def read_official_dir(path: str | os.PathLike) -> tuple[StreamFormerConfig, dict[str, np.ndarray]]:
    """-> (config, our flat parameters). Raises a clear error naming the file on any problem."""
    p = pathlib.Path(path)
    for name in (CONFIG, WEIGHTS):
        if not (p / name).is_file():
            raise FileNotFoundError(f"{p}: not an official StreamFormer directory (no {name})")
    config = StreamFormerConfig.from_hf_json(p / CONFIG)
    try:
        state = load_file(str(p / WEIGHTS))
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt headers
        raise ValueError(f"{p / WEIGHTS}: cannot read safetensors file ({e})") from None
    return config, official_to_ours(strip_prefix(state), config, source=str(p / WEIGHTS))


def write_hf_dir(path: str | os.PathLike, state: dict[str, np.ndarray], hf_config: dict) -> pathlib.Path:
    """A Hugging Face model directory: `model.safetensors` (PyTorch-layout tensors) + `config.json`, each written
    under a temporary name and renamed when complete."""
    p = pathlib.Path(path)
    p.mkdir(parents=True, exist_ok=True)
    # metadata "pt": transformers treats anything else (e.g. "flax") as a foreign format.
    tmp = p / (WEIGHTS + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, p / WEIGHTS)
    tmp = p / (CONFIG + ".tmp")
    tmp.write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, p / CONFIG)
    return p


def write_official_dir(path: str | os.PathLike, config: StreamFormerConfig, params) -> None:
    """Write a directory that `TimesformerMultiTaskingModelSigLIP.from_pretrained` loads strictly."""
    write_hf_dir(path, ours_to_official({k: np.asarray(v) for k, v in params.items()}, config), config.to_hf_dict())
