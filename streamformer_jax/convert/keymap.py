"""The backbone's key map: official PyTorch state-dict keys <-> our parameter names (`backbone_rules`), applied
by the rule engine (`streamformer_jax.key_rules`).

One table names, for every parameter of ours, the official key it comes from, its layout transform, and (for
the MAP head's packed `in_proj`) which third of the rows. `{l}` expands over layers. Import, export and the
SigLIP initialisation are all driven by this table.
"""
from __future__ import annotations

import functools
from typing import Mapping

import numpy as np

from streamformer_jax.key_rules import Rule, expand, layer_norm, linear, to_ours, to_theirs
from streamformer_jax.models.config import StreamFormerConfig
from streamformer_jax.models.params import param_shapes
from streamformer_jax.param_tree import check_params

_LAYER = [
    Rule("layers.{l}.temporal_gate", "encoder.layer.{l}.temporal_attention_gating", "vector"),
    *layer_norm("layers.{l}.temporal_layernorm", "encoder.layer.{l}.temporal_layernorm"),
    *linear("layers.{l}.temporal_attention.qkv", "encoder.layer.{l}.temporal_attention.attention.qkv"),
    *linear("layers.{l}.temporal_attention.out", "encoder.layer.{l}.temporal_attention.output.dense", n_in=2),
    *linear("layers.{l}.temporal_dense", "encoder.layer.{l}.temporal_dense"),
    *layer_norm("layers.{l}.layernorm_before", "encoder.layer.{l}.layernorm_before"),
    *linear("layers.{l}.attention.qkv.base", "encoder.layer.{l}.attention.attention.qkv"),
    Rule("layers.{l}.attention.qkv.lora_a.kernel", "encoder.layer.{l}.attention.attention.qkv_lora_a.weight",
         "linear", lora_only=True),
    Rule("layers.{l}.attention.qkv.lora_b.kernel", "encoder.layer.{l}.attention.attention.qkv_lora_b.weight",
         "linear", lora_only=True),
    *linear("layers.{l}.attention.out.base", "encoder.layer.{l}.attention.output.dense", n_in=2),
    Rule("layers.{l}.attention.out.lora_a.kernel", "encoder.layer.{l}.attention.output.dense_lora_a.weight",
         "linear", n_in=2, lora_only=True),
    Rule("layers.{l}.attention.out.lora_b.kernel", "encoder.layer.{l}.attention.output.dense_lora_b.weight",
         "linear", lora_only=True),
    *layer_norm("layers.{l}.layernorm_after", "encoder.layer.{l}.layernorm_after"),
    *linear("layers.{l}.mlp.fc1", "encoder.layer.{l}.intermediate.dense"),
    *linear("layers.{l}.mlp.fc2", "encoder.layer.{l}.output.dense"),
]
_GLOBAL = [
    Rule("embeddings.patch_kernel", "embeddings.patch_embeddings.projection.weight", "conv"),
    Rule("embeddings.patch_bias", "embeddings.patch_embeddings.projection.bias", "vector"),
    Rule("embeddings.position_embeddings", "embeddings.position_embeddings", "table"),
    Rule("embeddings.time_embeddings", "embeddings.time_embeddings", "table"),
    *layer_norm("post_layernorm", "post_layernorm"),
    Rule("head.probe", "head.probe", "probe"),
    # the MAP head's packed in_proj: rows [q; k; v]
    *[Rule(f"head.{name}.kernel", "head.attention.in_proj_weight", "linear", part=i)
      for i, name in enumerate(("query", "key", "value"))],
    *[Rule(f"head.{name}.bias", "head.attention.in_proj_bias", "vector", part=i)
      for i, name in enumerate(("query", "key", "value"))],
    *linear("head.out", "head.attention.out_proj", n_in=2),
    *layer_norm("head.layernorm", "head.layernorm"),
    *linear("head.mlp.fc1", "head.mlp.fc1"),
    *linear("head.mlp.fc2", "head.mlp.fc2"),
]
# Buffers the official class registers (unused by its forward) and a strict load requires.
MASK_BUFFER = "encoder.layer.{l}.temporal_attention.attention.mask"
OFFICIAL_PREFIX = "timesformer."


@functools.lru_cache(maxsize=16)
def _param_shapes(config: StreamFormerConfig) -> dict[str, tuple[int, ...]]:
    """Cached: tracing the abstract model costs seconds on small CPUs; callers only read the dict."""
    return param_shapes(config)


def backbone_rules(config: StreamFormerConfig) -> list[Rule]:
    return [*_GLOBAL, *expand(_LAYER, config.num_layers, lora=bool(config.lora_rank))]


def buffer_keys(config: StreamFormerConfig) -> list[str]:
    return [MASK_BUFFER.format(l=l) for l in range(config.num_layers)] if config.causal_temporal else []


def strip_prefix(state: Mapping[str, np.ndarray], prefix: str = OFFICIAL_PREFIX) -> dict[str, np.ndarray]:
    """Accept keys saved from the backbone (no prefix) or from the wrapper (`timesformer.` prefix)."""
    if any(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return dict(state)


def official_to_ours(state: Mapping[str, np.ndarray], config: StreamFormerConfig,
                     source: str = "checkpoint") -> dict[str, np.ndarray]:
    """Official backbone state dict (numpy arrays) -> our flat parameters. Strict: lists every problem."""
    shapes = _param_shapes(config)
    masks = {MASK_BUFFER.format(l=l) for l in range(config.num_layers)}  # buffers: optional, unused
    out = to_ours(state, backbone_rules(config), shapes,
                  f"{source} does not match a StreamFormer backbone with this config", ignored=masks)
    check_params(shapes, out, source)
    return out


def ours_to_official(params: Mapping[str, np.ndarray], config: StreamFormerConfig,
                     include_buffers: bool = True) -> dict[str, np.ndarray]:
    """Our flat parameters -> the official backbone state dict (float32, PyTorch layouts, + mask buffers)."""
    check_params(_param_shapes(config), params, "parameters")
    out = to_theirs(params, backbone_rules(config))
    if include_buffers:
        tril = np.tril(np.ones((config.num_frames, config.num_frames), np.float32))
        out.update({k: tril.copy() for k in buffer_keys(config)})
    return dict(sorted(out.items()))
