"""Action recognition on the backbone (spec §7.1): clip pooling and the original's classification head.

`VideoClassifier` is the original `TimesformerModelSigLIPForVideoClassification`: StreamFormer backbone -> post-LN
-> per-frame MAP head -> clip pooling -> `fc_norm` (LayerNorm, eps 1e-6) -> `classifier` (Dense D -> C). Its flat
parameter names are `backbone.<backbone names>`, `fc_norm.{scale,bias}`, `classifier.{kernel [D, C],bias}`; the
head alone, as a nested dict `{"fc_norm": {...}, "classifier": {...}}`, is what evaluation trains (linear probe),
saves and loads (`streamformer_jax.convert.classifier_io`).

Pooling of one clip into a vector (`POOLINGS`):
  * "mean" (default): the per-frame MAP vectors (`pooler_output`) averaged over frames: correct per-frame pooling.
  * "last": the last frame's MAP vector (it has seen the whole clip; the streaming "global" feature).
  * "official_bug": the original AR model's pooling, needed to reproduce the released `k400.pt`/`ssv2.pt`
    numbers: the post-LN tokens in the official order (patch-major, token n*T + t) are *viewed* as T groups of
    N consecutive tokens (each group mixes ~N/T patch positions over all frames), the MAP head is applied per
    group, and the T group vectors are averaged.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from streamformer_jax.models.config import StreamFormerConfig
from streamformer_jax.models.layers import Dense, HostRngs, LayerNorm
from streamformer_jax.models.streamformer import StreamFormer
from streamformer_jax.param_tree import nest

POOLINGS = ("mean", "last", "official_bug")
HEAD_NAMES = ("fc_norm.scale", "fc_norm.bias", "classifier.kernel", "classifier.bias")


def official_bug_groups(tokens, num_groups: int | None = None):
    """Our post-LN tokens [B, T, N, D] -> the groups the original AR model pools: [B, G, N*T/G, D].

    The original holds [B, N*T, D] in token order n*T + t and calls `.view(B * config.num_frames, -1, D)`,
    so (G = config.num_frames, = T for the usual 16-frame clips) group g holds the official tokens
    g*M .. g*M + M - 1 with M = N*T/G, patch-major: a mix of patch positions over all frames.
    """
    b, t, n, d = tokens.shape
    g = t if num_groups is None else int(num_groups)
    if (n * t) % g:
        raise ValueError(f"{n * t} tokens cannot be viewed as {g} groups (the original would raise)")
    official = jnp.transpose(tokens, (0, 2, 1, 3)).reshape(b, n * t, d)  # token n*T + t
    return official.reshape(b, g, n * t // g, d)


def pool_clip(model: StreamFormer, pixels, pooling: str = "mean"):
    """Normalised pixels [B, T, H, W, 3] -> one vector per clip [B, D]."""
    out = model(pixels)
    if pooling == "mean":
        return out["pooler_output"].mean(axis=1)
    if pooling == "last":
        return out["pooler_output"][:, -1]
    if pooling == "official_bug":
        groups = official_bug_groups(out["last_hidden_state"], model.config.num_frames)
        return model.head(groups).mean(axis=1)
    raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")


def init_head(dim: int, num_classes: int, seed: int = 0, std: float = 0.02) -> dict:
    """A fresh head dict: fc_norm (1, 0), classifier N(0, std²) weights and zero bias (HF `_init_weights`)."""
    rng = np.random.default_rng(seed)
    return {"fc_norm": {"scale": np.ones(dim, np.float32), "bias": np.zeros(dim, np.float32)},
            "classifier": {"kernel": (rng.standard_normal((dim, num_classes)) * std).astype(np.float32),
                           "bias": np.zeros(num_classes, np.float32)}}


def head_logits(head: Mapping, feats, eps: float = 1e-6):
    """The head dict applied to pooled features: LayerNorm (`fc_norm`) then Linear (`classifier`). [B, D] -> [B, C]."""
    x = feats.astype(jnp.float32)
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    x = (x - mu) / jnp.sqrt(var + eps) * head["fc_norm"]["scale"] + head["fc_norm"]["bias"]
    return x @ head["classifier"]["kernel"] + head["classifier"]["bias"]


def head_from_flat(flat: Mapping[str, object]) -> dict:
    """A `VideoClassifier`'s flat parameters -> its head dict (NumPy float32)."""
    return nest({k: np.asarray(flat[k], np.float32) for k in HEAD_NAMES})


class VideoClassifier(nnx.Module):
    """Backbone + pooling + fc_norm + classifier. `__call__(pixels [B, T, H, W, 3] normalised) -> logits
    float32 [B, C]`."""

    def __init__(self, config: StreamFormerConfig, num_classes: int, *, pooling: str = "mean",
                 rngs: HostRngs | int | None = 0, backbone: StreamFormer | None = None):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if isinstance(rngs, (int, np.integer)):
            rngs = HostRngs(int(rngs))
        self.config, self.pooling, self.num_classes = config, pooling, int(num_classes)
        with nnx.use_eager_sharding(False):  # placement is the trainer's job
            self.backbone = backbone if backbone is not None else StreamFormer(config, rngs=rngs)
            self.fc_norm = LayerNorm(config.hidden_size, config.layer_norm_eps, rngs=rngs)
            # Classes stay unsharded (no logical axis for them in the rule presets).
            self.classifier = Dense((config.hidden_size,), (self.num_classes,), ("embed",), (None,), rngs=rngs)

    def features(self, pixels: jax.Array) -> jax.Array:
        return pool_clip(self.backbone, pixels, self.pooling)

    def __call__(self, pixels: jax.Array) -> jax.Array:
        x = self.fc_norm(self.features(pixels).astype(jnp.float32))
        return self.classifier(x, jnp.float32)
