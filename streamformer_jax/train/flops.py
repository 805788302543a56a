"""Analytic FLOPs of the StreamFormer backbone and MFU (MaxText's accounting, spec/design §7), and the measured
matmul peak the benchmarks compare against.

Model FLOPs per clip per training step = 3 x forward FLOPs, counting every matmul (patch embedding, temporal and
spatial qkv/out, the temporal D->D map, spatial LoRA, MLP, MAP head) and the attention score/context products
(the causal temporal factor counted in full, as the 801.6 GFLOP reference count of the official model does).
Rematerialisation is not counted (model FLOPs, not hardware FLOPs). Task heads are small and left out.
ViT-B/16, 16 x 224²: 801.6 GFLOP forward, about 2.40 TFLOP per clip per step.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from streamformer_jax.models.config import StreamFormerConfig

# Dense bf16 peak TFLOP/s per device by `jax.devices()[0].device_kind` (substring match, lower case).
PEAK_TFLOPS = {
    "tpu v4": 275.0,
    "tpu v5 lite": 197.0,
    "tpu v5e": 197.0,
    "tpu v5p": 459.0,
    "tpu v5": 459.0,
    "tpu v6": 918.0,
    "h100": 989.0,
    "h200": 989.0,
    "a100": 312.0,
    "b200": 2250.0,
}


def forward_flops_per_clip(cfg: StreamFormerConfig, num_frames: int | None = None, image_size: int | None = None,
                           lora: bool = True) -> float:
    t = num_frames or cfg.num_frames
    s = image_size or cfg.image_size
    n = (s // cfg.patch_size) ** 2
    d, m, r = cfg.hidden_size, cfg.mlp_size, cfg.lora_rank if lora else 0
    tokens = t * n
    patch = 2 * tokens * cfg.patch_size**2 * cfg.num_channels * d
    temporal = 2 * tokens * d * (3 * d + d + d) + 4 * n * t * t * d  # qkv, out, dense; scores + context
    spatial = 2 * tokens * d * 4 * d + 4 * t * n * n * d  # qkv + out; scores + context
    lora_flops = 2 * tokens * (d * r + r * 3 * d) + 2 * tokens * (d * r + r * d) if r else 0
    mlp = 4 * tokens * d * m
    layer = temporal + spatial + lora_flops + mlp
    # MAP head per frame: key/value maps of every token, probe attention, out map, MLP (query is per-model).
    head = 2 * tokens * d * 2 * d + 4 * tokens * d + 2 * t * d * d + 4 * t * d * m + 2 * d * d
    return float(patch + cfg.num_layers * layer + head)


def train_flops_per_clip(cfg: StreamFormerConfig, **kw) -> float:
    return 3.0 * forward_flops_per_clip(cfg, **kw)


def peak_tflops(device_kind: str, override: float = 0.0) -> float | None:
    if override and override > 0:
        return float(override)
    kind = device_kind.lower()
    for key, value in PEAK_TFLOPS.items():
        if key in kind:
            return value
    return None


def matmul_peak_gflops(dtype=jnp.float32, n: int = 4096, repeats: int = 5) -> float:
    """This machine's measured matmul peak in GFLOP/s: the best of `repeats` timed [n, n] x [n, n] `jnp.dot`s
    (compiled and run once first). The benchmarks report their speed against it, measured in the same run."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype)
    b = jnp.asarray(np.random.default_rng(1).standard_normal((n, n)), dtype)
    dot = jax.jit(jnp.dot)
    jax.block_until_ready(dot(a, b))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(dot(a, b))
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9
