"""Per-task heads of the multitask wrapper (spec §1.9, §5.1); a task's `TaskSpec.make_head` is one of these
classes (called as `make_head(backbone_config, init_logit_scale, init_logit_bias, rngs=rngs)`).

Every head holds its own trainable, weight-decayed `logit_scale` (log temperature) and `logit_bias`
(0-dim, initialised from SigLIP's values). The VIS head adds the MaskCLIP-style dense projection
P(x) = y + MLP(LN(y)), y = v_proj(W_v x + b_v): the MAP head with attention replaced by the identity on the
value path, initialised as trainable copies of the MAP head's value rows, out-projection, LayerNorm and MLP.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from streamformer_jax.models.config import StreamFormerConfig
from streamformer_jax.models.heads import MAPHead
from streamformer_jax.models.layers import MLP, Dense, HostRngs, LayerNorm

DEFAULT_LOGIT_SCALE = float(np.log(10.0))  # SigLIP's initial values (before training)
DEFAULT_LOGIT_BIAS = -10.0


class TaskHead(nnx.Module):
    """The logit scale and bias every head has (the whole head of the label and caption tasks)."""

    def __init__(self, cfg: StreamFormerConfig | None = None, init_logit_scale: float = DEFAULT_LOGIT_SCALE,
                 init_logit_bias: float = DEFAULT_LOGIT_BIAS, *, rngs: HostRngs | None = None):
        self.logit_scale = nnx.Param(jnp.asarray(init_logit_scale, jnp.float32), sharding_names=())
        self.logit_bias = nnx.Param(jnp.asarray(init_logit_bias, jnp.float32), sharding_names=())

    def init_from_backbone(self, backbone) -> None:
        """Initialise parameters that start as copies of the backbone's (none here)."""


class VISHead(TaskHead):
    """TaskVIS: logit scale/bias plus the dense projection (names as the original: w_v, v_proj,
    head_layernorm, head_mlp). Kernels keep the MAP head's [D, H, d] / [H, d, D] layout."""

    def __init__(self, cfg: StreamFormerConfig, init_logit_scale: float = DEFAULT_LOGIT_SCALE,
                 init_logit_bias: float = DEFAULT_LOGIT_BIAS, *, rngs: HostRngs | None):
        super().__init__(cfg, init_logit_scale, init_logit_bias)
        d, h = cfg.hidden_size, cfg.num_heads
        hd = d // h
        self.dtype = cfg.compute_dtype
        self.w_v = Dense((d,), (h, hd), ("embed",), ("heads", "kv"), rngs=rngs)
        self.v_proj = Dense((h, hd), (d,), ("heads", "kv"), ("embed",), rngs=rngs)
        self.head_layernorm = LayerNorm(d, cfg.layer_norm_eps, rngs=rngs)
        self.head_mlp = MLP(d, cfg.mlp_size, cfg.gelu_approximate, rngs=rngs)

    def init_from_backbone(self, backbone) -> None:
        self.copy_from_map_head(backbone.head)

    def copy_from_map_head(self, head: MAPHead) -> None:
        """Initialise the projection as copies of the MAP head (what `prepare_for_multi_tasks` does)."""
        pairs = [(self.w_v, head.value), (self.v_proj, head.out), (self.head_layernorm, head.layernorm),
                 (self.head_mlp.fc1, head.mlp.fc1), (self.head_mlp.fc2, head.mlp.fc2)]
        for dst, src in pairs:
            src_state = nnx.state(src, nnx.Param)
            nnx.update(dst, jax.tree.map(lambda x: jnp.array(x, copy=True), src_state))

    def project(self, tokens: jax.Array) -> jax.Array:
        """tokens [..., D] (post-LayerNorm patch tokens) -> P(tokens) [..., D]."""
        y = self.v_proj(self.w_v(tokens, self.dtype), self.dtype)
        return y + self.head_mlp(self.head_layernorm(y), self.dtype)
