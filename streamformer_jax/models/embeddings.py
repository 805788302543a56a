"""Patch, spatial-position and time embeddings."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from streamformer_jax.models.config import StreamFormerConfig
from streamformer_jax.models.layers import HostRngs, normal_init, param, zeros_init


def resize_position_embeddings(pos: jax.Array, grid: int, out_h: int, out_w: int) -> jax.Array:
    """Resize a `[grid², D]` row-major position table to `[out_h·out_w, D]`.

    Antialiased bicubic (Keys a = -0.5, as torch's `interpolate(bicubic, antialias=True)`), skipped when the
    grid already matches. Rows follow the image height and columns the width. The official code resizes to
    (W/p, H/p) instead, which is transposed for non-square inputs; we deliberately do the correct thing (for
    square inputs both agree).
    """
    if (out_h, out_w) == (grid, grid):
        return pos
    table = pos.reshape(grid, grid, -1).astype(jnp.float32)
    resized = jax.image.resize(table, (out_h, out_w, table.shape[-1]), method="cubic", antialias=True)
    return resized.reshape(out_h * out_w, -1).astype(pos.dtype)


def clip_time_ids(num_frames: int, table_size: int) -> np.ndarray:
    """Time-embedding rows for a clip of `num_frames` (the official rule).

    T <= F: rows 0..T-1. T > F: the official `F.interpolate(mode="nearest")` over the F rows, whose CPU and
    CUDA kernels compute the source row in float32 as min(floor(t * float32(F / T)), F - 1) (and t >> 1 when
    T == 2F). The float32 product differs from the exact floor(t * F / T) for some T (e.g. T = 82, t = 41:
    row 7, not 8), so it is reproduced here bit for bit.
    """
    t = np.arange(num_frames)
    if num_frames <= table_size:
        return t.astype(np.int32)
    if num_frames == 2 * table_size:
        return (t >> 1).astype(np.int32)
    scale = np.float32(table_size) / np.float32(num_frames)
    rows = np.floor(t.astype(np.float32) * scale).astype(np.int64)
    return np.minimum(rows, table_size - 1).astype(np.int32)


def stream_time_ids(positions, table_size: int):
    """Streaming rule: frame t (0-based, absolute) uses row min(t, F-1)."""
    return jnp.minimum(positions, table_size - 1)


class Embeddings(nnx.Module):
    def __init__(self, cfg: StreamFormerConfig, *, rngs: HostRngs | None):
        p, c, d = cfg.patch_size, cfg.num_channels, cfg.hidden_size
        self.patch_size, self.grid = p, cfg.grid_size
        # Conv2d(kernel=stride=p) written as a matmul over flattened patches; kernel layout [p, p, C, D] (HWIO).
        self.patch_kernel = param(rngs, normal_init(0.02), (p, p, c, d), (None, None, None, "embed"))
        self.patch_bias = param(rngs, zeros_init, (d,), ("embed",))
        self.position_embeddings = param(rngs, normal_init(0.02), (cfg.num_patches, d), (None, "embed"))
        self.time_embeddings = param(rngs, zeros_init, (cfg.num_frames, d), (None, "embed"))

    def patch_grid(self, height: int, width: int) -> tuple[int, int]:
        return height // self.patch_size, width // self.patch_size

    def __call__(self, pixels: jax.Array, time_ids: jax.Array, dtype) -> jax.Array:
        """pixels: [B, T, H, W, C] normalised; time_ids: int [T] -> tokens [B, T, N, D]."""
        b, t, h, w, c = pixels.shape
        p = self.patch_size
        gh, gw = self.patch_grid(h, w)
        if gh == 0 or gw == 0:
            raise ValueError(f"frames of {h}x{w} pixels are smaller than one {p}x{p} patch")
        x = pixels[:, :, : gh * p, : gw * p].reshape(b, t, gh, p, gw, p, c)
        x = jnp.einsum("bthpwqc,pqcd->bthwd", x.astype(dtype), self.patch_kernel[...].astype(dtype))
        x = x.reshape(b, t, gh * gw, -1) + self.patch_bias[...].astype(dtype)
        pos = resize_position_embeddings(self.position_embeddings[...], self.grid, gh, gw)
        x = x + pos.astype(dtype)[None, None]
        time = jnp.take(self.time_embeddings[...], time_ids, axis=0)  # [T, D]
        return x + time.astype(dtype)[None, :, None]
