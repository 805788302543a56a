"""The divided space-time block: causal temporal attention (tanh-gated) -> spatial attention (LoRA) -> MLP."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from streamformer_jax.models.attention import FusedQKVAttention, spatial_attention, temporal_attention
from streamformer_jax.models.config import StreamFormerConfig
from streamformer_jax.models.layers import MLP, Dense, HostRngs, LayerNorm, param, zeros_init

# Activations tagged for the `names:...` remat policies (`streamformer.remat_policy`): a policy saves the named
# ones for the backward pass and recomputes the rest of the block. The tags are no-ops otherwise.
CHECKPOINT_NAMES = ("temporal_qkv", "temporal_attended", "spatial_qkv", "spatial_attended", "spatial_residual")


class DividedSpaceTimeBlock(nnx.Module):
    def __init__(self, cfg: StreamFormerConfig, *, rngs: HostRngs | None):
        d = cfg.hidden_size
        self.dtype = cfg.compute_dtype
        # Temporal branch (new in StreamFormer). LoRA is never applied here.
        self.temporal_layernorm = LayerNorm(d, cfg.layer_norm_eps, rngs=rngs)
        self.temporal_attention = FusedQKVAttention(d, cfg.num_heads, cfg.qkv_bias, rngs=rngs)
        self.temporal_dense = Dense((d,), (d,), ("embed",), ("embed_out",), rngs=rngs)
        # tanh(gate) scales the temporal residual; 0 at init makes the block a per-frame SigLIP layer.
        self.temporal_gate = param(rngs, zeros_init, (), ())
        # Spatial branch and MLP (the SigLIP layer).
        self.layernorm_before = LayerNorm(d, cfg.layer_norm_eps, rngs=rngs)
        self.attention = FusedQKVAttention(d, cfg.num_heads, cfg.qkv_bias, lora=True,
                                           lora_rank=cfg.lora_rank, rngs=rngs)
        self.layernorm_after = LayerNorm(d, cfg.layer_norm_eps, rngs=rngs)
        self.mlp = MLP(d, cfg.mlp_size, cfg.gelu_approximate, rngs=rngs)

    # The temporal branch is split in two so that streaming can put a KV cache between the halves.
    def temporal_qkv(self, h: jax.Array):
        """h: [B, T, N, D] -> q, k, v: [B, T, N, H, d]."""
        qkv = self.temporal_attention.project_qkv(self.temporal_layernorm(h), self.dtype)
        return tuple(checkpoint_name(a, "temporal_qkv") for a in qkv)

    def temporal_residual(self, h: jax.Array, attended: jax.Array, fold=None) -> jax.Array:
        """h + tanh(gate) * temporal_dense(out_proj(attended)).

        For many tokens (a clip) the two linear maps and the gate are folded into one [H, d] -> [D] map
        first: the fold costs D^3 multiply-adds instead of tokens * D^2 for the second matmul (about 4% of a
        ViT-B clip forward). Exact in real arithmetic; float32 rounding differs at the 1e-7 relative level.
        For few tokens (one streamed frame: N < D) folding on every call would cost more, so the maps run one
        by one, unless the caller passes a `fold` computed once beforehand (`temporal_fold()`; streaming does).
        """
        tokens = attended.size // (attended.shape[-1] * attended.shape[-2])
        if fold is None and tokens <= self.temporal_dense.kernel.shape[0]:
            out, dense = self.temporal_attention.out, self.temporal_dense
            gate = jnp.tanh(self.temporal_gate[...])
            return h + gate.astype(self.dtype) * dense(out(attended, self.dtype), self.dtype)
        kernel, bias = self.temporal_fold() if fold is None else fold
        a = jnp.einsum("...hd,hdf->...f", attended.astype(self.dtype), kernel.astype(self.dtype))
        return h + a + bias.astype(self.dtype)

    def temporal_fold(self) -> tuple[jax.Array, jax.Array]:
        """The attention output projection, temporal_dense and the gate as one map: (kernel [H, d, D], bias [D])."""
        out, dense = self.temporal_attention.out, self.temporal_dense
        gate = jnp.tanh(self.temporal_gate[...])
        w_dense = dense.kernel[...]
        kernel = gate * jnp.einsum("hde,ef->hdf", out.kernel[...], w_dense)
        bias = gate * (out.bias[...] @ w_dense + dense.bias[...])
        return kernel, bias

    def spatial_and_mlp(self, h: jax.Array) -> jax.Array:
        """Per-frame part of the block; h: [B, T, N, D]."""
        q, k, v = (checkpoint_name(a, "spatial_qkv")
                   for a in self.attention.project_qkv(self.layernorm_before(h), self.dtype))
        s = checkpoint_name(spatial_attention(q, k, v, self.attention.scale), "spatial_attended")
        h = checkpoint_name(h + self.attention.out(s, self.dtype), "spatial_residual")
        return h + self.mlp(self.layernorm_after(h), self.dtype)

    def __call__(self, h: jax.Array, temporal_mask: jax.Array | None) -> jax.Array:
        q, k, v = self.temporal_qkv(h)
        attended = checkpoint_name(temporal_attention(q, k, v, self.temporal_attention.scale, temporal_mask),
                                   "temporal_attended")
        return self.spatial_and_mlp(self.temporal_residual(h, attended))
