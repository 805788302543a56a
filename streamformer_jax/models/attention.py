"""Multi-head attention for the divided space-time block, written as head-major einsums.

Tokens are laid out `[B, T, N, ...]` (frames, then row-major patches). Spatial attention mixes the N
patches of one frame; temporal attention mixes the frames seen at one patch location. Logits are scaled
after the QK matmul (as the official encoder) and the softmax runs in float32.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from streamformer_jax.models.layers import Dense, HostRngs, LoRADense


def _softmax(logits: jax.Array, mask: jax.Array | None) -> jax.Array:
    logits = logits.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, -jnp.inf)
    return jax.nn.softmax(logits, axis=-1)


def spatial_attention(q, k, v, scale: float) -> jax.Array:
    """q, k, v: [B, T, N, H, d] -> [B, T, N, H, d]; attention over N within each frame.

    Explicit transposes to head-major [B, T, H, N, d] first: XLA:CPU runs the batched matmuls about 3x
    faster when the batch dims lead than when H sits between N and d, and the copies cost far less.
    """
    q, k, v = (jnp.swapaxes(a, 2, 3) for a in (q, k, v))
    logits = jnp.einsum("bthqd,bthkd->bthqk", q, k) * scale
    probs = _softmax(logits, None).astype(v.dtype)
    return jnp.swapaxes(jnp.einsum("bthqk,bthkd->bthqd", probs, v), 2, 3)


def temporal_attention(q, k, v, scale: float, mask: jax.Array | None) -> jax.Array:
    """q: [B, Tq, N, H, d], k/v: [B, Tk, N, H, d], mask: bool [Tq, Tk] (True = may attend) or None."""
    logits = jnp.einsum("bqnhd,bknhd->bnhqk", q, k) * scale
    probs = _softmax(logits, mask).astype(v.dtype)
    return jnp.einsum("bnhqk,bknhd->bqnhd", probs, v)


def temporal_mask(query_pos: jax.Array, key_pos: jax.Array, causal: bool, window: int | None) -> jax.Array | None:
    """Which keys each query sees, from absolute frame indices.

    Causal: key_pos <= query_pos. With a window W as well: key_pos > query_pos - W (the banded mask that
    the sliding-window streaming cache realises). Negative key positions mark empty cache slots.
    """
    if not causal and window is None:
        return None
    q, k = query_pos[:, None], key_pos[None, :]
    mask = k >= 0
    if causal:
        mask = mask & (k <= q)
    if window is not None:
        mask = mask & (k > q - window) & (k < q + window)
    return mask


class FusedQKVAttention(nnx.Module):
    """Fused qkv projection ([D] -> [3, H, d]) and output projection ([H, d] -> [D]).

    With `lora=True` both projections are `LoRADense` (rank may be 0), so parameter names are the same with
    or without LoRA (`qkv.base.kernel`); the temporal attention never has LoRA and uses plain `Dense`.
    """

    def __init__(self, dim: int, heads: int, qkv_bias: bool, *, lora: bool = False, lora_rank: int = 0,
                 rngs: HostRngs | None):
        head_dim = dim // heads
        self.heads, self.scale = heads, head_dim**-0.5
        if lora:
            self.qkv = LoRADense((dim,), (3, heads, head_dim), ("embed",), (None, "heads", "kv"), lora_rank,
                                 use_bias=qkv_bias, rngs=rngs)
            self.out = LoRADense((heads, head_dim), (dim,), ("heads", "kv"), ("embed",), lora_rank, rngs=rngs)
        else:
            self.qkv = Dense((dim,), (3, heads, head_dim), ("embed",), (None, "heads", "kv"), use_bias=qkv_bias,
                             rngs=rngs)
            self.out = Dense((heads, head_dim), (dim,), ("heads", "kv"), ("embed",), rngs=rngs)

    def project_qkv(self, x: jax.Array, dtype) -> tuple[jax.Array, jax.Array, jax.Array]:
        qkv = self.qkv(x, dtype)  # [..., 3, H, d]
        return qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
