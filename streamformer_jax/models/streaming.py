"""Frame-by-frame inference with a fixed-size ring-buffer cache of the temporal keys/values.

Semantics (default): each frame's temporal keys/values are computed once, when it arrives, and kept per
layer for the W most recent frames. The new frame's temporal attention sees those W frames, itself included
(a causal forward with the banded mask t-W < s <= t in every layer). Frame t (0-based) uses time-embedding
row min(t, F-1). For t < F and W = F this is exactly the official clip forward; past F the official code
raises, while here memory and time per frame stay constant, with one compiled step.

Spatial attention, the MLP, the final norm and the MAP head are per frame, so nothing else is cached. The
temporal output projection, `temporal_dense` and the gate can be folded into one map once per model
(`temporal_folds`) and passed to the step: one matmul instead of two per layer and frame (about 5% of a
ViT-B frame), as the clip forward does per call.

The cache has B independent slots (one stream each): every slot has its own frame counter, its own ring
position and its own record of which ring entries hold which frame, so streams that start, stop and restart
at different times can share one device call (`pool_step`; continuous batching). A slot left out of a call
(`active` False) keeps its cache and counter unchanged; a slot marked `reset` starts a new stream at frame 0
(its old entries are masked out, never attended to). `stream_step` is the lock-step case: every slot active.

Batch invariance. Batched, the slots' frames go through each matmul together, and XLA picks its kernels (and
so the float32 rounding) by matrix size and by where a row falls in the matrix: a stream's outputs then agree
with a single stream's to float32 rounding only (a few 1e-6 on the official fixtures), and depend in the last
bits on how many and which other streams share the call. `batch_invariant=True` runs the slots one after
another inside the same compiled step, each exactly as a one-slot step: every stream's outputs are then
bit-for-bit those of a single stream, whatever shares the call. It gives up the larger matmuls of the batched
form (on CPU a single frame's matmuls are already large enough that this costs little; on accelerators,
batched is the faster form).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from streamformer_jax.models.attention import temporal_attention, temporal_mask
from streamformer_jax.models.embeddings import stream_time_ids
from streamformer_jax.models.streamformer import StreamFormer


class StreamCache(NamedTuple):
    keys: jax.Array  # [L, B, W, N, H, d]: temporal keys per layer, ring entry = frame index mod W
    values: jax.Array  # [L, B, W, N, H, d]
    slot_frame: jax.Array  # int32 [B, W]: absolute frame index held by each ring entry, -1 when empty
    next_frame: jax.Array  # int32 [B]: absolute index of each stream's next frame

    @property
    def window(self) -> int:
        return self.slot_frame.shape[-1]


def cache_dtype(compute_dtype, backend: str | None = None):
    """The cache's storage dtype: the compute dtype, except float32 on CPU. XLA:CPU has no native bfloat16
    element-wise ops, so it widens the in-place entry writes of a bfloat16 cache into converts of the whole
    cache (every layer, every step); float32 storage holds bfloat16 keys/values exactly, and reads are cast
    back to the compute dtype, so the results are the same."""
    backend = jax.default_backend() if backend is None else backend
    return jnp.float32 if backend == "cpu" else jnp.dtype(compute_dtype)


def init_cache(model: StreamFormer, batch: int, window: int | None, height: int, width: int,
               dtype=None) -> StreamCache:
    """An empty cache of `batch` slots; dtype: storage of the keys/values (default `cache_dtype`)."""
    cfg = model.config
    if not cfg.causal_temporal:
        raise ValueError("streaming needs a model with causal temporal attention (causal_temporal=True)")
    window = cfg.num_frames if window is None else int(window)
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if batch < 1:
        raise ValueError(f"the cache needs at least one slot, got {batch}")
    gh, gw = model.embeddings.patch_grid(height, width)
    shape = (cfg.num_layers, batch, window, gh * gw, cfg.num_heads, cfg.head_dim)
    dtype = cache_dtype(cfg.compute_dtype) if dtype is None else dtype
    # Two distinct buffers: the step donates the cache, and one buffer cannot be donated twice.
    return StreamCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype),
                       jnp.full((batch, window), -1, jnp.int32), jnp.zeros((batch,), jnp.int32))


def _write_entries(buf: jax.Array, layer: int, first, ring_pos: jax.Array, new: jax.Array, active: jax.Array):
    """buf[layer, first + b, ring_pos[b]] = new[b] for the active slots b, in place (the cache is donated).

    One dynamic_update_slice per slot (the count is static and small): XLA:CPU runs these in place, where a
    scatter over the slot axis is a generic element loop. An inactive slot writes back what its entry holds.
    """
    new = new.astype(buf.dtype)
    for b in range(new.shape[0]):
        start = (layer, first + b, ring_pos[b], 0, 0, 0)
        old = jax.lax.dynamic_slice(buf, start, (1, 1, 1) + buf.shape[3:])
        row = jnp.where(active[b], new[b][None, None, None], old)
        buf = jax.lax.dynamic_update_slice(buf, row, start)
    return buf


def temporal_folds(model: StreamFormer) -> tuple:
    """Each layer's folded temporal output map (kernel, bias), for the `folds` argument of the steps."""
    return tuple(block.temporal_fold() for block in model.layers)


def pool_step(model: StreamFormer, cache: StreamCache, pixels: jax.Array, active: jax.Array, reset: jax.Array,
              with_tokens: bool = True, batch_invariant: bool = False, folds=None) -> tuple[dict, StreamCache]:
    """One frame for each active slot: pixels [B, H, W, C] (normalised; rows of inactive slots are ignored).

    active: bool [B], the slots that receive a frame; reset: bool [B], slots that start a new stream with this
    call (frame 0; applied before the frame, whether or not the slot is active).
    batch_invariant: run the slots one by one (bit-for-bit single-stream results; see the module doc).
    folds: `temporal_folds(model)`, computed once (else each layer runs its two temporal output maps).
    Returns ({"pooler_output": [B, D], "last_hidden_state": [B, N, D]}, updated cache); the rows of inactive
    slots are meaningless.
    """
    if batch_invariant and cache.keys.shape[1] > 1:
        return _pool_step_per_slot(model, cache, pixels, active, reset, with_tokens, folds)
    return _step_slots(model, cache, 0, pixels, active, reset, with_tokens, folds)


def _step_slots(model: StreamFormer, cache: StreamCache, first, pixels, active, reset, with_tokens, folds,
                in_place: bool = True):
    """`pool_step` for the slots first .. first + n - 1 of the cache (n = len(pixels); `first` may be traced).

    in_place: write the new entries into the (donated) cache and attend over it. Otherwise the cache is only
    read (each layer attends over a copy of its slots with the new entries) and ({outputs}, `_SlotUpdate`) is
    returned for `_apply_update`: inside a `cond`, writing the full cache would make XLA copy all of it.
    """
    cfg = model.config
    window, n = cache.window, pixels.shape[0]
    rows = lambda x: jax.lax.dynamic_slice_in_dim(x, first, n, 0)
    t = jnp.where(reset, 0, rows(cache.next_frame))  # [n]: each slot's absolute frame index
    slot_frame = jnp.where(reset[:, None], -1, rows(cache.slot_frame))
    ring_pos = t % window
    written = jnp.where(active[:, None] & (jnp.arange(window)[None] == ring_pos[:, None]), t[:, None], slot_frame)
    # Per-slot time rows: embed the slots as the frames of one clip (patch embedding is per frame).
    h = model.embeddings(pixels[None], stream_time_ids(t, cfg.num_frames), cfg.compute_dtype)
    h = jnp.swapaxes(h, 0, 1)  # [n, 1, N, D]
    # [n, 1 (query), W] -> broadcast over the logits [n, N, H, 1, W].
    mask = jax.vmap(lambda q, k: temporal_mask(q[None], k, causal=True, window=window))(t, written)
    mask = mask[:, None, None]
    keys, values = cache.keys, cache.values
    new_keys, new_values = [], []
    for layer, block in enumerate(model.layers):
        q, k, v = block.temporal_qkv(h)  # [n, 1, N, H, d]
        if in_place:
            keys = _write_entries(keys, layer, first, ring_pos, k[:, 0], active)
            values = _write_entries(values, layer, first, ring_pos, v[:, 0], active)
            layer_keys, layer_values = rows(keys[layer]), rows(values[layer])
        else:
            layer_keys = _write_entries(rows(keys[layer])[None], 0, 0, ring_pos, k[:, 0], active)[0]
            layer_values = _write_entries(rows(values[layer])[None], 0, 0, ring_pos, v[:, 0], active)[0]
            new_keys.append(k[:, 0])
            new_values.append(v[:, 0])
        # exact: the entries were computed in the compute dtype (see `cache_dtype`)
        layer_keys, layer_values = layer_keys.astype(q.dtype), layer_values.astype(v.dtype)
        attended = temporal_attention(q, layer_keys, layer_values, block.temporal_attention.scale, mask)
        fold = None if folds is None else folds[layer]
        h = block.spatial_and_mlp(block.temporal_residual(h, attended, fold))
    out = model.finalize(h)
    out = {k: v[:, 0] for k, v in out.items() if with_tokens or k == "pooler_output"}
    next_frame = jnp.where(active, t + 1, t)
    if not in_place:
        return out, _SlotUpdate(jnp.stack(new_keys), jnp.stack(new_values), ring_pos, written, next_frame)
    put = lambda x, y: jax.lax.dynamic_update_slice_in_dim(x, y, first, 0)
    return out, StreamCache(keys, values, put(cache.slot_frame, written), put(cache.next_frame, next_frame))


class _SlotUpdate(NamedTuple):
    """What one step changes in slots first .. first + n - 1 of the cache (`_step_slots(..., in_place=False)`)."""
    keys: jax.Array  # [L, n, N, H, d]: the new entries
    values: jax.Array
    ring_pos: jax.Array  # int32 [n]
    slot_frame: jax.Array  # int32 [n, W]
    next_frame: jax.Array  # int32 [n]


def _apply_update(cache: StreamCache, first, update: _SlotUpdate, active) -> StreamCache:
    keys, values = cache.keys, cache.values
    for layer in range(keys.shape[0]):
        keys = _write_entries(keys, layer, first, update.ring_pos, update.keys[layer], active)
        values = _write_entries(values, layer, first, update.ring_pos, update.values[layer], active)
    put = lambda x, y: jax.lax.dynamic_update_slice_in_dim(x, y, first, 0)
    return StreamCache(keys, values, put(cache.slot_frame, update.slot_frame), put(cache.next_frame,
                                                                                  update.next_frame))


def _pool_step_per_slot(model, cache: StreamCache, pixels, active, reset, with_tokens, folds):
    """`pool_step` one slot at a time (a loop inside the compiled step): each slot sees exactly the one-slot
    computation, and its new entries are written into the cache in place (the step donates it). An idle slot
    (not `active`) skips the model (a `cond`), so a partly filled pool costs only its active streams; a reset
    still restarts it."""
    slots = cache.keys.shape[1]
    take = lambda x, b: jax.lax.dynamic_slice_in_dim(x, b, 1, 0)

    def run(b, cache):
        return _step_slots(model, cache, b, take(pixels, b), take(active, b), take(reset, b), with_tokens, folds,
                           in_place=False)

    shapes = jax.eval_shape(lambda: run(0, cache))
    zeros = jax.tree.map(lambda v: jnp.zeros(v.shape, v.dtype), shapes)

    def idle(b, cache):  # what the step does to an inactive slot, without running the model
        restart = reset[b]
        return zeros[0], zeros[1]._replace(slot_frame=jnp.where(restart, -1, take(cache.slot_frame, b)),
                                           next_frame=jnp.where(restart, 0, take(cache.next_frame, b)))

    def body(b, carry):
        cache, outs = carry
        out, update = jax.lax.cond(active[b], run, idle, b, cache)
        cache = _apply_update(cache, b, update, take(active, b))
        return cache, {k: jax.lax.dynamic_update_slice_in_dim(outs[k], out[k], b, 0) for k in outs}

    outs = {k: jnp.zeros((slots, *v.shape[1:]), v.dtype) for k, v in shapes[0].items()}
    cache, outs = jax.lax.fori_loop(0, slots, body, (cache, outs))
    return outs, cache


def stream_step(model: StreamFormer, cache: StreamCache, pixels: jax.Array, folds=None) -> tuple[dict, StreamCache]:
    """One frame for every stream in the batch (lock-step): pixels [B, H, W, C] (normalised); folds: see
    `pool_step`.

    Returns ({"pooler_output": [B, D], "last_hidden_state": [B, N, D]}, updated cache).
    """
    batch = pixels.shape[0]
    return pool_step(model, cache, pixels, jnp.ones((batch,), bool), jnp.zeros((batch,), bool), folds=folds)
