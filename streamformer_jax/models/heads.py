"""The per-frame multihead attention-pooling (MAP) head of SigLIP."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from streamformer_jax.models.config import StreamFormerConfig
from streamformer_jax.models.layers import MLP, Dense, HostRngs, LayerNorm, normal_init, param


class MAPHead(nnx.Module):
    """A learned probe attends over the patch tokens of each frame, then a pre-LN MLP residual.

    Matches torch `nn.MultiheadAttention(query=probe, key=x, value=x)`: q is scaled before the matmul.
    """

    def __init__(self, cfg: StreamFormerConfig, *, rngs: HostRngs | None):
        d, heads = cfg.hidden_size, cfg.num_heads
        hd = d // heads
        self.dtype, self.scale = cfg.compute_dtype, hd**-0.5
        self.probe = param(rngs, normal_init(1.0), (d,), ("embed",))
        self.query = Dense((d,), (heads, hd), ("embed",), ("heads", "kv"), rngs=rngs)
        self.key = Dense((d,), (heads, hd), ("embed",), ("heads", "kv"), rngs=rngs)
        self.value = Dense((d,), (heads, hd), ("embed",), ("heads", "kv"), rngs=rngs)
        self.out = Dense((heads, hd), (d,), ("heads", "kv"), ("embed",), rngs=rngs)
        self.layernorm = LayerNorm(d, cfg.layer_norm_eps, rngs=rngs)
        self.mlp = MLP(d, cfg.mlp_size, cfg.gelu_approximate, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """tokens: [..., N, D] -> pooled [..., D]."""
        dtype = self.dtype
        q = self.query(self.probe[...], dtype) * jnp.asarray(self.scale, dtype)  # [H, d]
        k = self.key(tokens, dtype)  # [..., N, H, d]
        v = self.value(tokens, dtype)
        logits = jnp.einsum("hd,...nhd->...hn", q, k).astype(jnp.float32)
        probs = jax.nn.softmax(logits, axis=-1).astype(dtype)
        o = self.out(jnp.einsum("...hn,...nhd->...hd", probs, v), dtype)  # [..., D]
        return o + self.mlp(self.layernorm(o), dtype)
