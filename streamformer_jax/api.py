"""The user-facing Python API: `FeatureExtractor` for clip and streaming feature extraction.

    from streamformer_jax import FeatureExtractor
    fx = FeatureExtractor.from_checkpoint(path)   # our checkpoint or an official HF directory
    out = fx(frames)          # uint8 [T, H, W, 3] or [B, T, H, W, 3] -> NumPy dict
    s = fx.stream()           # window defaults to the model's frame count
    o = s.push(frame)         # uint8 [H, W, 3] or [B, H, W, 3]

Frames are RGB uint8 and normalised on device. Any frame size of at least one patch works (position
embeddings are resized), but the model was trained at `config.image_size`. Each distinct input shape
compiles once; the streaming step compiles once per stream shape, however long the stream runs.
"""
from __future__ import annotations

import os
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from streamformer_jax.checkpoint import load_any
from streamformer_jax.models import streaming
from streamformer_jax.models.config import StreamFormerConfig
from streamformer_jax.models.params import model_from_flat_params
from streamformer_jax.models.streamformer import StreamFormer, normalize_pixels


def _check_frames(frames, ndims: tuple[int, ...], what: str, channels: int) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise TypeError(f"{what}: expected uint8 RGB frames, got dtype {frames.dtype}")
    if frames.ndim not in ndims or frames.shape[-1] != channels:
        raise ValueError(f"{what}: expected shape {' or '.join(_shape_names(n) for n in ndims)} with "
                         f"{channels} channels, got {frames.shape}")
    return frames


def _to_host(x: jax.Array, batched: bool) -> np.ndarray:
    """Copy to the host first, then drop the batch axis there (slicing on device adds a dispatch per output)."""
    x = np.asarray(x)
    return (x if batched else x[0]).astype(np.float32, copy=False)


def _shape_names(ndim: int) -> str:
    return {3: "[H, W, 3]", 4: "[T, H, W, 3] / [B, H, W, 3]", 5: "[B, T, H, W, 3]"}[ndim]


class FeatureExtractor:
    """Per-frame features from a StreamFormer backbone, compiled once per input shape."""

    def __init__(self, config: StreamFormerConfig, params: Mapping[str, object]):
        self.config = config
        model = model_from_flat_params(config, params)
        self._graphdef, self._state = nnx.split(model)

        def clip(state, frames, with_tokens):
            out = nnx.merge(self._graphdef, state)(normalize_pixels(frames))
            return out if with_tokens else {"pooler_output": out["pooler_output"]}

        def step(state, cache, frames):
            return streaming.stream_step(nnx.merge(self._graphdef, state), cache, normalize_pixels(frames))

        self._clip = jax.jit(clip, static_argnums=2)
        self._step = jax.jit(step, donate_argnums=1)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, dtype: str | None = None) -> "FeatureExtractor":
        """Our checkpoint or an official Hugging Face directory (detected automatically).

        dtype: compute dtype override ("float32" or "bfloat16"); parameters stay float32.
        """
        config, params = load_any(path)
        if dtype is not None:
            config = config.replace(dtype=dtype)
        return cls(config, params)

    @property
    def model(self) -> StreamFormer:
        return nnx.merge(self._graphdef, self._state)

    def __call__(self, frames, return_tokens: bool = True) -> dict[str, np.ndarray]:
        """One clip forward: uint8 [T, H, W, 3] -> {"pooler_output": [T, D], "last_hidden_state": [T, P, D]}.

        A leading batch axis ([B, T, H, W, 3]) is kept in the outputs. Frame t sees frames 0..t.
        """
        frames = _check_frames(frames, (4, 5), "frames", self.config.num_channels)
        batched = frames.ndim == 5
        out = self._clip(self._state, jnp.asarray(frames if batched else frames[None]), return_tokens)
        return {k: _to_host(v, batched)
                for k, v in out.items()}

    def stream(self, window: int | None = None) -> "FeatureStream":
        """A frame-by-frame stream with a ring-buffer KV cache of `window` frames (default: num_frames)."""
        return FeatureStream(self, window)

    def init_cache(self, batch: int, window: int, height: int, width: int) -> streaming.StreamCache:
        """An empty streaming cache for `batch` streams of `height` x `width` frames."""
        return streaming.init_cache(self.model, batch, window, height, width)

    def step(self, cache: streaming.StreamCache, frames: jax.Array) -> tuple[dict, streaming.StreamCache]:
        """One compiled streaming step: uint8 [B, H, W, 3] -> (outputs, the next cache); `cache` is donated."""
        return self._step(self._state, cache, frames)


class FeatureStream:
    """Stateful wrapper around the pure streaming step; see `streamformer_jax.models.streaming`."""

    def __init__(self, extractor: FeatureExtractor, window: int | None):
        self._fx = extractor
        self.window = extractor.config.num_frames if window is None else int(window)
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self._cache = None
        self._batched: bool | None = None

    @property
    def frames_seen(self) -> int:
        return 0 if self._cache is None else int(self._cache.next_frame)

    def reset(self) -> None:
        self._cache, self._batched = None, None

    def push(self, frame) -> dict[str, np.ndarray]:
        """uint8 [H, W, 3] (or [B, H, W, 3] for B streams) -> {"pooler_output": [D], "last_hidden_state": [P, D]}."""
        frame = _check_frames(frame, (3, 4), "frame", self._fx.config.num_channels)
        batched = frame.ndim == 4
        batch = frame[None] if not batched else frame
        if self._cache is None:
            self._cache = self._fx.init_cache(batch.shape[0], self.window, *batch.shape[1:3])
            self._batched, self._shape = batched, batch.shape
        elif batch.shape != self._shape or batched != self._batched:
            raise ValueError(f"frame shape {frame.shape} differs from the stream's first frame "
                             f"{self._shape if self._batched else self._shape[1:]}; call reset() to start anew")
        out, self._cache = self._fx.step(self._cache, jnp.asarray(batch))
        return {k: _to_host(v, batched)
                for k, v in out.items()}
