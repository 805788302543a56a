"""Torch-free helpers for official checkpoints that hold more than the backbone.

* `split_backbone`: the `timesformer.*` backbone vs everything else of the pretraining wrapper
  (`StreamformerForMultiTaskingSigLIP`: task heads, per-head logit scale/bias, VIS head, text encoder).
* `infer_config`: a `StreamFormerConfig` from the backbone's tensor shapes (for `.pth` files, which have no
  config.json).
* `pretrain_extras.safetensors`: the non-backbone tensors, kept beside our checkpoint under their original
  names, with the alias map (tensors that `torch.save` stored once under several names) and the original key
  order in the safetensors metadata, so a later export to `.pth` can rebuild the wrapper's state dict.
"""
from __future__ import annotations

import collections
import json
import os
import pathlib
import re
from typing import Mapping

import numpy as np
import safetensors.numpy
from safetensors import safe_open

from streamformer_jax.convert.keymap import MASK_BUFFER, OFFICIAL_PREFIX
from streamformer_jax.models.config import StreamFormerConfig

EXTRAS_FILE = "pretrain_extras.safetensors"
EXTRAS_CONTENT = "streamformer_jax pretraining extras v1"
HEAD_DIM = 64  # every SigLIP / ViT-B-family backbone; used only when the head count must be guessed


class ConversionError(ValueError):
    """A user-facing problem with an input file or an option (reported by the CLI as one message)."""


def split_backbone(state: Mapping[str, object], prefix: str = OFFICIAL_PREFIX) -> tuple[dict, dict]:
    """-> (backbone without prefix, everything else). Without any prefixed key, all keys are the backbone."""
    if not any(k.startswith(prefix) for k in state):
        return dict(state), {}
    backbone = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    others = {k: v for k, v in state.items() if not k.startswith(prefix)}
    return backbone, others


def nonstandard_buffers(backbone: Mapping[str, np.ndarray], config: StreamFormerConfig) -> list[str]:
    """Mask buffers whose value is not `tril(ones(F, F))` (an export rewrites them as tril)."""
    tril = np.tril(np.ones((config.num_frames, config.num_frames), np.float32))
    bad = []
    for l in range(config.num_layers):
        key = MASK_BUFFER.format(l=l)
        if key in backbone:
            value = np.asarray(backbone[key])
            if value.shape != tril.shape or not np.array_equal(value.astype(np.float32), tril):
                bad.append(key)
    return bad


def read_safetensors_dir(path: pathlib.Path) -> dict[str, np.ndarray]:
    """`model.safetensors`, or the shards listed in `model.safetensors.index.json`."""
    path = pathlib.Path(path)
    index = path / "model.safetensors.index.json"
    if (path / "model.safetensors").is_file():
        files = [path / "model.safetensors"]
    elif index.is_file():
        try:
            files = sorted({path / f for f in json.loads(index.read_text())["weight_map"].values()})
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise ConversionError(f"{index}: not a safetensors index ({type(e).__name__}: {e})") from None
    else:
        raise ConversionError(f"{path}: no model.safetensors (PyTorch .bin weights are not supported: "
                              "re-save with save_pretrained(safe_serialization=True))")
    state = {}
    for f in files:
        try:
            state.update(safetensors.numpy.load_file(str(f)))
        except Exception as e:  # safetensors raises its own error types
            raise ConversionError(f"{f}: cannot read safetensors file ({e})") from None
    return state


# ---- config inference from tensor shapes ----
_REQUIRED_FOR_INFERENCE = (
    "embeddings.patch_embeddings.projection.weight",
    "embeddings.position_embeddings",
    "embeddings.time_embeddings",
    "encoder.layer.0.intermediate.dense.weight",
)
_LAYER_RE = re.compile(r"^encoder\.layer\.(\d+)\.")


def infer_config(shapes: Mapping[str, tuple[int, ...]], num_heads: int | None = None
                 ) -> tuple[StreamFormerConfig, list[str]]:
    """Backbone key -> shape (no prefix) -> (config, notes explaining each guess)."""
    missing = [k for k in _REQUIRED_FOR_INFERENCE if k not in shapes]
    if missing:
        raise ConversionError("cannot infer the model config from the tensor shapes (missing "
                              + ", ".join(missing) + "); pass --config CONFIG_JSON")
    d_out, channels, ph, pw = _shape(shapes, "embeddings.patch_embeddings.projection.weight", 4)
    pos = _shape(shapes, "embeddings.position_embeddings", 3)
    time = _shape(shapes, "embeddings.time_embeddings", 3)
    mlp, hidden = _shape(shapes, "encoder.layer.0.intermediate.dense.weight", 2)
    if ph != pw or len({d_out, pos[2], time[2], hidden}) != 1:
        raise ConversionError(f"inconsistent backbone shapes (patch kernel {(d_out, channels, ph, pw)}, position "
                              f"table {pos}, time table {time}, MLP {(mlp, hidden)}); pass --config CONFIG_JSON")
    grid = int(round(pos[1] ** 0.5))
    if grid * grid != pos[1]:
        raise ConversionError(f"{pos[1]} position embeddings is not a square patch grid; pass --config CONFIG_JSON")
    layer_ids = sorted({int(m.group(1)) for k in shapes if (m := _LAYER_RE.match(k))})
    if layer_ids != list(range(len(layer_ids))):
        raise ConversionError(f"encoder layer indices are not 0..L-1: {layer_ids}")
    notes = []
    if num_heads is None:
        if hidden % HEAD_DIM:
            raise ConversionError(f"hidden size {hidden} is not a multiple of {HEAD_DIM}: the number of attention "
                                  "heads cannot be guessed; pass --num-heads")
        num_heads = hidden // HEAD_DIM
        notes.append(f"num_heads={num_heads} assumed (hidden {hidden} / head dim {HEAD_DIM}; "
                     "override with --num-heads)")
    lora_key = "encoder.layer.0.attention.attention.qkv_lora_a.weight"
    lora_rank = int(shapes[lora_key][0]) if lora_key in shapes else 0
    notes.append(f"spatial LoRA rank {lora_rank} ({'from ' + lora_key if lora_rank else 'no LoRA keys'})")
    has_mask = MASK_BUFFER.format(l=0) in shapes
    notes.append("causal temporal attention: " + ("mask buffers present" if has_mask else
                                                   "no mask buffers, assuming the released default (causal)"))
    notes.append("hidden_act: exact erf GELU, layer_norm_eps 1e-6 (the official defaults)")
    try:
        config = StreamFormerConfig(
            hidden_size=hidden, num_layers=len(layer_ids), num_heads=num_heads, mlp_size=mlp,
            image_size=grid * ph, patch_size=ph, num_frames=time[1], num_channels=channels,
            lora_rank=lora_rank, causal_temporal=True)
    except ValueError as e:
        raise ConversionError(f"inferred config is invalid ({e}); pass --config or --num-heads") from None
    return config, notes


def _shape(shapes, key, ndim):
    shape = tuple(int(s) for s in shapes[key])
    if len(shape) != ndim:
        raise ConversionError(f"{key} has shape {shape}, expected {ndim} dimensions")
    return shape


# ---- aliases and the extras file ----
def resolve_aliases(identities: Mapping[str, object], preferred: set[str] = frozenset()
                    ) -> dict[str, str]:
    """Key -> storage identity (None: never aliased) -> {alias: canonical key}.

    The canonical key of a group is its first `preferred` member (the backbone, kept in our checkpoint),
    else its first member in the original order.
    """
    groups: dict[object, list[str]] = collections.defaultdict(list)
    for key, ident in identities.items():
        if ident is not None:
            groups[ident].append(key)
    aliases = {}
    for keys in groups.values():
        if len(keys) > 1:
            canonical = next((k for k in keys if k in preferred), keys[0])
            aliases.update({k: canonical for k in keys if k != canonical})
    return aliases


def prefix_of(key: str) -> str:
    """Summary group of a wrapper key: `task_heads.<Task>`, `text_encoder`, or the top-level name."""
    parts = key.split(".")
    return ".".join(parts[:2]) if parts[0] == "task_heads" and len(parts) > 2 else parts[0]


def summarize_extras(keys: list[str], aliases: Mapping[str, str]) -> list[str]:
    counts: dict[str, list[int]] = {}
    for k in keys:
        c = counts.setdefault(prefix_of(k), [0, 0])
        c[0] += 1
        c[1] += k in aliases
    width = max((len(p) for p in counts), default=0)
    return [f"  {p:<{width}}  {n:5d}" + (f"  ({a} aliases)" if a else "") for p, (n, a) in counts.items()]


def extras_path(ckpt_dir: str | os.PathLike) -> pathlib.Path:
    return pathlib.Path(ckpt_dir) / EXTRAS_FILE


def write_extras(ckpt_dir: str | os.PathLike, tensors: Mapping[str, object], aliases: Mapping[str, str],
                 order: list[str], source: str) -> pathlib.Path:
    """Stored tensors (NumPy arrays or torch tensors, never aliases of each other) + alias map + key order."""
    path = extras_path(ckpt_dir)
    metadata = {"format": "pt", "content": EXTRAS_CONTENT, "source": str(source),
                "aliases": json.dumps(dict(aliases), sort_keys=True), "order": json.dumps(list(order))}
    tmp = path.with_name(path.name + ".tmp")
    if any(not isinstance(v, np.ndarray) for v in tensors.values()):
        from safetensors.torch import save_file  # torch tensors: torch is an optional dependency

        # clone: views of one storage (or non-contiguous tensors) cannot be written by safetensors.torch
        save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    else:
        safetensors.numpy.save_file({k: np.asarray(v, order="C") for k, v in tensors.items()}, str(tmp),
                                    metadata=metadata)  # keeps 0-dim
    os.replace(tmp, path)
    return path


def read_extras(ckpt_dir: str | os.PathLike, framework: str = "np"
                ) -> tuple[dict[str, object], dict[str, str], list[str]] | None:
    """-> (stored tensors, {alias: canonical}, original key order), or None if the checkpoint has no extras."""
    path = extras_path(ckpt_dir)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework=framework) as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise ConversionError(f"{path}: cannot read ({e})") from None
    if meta.get("content") != EXTRAS_CONTENT:
        raise ConversionError(f"{path}: not a streamformer_jax extras file")
    return tensors, json.loads(meta.get("aliases", "{}")), json.loads(meta.get("order", "[]"))
