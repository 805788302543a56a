"""Frame-by-frame inference with a fixed-size ring-buffer cache of the temporal keys/values.

Semantics (default): each frame's temporal keys/values are computed once, when it arrives, and kept per
layer for the W most recent frames. The new frame's temporal attention sees those W frames, itself included
(a causal forward with the banded mask t-W < s <= t in every layer). Frame t (0-based) uses time-embedding
row min(t, F-1). For t < F and W = F this is exactly the official clip forward; past F the official code
raises, while here memory and time per frame stay constant, with one compiled step.

Spatial attention, the MLP, the final norm and the MAP head are per frame, so nothing else is cached.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from streamformer_jax.models.attention import temporal_attention, temporal_mask
from streamformer_jax.models.embeddings import stream_time_ids
from streamformer_jax.models.streamformer import StreamFormer


class StreamCache(NamedTuple):
    keys: jax.Array  # [L, B, W, N, H, d]: temporal keys per layer, slot = frame index mod W
    values: jax.Array  # [L, B, W, N, H, d]
    slot_frame: jax.Array  # int32 [W]: absolute frame index held by each slot, -1 when empty
    next_frame: jax.Array  # int32 []: absolute index of the next frame to arrive

    @property
    def window(self) -> int:
        return self.slot_frame.shape[0]


def init_cache(model: StreamFormer, batch: int, window: int | None, height: int, width: int) -> StreamCache:
    cfg = model.config
    if not cfg.causal_temporal:
        raise ValueError("streaming needs a model with causal temporal attention (causal_temporal=True)")
    window = cfg.num_frames if window is None else int(window)
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    gh, gw = model.embeddings.patch_grid(height, width)
    shape = (cfg.num_layers, batch, window, gh * gw, cfg.num_heads, cfg.head_dim)
    # Two distinct buffers: the step donates the cache, and one buffer cannot be donated twice.
    return StreamCache(jnp.zeros(shape, cfg.compute_dtype), jnp.zeros(shape, cfg.compute_dtype),
                       jnp.full((window,), -1, jnp.int32), jnp.zeros((), jnp.int32))


def stream_step(model: StreamFormer, cache: StreamCache, pixels: jax.Array) -> tuple[dict, StreamCache]:
    """One frame for every stream in the batch: pixels [B, H, W, C] (normalised) -> per-frame outputs.

    Returns ({"pooler_output": [B, D], "last_hidden_state": [B, N, D]}, updated cache).
    """
    cfg = model.config
    t = cache.next_frame
    window = cache.window
    slot = t % window
    h = model.embeddings(pixels[:, None], stream_time_ids(t[None], cfg.num_frames), cfg.compute_dtype)
    slot_frame = cache.slot_frame.at[slot].set(t)
    mask = temporal_mask(t[None], slot_frame, causal=True, window=window)  # [1, W]
    keys, values = cache.keys, cache.values
    for layer, block in enumerate(model.layers):
        q, k, v = block.temporal_qkv(h)  # [B, 1, N, H, d]
        keys = keys.at[layer, :, slot].set(k[:, 0].astype(keys.dtype))
        values = values.at[layer, :, slot].set(v[:, 0].astype(values.dtype))
        attended = temporal_attention(q, keys[layer], values[layer], block.temporal_attention.scale, mask)
        h = block.spatial_and_mlp(block.temporal_residual(h, attended))
    out = model.finalize(h)
    out = {k: v[:, 0] for k, v in out.items()}
    return out, StreamCache(keys, values, slot_frame, t + 1)
