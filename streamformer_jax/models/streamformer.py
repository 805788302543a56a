"""The StreamFormer backbone (official `TimesformerMultiTaskingModelSigLIP`) as a Flax NNX module."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from streamformer_jax.models.attention import temporal_mask
from streamformer_jax.models.block import CHECKPOINT_NAMES, DividedSpaceTimeBlock
from streamformer_jax.models.config import StreamFormerConfig
from streamformer_jax.models.embeddings import Embeddings, clip_time_ids
from streamformer_jax.models.heads import MAPHead
from streamformer_jax.models.layers import HostRngs, LayerNorm, abstract_module, init_module


def remat_policy(name: str):
    """`none` (no remat), `full` (save nothing), `names:A,B,...` (save only the block's activations tagged with
    those names, `block.CHECKPOINT_NAMES`; recompute the rest) or any `jax.checkpoint_policies` attribute name."""
    if name in ("", "none"):
        return None
    if name == "full":
        return jax.checkpoint_policies.nothing_saveable
    if name.startswith("names:"):
        chosen = [n.strip() for n in name[len("names:"):].split(",") if n.strip()]
        unknown = sorted(set(chosen) - set(CHECKPOINT_NAMES))
        if not chosen or unknown:
            raise ValueError(f"remat policy {name!r}: unknown or no activation names {unknown}; "
                             f"tagged in the block: {list(CHECKPOINT_NAMES)}")
        return jax.checkpoint_policies.save_only_these_names(*chosen)
    policy = getattr(jax.checkpoint_policies, name, None)
    if policy is None:
        names = sorted(n for n in dir(jax.checkpoint_policies) if not n.startswith("_"))
        raise ValueError(f"unknown remat policy {name!r}; use 'none', 'full' or one of {names}")
    return policy


def _run_block(block, h, mask):
    return block(h, mask)


def normalize_pixels(frames: jax.Array) -> jax.Array:
    """uint8 RGB [0, 255] -> float32 [-1, 1] with SigLIP's mean = std = 0.5 (every official pipeline). Call it
    inside the jitted function, so the host ships uint8."""
    return (frames.astype(jnp.float32) / 255.0 - 0.5) / 0.5


def model_pixels(video: jax.Array) -> jax.Array:
    """The backbone's input from uint8 frames (normalised here) or already-normalised float frames."""
    return normalize_pixels(video) if video.dtype == jnp.uint8 else video.astype(jnp.float32)


class StreamFormer(nnx.Module):
    """Divided space-time ViT with causal temporal attention and a per-frame MAP head.

    Input: normalised pixels `[B, T, H, W, C]` (channels last; the official layout is `[B, T, C, H, W]`).
    Output dict: `pooler_output [B, T, D]` (frame t has seen frames 0..t when causal) and
    `last_hidden_state [B, T, N, D]` (post-LayerNorm patch tokens, patches row-major), plus
    `hidden_states` (L+1 arrays `[B, T, N, D]`, before the final norm) when asked for.
    """

    def __init__(self, config: StreamFormerConfig, *, rngs: HostRngs | None):
        self.config = config
        self.embeddings = Embeddings(config, rngs=rngs)
        self.layers = nnx.List([DividedSpaceTimeBlock(config, rngs=rngs) for _ in range(config.num_layers)])
        self.post_layernorm = LayerNorm(config.hidden_size, config.layer_norm_eps, rngs=rngs)
        self.head = MAPHead(config, rngs=rngs)
        # Rematerialisation of each block in training (a jax.checkpoint policy name, see `remat_policy`);
        # a static attribute, so changing it retraces.
        self.remat = "none"
        # Run the blocks as one `lax.scan` over their parameters stacked inside the trace (static, like `remat`):
        # the compiler sees one block instead of `num_layers` copies. Parameters, names and checkpoints are the
        # same either way (the blocks stay separate modules; only the traced program differs).
        self.scan_layers = False

    def __call__(self, pixels: jax.Array, *, time_ids: jax.Array | None = None,
                 temporal_window: int | None = None, output_hidden_states: bool = False) -> dict[str, Any]:
        """Clip forward.

        time_ids: int [T] rows of the time table per frame; default: the official clip rule (first T rows,
          nearest-resized when T exceeds the configured frame count).
        temporal_window: if given, frame t attends only to frames t-W < s <= t (what the sliding-window
          streaming cache computes); default: all earlier frames (causal) or all frames (non-causal).
        """
        cfg = self.config
        if pixels.ndim != 5 or pixels.shape[-1] != cfg.num_channels:
            raise ValueError(f"expected pixels [B, T, H, W, {cfg.num_channels}], got shape {pixels.shape}")
        num_frames = pixels.shape[1]
        if time_ids is None:
            time_ids = jnp.asarray(clip_time_ids(num_frames, cfg.num_frames))
        h = self.embeddings(pixels, time_ids, cfg.compute_dtype)
        positions = jnp.arange(num_frames)
        mask = temporal_mask(positions, positions, cfg.causal_temporal, temporal_window)
        policy = remat_policy(self.remat)
        if self.scan_layers and not output_hidden_states:
            return self.finalize(self._scan_blocks(h, mask, policy))
        run_block = _run_block if policy is None else nnx.remat(_run_block, policy=policy)
        hidden_states = [h]
        for block in self.layers:
            h = run_block(block, h, mask)
            hidden_states.append(h)
        return self.finalize(h, hidden_states if output_hidden_states else None)

    def _scan_blocks(self, h: jax.Array, mask, policy) -> jax.Array:
        """The blocks in order as one scan; each step rebuilds block l from row l of the stacked parameters."""
        graphdef, first = nnx.split(self.layers[0])
        states = [first] + [nnx.split(block)[1] for block in self.layers[1:]]
        stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *states)

        def body(h, state):
            return nnx.merge(graphdef, state)(h, mask), None

        if policy is not None:
            body = jax.checkpoint(body, policy=policy, prevent_cse=False)
        h, _ = jax.lax.scan(body, h, stacked)
        return h

    def finalize(self, h: jax.Array, hidden_states=None) -> dict[str, Any]:
        tokens = self.post_layernorm(h)
        out = {"pooler_output": self.head(tokens), "last_hidden_state": tokens}
        if hidden_states is not None:
            out["hidden_states"] = tuple(hidden_states)
        return out


def abstract_model(config: StreamFormerConfig) -> StreamFormer:
    """The model's structure with shape-only parameters (no memory, no RNG work)."""
    return abstract_module(StreamFormer, config)


def init_model(config: StreamFormerConfig, seed: int = 0) -> StreamFormer:
    """A randomly initialised model with the official initialisation (temporal branch inert: gate 0)."""
    return init_module(StreamFormer, config, seed)


def count_params(params) -> int:
    return int(sum(np.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(params)))
