"""Declarative map between the official PyTorch state dict and our parameter names.

One table (`BACKBONE_RULES`) names, for every parameter of ours, the official key it comes from, which of
the small layout transforms applies, and (for the MAP head's packed `in_proj`) which third of the rows.
`{l}` expands over layers. Everything else (import, export, SigLIP initialisation) is driven by this table.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Mapping

import numpy as np

from streamformer_jax.models.config import StreamFormerConfig
from streamformer_jax.models.params import check_params, param_shapes, raise_if_mismatched


# ---- layout transforms: (official tensor -> ours, ours -> official) ----
def _linear_in(t, shape, rule):  # torch Linear [out, in] -> kernel [*in, *out]
    return t.T.reshape(shape)


def _linear_out(a, rule):
    n_in = rule.n_in
    return a.reshape(int(np.prod(a.shape[:n_in])), -1).T


def _conv_in(t, shape, rule):  # Conv2d [O, C, kh, kw] -> [kh, kw, C, O]
    return t.transpose(2, 3, 1, 0).reshape(shape)


def _conv_out(a, rule):
    return a.transpose(3, 2, 0, 1)


def _reshape_in(t, shape, rule):
    return t.reshape(shape)


def _flat_out(a, rule):  # biases, LayerNorm vectors, the packed qkv bias [3, H, d] -> [3D], 0-dim gates
    return a.reshape(-1) if a.ndim else a


def _lead1_out(a, rule):  # embedding tables are stored with a leading batch axis of 1
    return a[None]


def _probe_out(a, rule):
    return a[None, None]


TRANSFORMS = {
    "linear": (_linear_in, _linear_out),
    "conv": (_conv_in, _conv_out),
    "vector": (_reshape_in, _flat_out),
    "table": (_reshape_in, _lead1_out),
    "probe": (_reshape_in, _probe_out),
}


@dataclasses.dataclass(frozen=True)
class Rule:
    ours: str
    theirs: str
    kind: str
    n_in: int = 1  # input dims of a linear kernel of ours ([H, d] inputs have 2)
    part: int | None = None  # which third of the rows of a packed [q; k; v] official tensor
    lora_only: bool = False


_LAYER = [
    Rule("layers.{l}.temporal_gate", "encoder.layer.{l}.temporal_attention_gating", "vector"),
    Rule("layers.{l}.temporal_layernorm.scale", "encoder.layer.{l}.temporal_layernorm.weight", "vector"),
    Rule("layers.{l}.temporal_layernorm.bias", "encoder.layer.{l}.temporal_layernorm.bias", "vector"),
    Rule("layers.{l}.temporal_attention.qkv.kernel", "encoder.layer.{l}.temporal_attention.attention.qkv.weight",
         "linear"),
    Rule("layers.{l}.temporal_attention.qkv.bias", "encoder.layer.{l}.temporal_attention.attention.qkv.bias",
         "vector"),
    Rule("layers.{l}.temporal_attention.out.kernel", "encoder.layer.{l}.temporal_attention.output.dense.weight",
         "linear", n_in=2),
    Rule("layers.{l}.temporal_attention.out.bias", "encoder.layer.{l}.temporal_attention.output.dense.bias",
         "vector"),
    Rule("layers.{l}.temporal_dense.kernel", "encoder.layer.{l}.temporal_dense.weight", "linear"),
    Rule("layers.{l}.temporal_dense.bias", "encoder.layer.{l}.temporal_dense.bias", "vector"),
    Rule("layers.{l}.layernorm_before.scale", "encoder.layer.{l}.layernorm_before.weight", "vector"),
    Rule("layers.{l}.layernorm_before.bias", "encoder.layer.{l}.layernorm_before.bias", "vector"),
    Rule("layers.{l}.attention.qkv.base.kernel", "encoder.layer.{l}.attention.attention.qkv.weight", "linear"),
    Rule("layers.{l}.attention.qkv.base.bias", "encoder.layer.{l}.attention.attention.qkv.bias", "vector"),
    Rule("layers.{l}.attention.qkv.lora_a.kernel", "encoder.layer.{l}.attention.attention.qkv_lora_a.weight",
         "linear", lora_only=True),
    Rule("layers.{l}.attention.qkv.lora_b.kernel", "encoder.layer.{l}.attention.attention.qkv_lora_b.weight",
         "linear", lora_only=True),
    Rule("layers.{l}.attention.out.base.kernel", "encoder.layer.{l}.attention.output.dense.weight", "linear",
         n_in=2),
    Rule("layers.{l}.attention.out.base.bias", "encoder.layer.{l}.attention.output.dense.bias", "vector"),
    Rule("layers.{l}.attention.out.lora_a.kernel", "encoder.layer.{l}.attention.output.dense_lora_a.weight",
         "linear", n_in=2, lora_only=True),
    Rule("layers.{l}.attention.out.lora_b.kernel", "encoder.layer.{l}.attention.output.dense_lora_b.weight",
         "linear", lora_only=True),
    Rule("layers.{l}.layernorm_after.scale", "encoder.layer.{l}.layernorm_after.weight", "vector"),
    Rule("layers.{l}.layernorm_after.bias", "encoder.layer.{l}.layernorm_after.bias", "vector"),
    Rule("layers.{l}.mlp.fc1.kernel", "encoder.layer.{l}.intermediate.dense.weight", "linear"),
    Rule("layers.{l}.mlp.fc1.bias", "encoder.layer.{l}.intermediate.dense.bias", "vector"),
    Rule("layers.{l}.mlp.fc2.kernel", "encoder.layer.{l}.output.dense.weight", "linear"),
    Rule("layers.{l}.mlp.fc2.bias", "encoder.layer.{l}.output.dense.bias", "vector"),
]
_GLOBAL = [
    Rule("embeddings.patch_kernel", "embeddings.patch_embeddings.projection.weight", "conv"),
    Rule("embeddings.patch_bias", "embeddings.patch_embeddings.projection.bias", "vector"),
    Rule("embeddings.position_embeddings", "embeddings.position_embeddings", "table"),
    Rule("embeddings.time_embeddings", "embeddings.time_embeddings", "table"),
    Rule("post_layernorm.scale", "post_layernorm.weight", "vector"),
    Rule("post_layernorm.bias", "post_layernorm.bias", "vector"),
    Rule("head.probe", "head.probe", "probe"),
    *[Rule(f"head.{name}.kernel", "head.attention.in_proj_weight", "linear", part=i)
      for i, name in enumerate(("query", "key", "value"))],
    *[Rule(f"head.{name}.bias", "head.attention.in_proj_bias", "vector", part=i)
      for i, name in enumerate(("query", "key", "value"))],
    Rule("head.out.kernel", "head.attention.out_proj.weight", "linear", n_in=2),
    Rule("head.out.bias", "head.attention.out_proj.bias", "vector"),
    Rule("head.layernorm.scale", "head.layernorm.weight", "vector"),
    Rule("head.layernorm.bias", "head.layernorm.bias", "vector"),
    Rule("head.mlp.fc1.kernel", "head.mlp.fc1.weight", "linear"),
    Rule("head.mlp.fc1.bias", "head.mlp.fc1.bias", "vector"),
    Rule("head.mlp.fc2.kernel", "head.mlp.fc2.weight", "linear"),
    Rule("head.mlp.fc2.bias", "head.mlp.fc2.bias", "vector"),
]
# Buffers the official class registers (unused by its forward) and a strict load requires.
MASK_BUFFER = "encoder.layer.{l}.temporal_attention.attention.mask"
OFFICIAL_PREFIX = "timesformer."


@functools.lru_cache(maxsize=16)
def _param_shapes(config: StreamFormerConfig) -> dict[str, tuple[int, ...]]:
    """Cached: tracing the abstract model costs seconds on small CPUs; callers only read the dict."""
    return param_shapes(config)


def backbone_rules(config: StreamFormerConfig) -> list[Rule]:
    rules = [r for r in _GLOBAL]
    for l in range(config.num_layers):
        for r in _LAYER:
            if r.lora_only and not config.lora_rank:
                continue
            rules.append(dataclasses.replace(r, ours=r.ours.format(l=l), theirs=r.theirs.format(l=l)))
    return rules


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
    rules = backbone_rules(config)
    shapes = _param_shapes(config)
    expected_theirs = {r.theirs for r in rules}
    optional = set(buffer_keys(config)) | {MASK_BUFFER.format(l=l) for l in range(config.num_layers)}
    unexpected = sorted(set(state) - expected_theirs - optional)
    missing = sorted(expected_theirs - set(state))
    problems = []
    out = {}
    for r in rules:
        if r.theirs not in state:
            continue
        t = np.asarray(state[r.theirs], dtype=np.float32)
        if r.part is not None:
            if t.shape[0] % 3:
                problems.append(f"{r.theirs}: {t.shape} cannot be split into q, k, v")
                continue
            n = t.shape[0] // 3
            t = t[r.part * n:(r.part + 1) * n]
        want = shapes[r.ours]
        if t.size != int(np.prod(want)) or (r.kind in ("linear", "conv") and t.ndim != {"linear": 2, "conv": 4}[r.kind]):
            problems.append(f"{r.theirs}: shape {tuple(np.shape(state[r.theirs]))} does not fit {r.ours} {want}")
            continue
        out[r.ours] = np.array(TRANSFORMS[r.kind][0](t, want, r), dtype=np.float32, order="C")
    raise_if_mismatched(f"{source} does not match a StreamFormer backbone with this config", missing, unexpected,
                        problems)
    check_params(shapes, out, source)
    return out


def ours_to_official(params: Mapping[str, np.ndarray], config: StreamFormerConfig,
                     include_buffers: bool = True) -> dict[str, np.ndarray]:
    """Our flat parameters -> the official backbone state dict (float32, PyTorch layouts, + mask buffers)."""
    check_params(_param_shapes(config), params, "parameters")
    parts: dict[str, dict[int, np.ndarray]] = {}
    out = {}
    for r in backbone_rules(config):
        t = TRANSFORMS[r.kind][1](np.asarray(params[r.ours], dtype=np.float32), r)
        if r.part is None:
            out[r.theirs] = t
        else:
            parts.setdefault(r.theirs, {})[r.part] = t
    for key, pieces in parts.items():
        out[key] = np.concatenate([pieces[i] for i in range(3)], axis=0)
    if include_buffers:
        tril = np.tril(np.ones((config.num_frames, config.num_frames), np.float32))
        out.update({k: tril.copy() for k in buffer_keys(config)})
    return {k: np.array(v, dtype=np.float32, order="C") for k, v in sorted(out.items())}
