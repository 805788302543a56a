"""Continuous batching of live streams: `FeatureExtractor.stream_pool(slots=B)`.

    pool = fx.stream_pool(slots=4)              # window defaults to the model's frame count
    pool.open("cam0"); pool.open("cam1")
    out = pool.push({"cam0": f0, "cam1": f1})   # any subset of the open streams, uint8 [H, W, 3] each
    out["cam0"]["pooler_output"]                # float32 [D]; "last_hidden_state" [P, D]
    pool.close("cam0"); pool.open("cam2")       # cam2 takes the freed slot, starting at its frame 0
    pool.open("cam1")                           # reopening an open stream restarts it at frame 0

Each stream has its own frame counter (time-embedding row min(t, F-1)), its own ring-buffer position and its own
record of which cached frames it may attend to: streams that are not pushed in a call keep their cache and
counter unchanged, and a fresh stream never sees what an earlier occupant of its slot left behind. Every push runs
the same compiled step (one compilation per pool size and frame size), however streams come and go.

By default (`batch_invariant=True`) the step runs the slots one after another, each exactly as a one-slot step:
a stream's outputs are bit-for-bit those of `FeatureExtractor.stream()` fed the same frames, whatever else shares
its calls. `batch_invariant=False` runs all slots through each matmul together, the faster form where one frame
underfills the device (accelerators); the outputs then agree with a single stream's to float32 rounding (a few
1e-6 on the official fixtures), because XLA picks its matmul kernels by matrix size and row position.

A bad frame (wrong dtype or shape), or a frame for a stream that is not open, is rejected with a
`StreamFrameError` naming the stream; the other streams of the same call are processed all the same and their
outputs travel on the error (`err.outputs`).
"""
from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from streamformer_jax import sharding
from streamformer_jax.models import streaming


class PoolFullError(RuntimeError):
    """`open` on a pool whose slots are all taken."""


class StreamFrameError(ValueError):
    """Frames rejected by `StreamPool.push`: `errors` maps each stream to the reason; `outputs` holds the
    results of the streams whose frames were accepted in the same call."""

    def __init__(self, errors: dict, outputs: dict):
        self.errors, self.outputs = errors, outputs
        lines = "; ".join(f"stream {key!r}: {reason}" for key, reason in errors.items())
        done = f" ({len(outputs)} other stream(s) of this call processed; see .outputs)" if outputs else ""
        super().__init__(lines + done)


class StreamPool:
    """B slots of independent streams advanced by one compiled step; see the module doc."""

    def __init__(self, extractor, slots: int, window: int | None = None, frame_size: int | Sequence[int] | None = None,
                 return_tokens: bool = True, batch_invariant: bool = True, devices: Sequence | None = None):
        cfg = extractor.config
        self.slots = int(slots)
        if self.slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.window = cfg.num_frames if window is None else int(window)
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        size = cfg.image_size if frame_size is None else frame_size
        height, width = (size, size) if np.ndim(size) == 0 else tuple(size)
        self.frame_shape = (int(height), int(width), cfg.num_channels)
        self.return_tokens, self.batch_invariant = bool(return_tokens), bool(batch_invariant)
        self._fx = extractor
        self._slot_of: dict[Hashable, int] = {}
        self._frames_seen = np.zeros(self.slots, np.int64)
        self._reset = np.zeros(self.slots, bool)  # slots opened since the last step: start at frame 0
        cache = streaming.init_cache(extractor.model, self.slots, self.window, height, width)
        self._state, self._folds = extractor._state, extractor.temporal_folds
        self._cache, self._frames_sharding = cache, None
        self._step_fn = extractor._pool_step  # shared by every one-device pool: one compilation per pool size
        if devices is not None and len(devices) > 1:
            self._place(list(devices))

    def _place(self, devices: list) -> None:
        """Split the slots over several devices (data parallel): each device steps its own slots (shard_map), with
        its shard of the cache and a copy of the parameters."""
        if self.slots % len(devices):
            raise ValueError(f"{self.slots} slots cannot be split evenly over {len(devices)} devices")
        mesh = sharding.make_mesh(data=len(devices), devices=devices)  # the slots go over the `data` axis
        spec = lambda ndim, axis: PartitionSpec(*([None] * axis), "data", *([None] * (ndim - axis - 1)))
        cache_specs = streaming.StreamCache(spec(6, 1), spec(6, 1), spec(2, 0), spec(1, 0))
        self._state, self._folds = jax.device_put((self._state, self._folds), sharding.replicated(mesh))
        self._cache = jax.device_put(self._cache, jax.tree.map(lambda p: NamedSharding(mesh, p), cache_specs))
        self._frames_sharding = sharding.batch_sharding(mesh, 4, axes=("data",))
        fn = self._fx._pool_fn

        def local_step(state, folds, cache, frames, active, reset, with_tokens, batch_invariant):
            body = jax.shard_map(lambda *a: fn(*a, with_tokens, batch_invariant), mesh=mesh,
                                 in_specs=(PartitionSpec(), PartitionSpec(), cache_specs, spec(4, 0), spec(1, 0),
                                           spec(1, 0)),
                                 out_specs=(PartitionSpec("data"), cache_specs), check_vma=False)
            return body(state, folds, cache, frames, active, reset)

        self._step_fn = jax.jit(local_step, donate_argnums=2, static_argnums=(6, 7))

    # -- streams ----------------------------------------------------------------------------------------------
    @property
    def streams(self) -> tuple:
        """The open streams, in the order they were opened."""
        return tuple(self._slot_of)

    @property
    def free_slots(self) -> int:
        return self.slots - len(self._slot_of)

    def __contains__(self, key) -> bool:
        return key in self._slot_of

    def __len__(self) -> int:
        return len(self._slot_of)

    def open(self, key: Hashable) -> int:
        """Start stream `key` at frame 0 in a free slot (an open `key` restarts in its slot). Returns the slot."""
        slot = self._slot_of.get(key)
        if slot is None:
            taken = set(self._slot_of.values())
            free = [s for s in range(self.slots) if s not in taken]
            if not free:
                raise PoolFullError(f"all {self.slots} slots are in use (streams {list(self._slot_of)}); "
                                    f"close one first")
            slot = self._slot_of[key] = free[0]
        self._reset[slot] = True
        self._frames_seen[slot] = 0
        return slot

    def close(self, key: Hashable) -> None:
        """End stream `key` and free its slot (its cache is ignored by the next occupant)."""
        if key not in self._slot_of:
            raise KeyError(f"stream {key!r} is not open")
        del self._slot_of[key]

    def frames_seen(self, key: Hashable) -> int:
        if key not in self._slot_of:
            raise KeyError(f"stream {key!r} is not open")
        return int(self._frames_seen[self._slot_of[key]])

    # -- frames -----------------------------------------------------------------------------------------------
    def _check(self, key, frame) -> str | None:
        if key not in self._slot_of:
            return "not open (call open() first)"
        frame = np.asarray(frame)
        want = f"a uint8 RGB frame of shape {list(self.frame_shape)}"
        if frame.dtype != np.uint8:
            return f"expected {want}, got dtype {frame.dtype}"
        if frame.shape != self.frame_shape:
            return f"expected {want}, got shape {list(frame.shape)}"
        return None

    def push(self, frames: Mapping[Hashable, np.ndarray]) -> dict[Hashable, dict[str, np.ndarray]]:
        """One frame for each of any subset of the open streams -> {key: {"pooler_output": [D],
        "last_hidden_state": [P, D]}} (float32; tokens left out when the pool was made with
        return_tokens=False). Raises `StreamFrameError` (after processing the good frames) for bad ones."""
        errors = {key: reason for key, frame in frames.items() if (reason := self._check(key, frame)) is not None}
        good = {key: frame for key, frame in frames.items() if key not in errors}
        outputs = self._step(good) if good else {}
        if errors:
            raise StreamFrameError(errors, outputs)
        return outputs

    def _step(self, frames: Mapping) -> dict:
        batch = np.zeros((self.slots, *self.frame_shape), np.uint8)
        active = np.zeros(self.slots, bool)
        for key, frame in frames.items():
            slot = self._slot_of[key]
            batch[slot] = frame
            active[slot] = True
        pixels = batch if self._frames_sharding is None else jax.device_put(batch, self._frames_sharding)
        invariant = self.batch_invariant and self.slots > 1  # one slot: the same computation either way
        out, self._cache = self._step_fn(self._state, self._folds, self._cache, pixels, active, self._reset,
                                         self.return_tokens, invariant)
        self._reset = np.zeros(self.slots, bool)
        self._frames_seen[active] += 1
        host = {k: np.asarray(v) for k, v in out.items()}  # one copy per output, then slice on the host
        return {key: {k: v[self._slot_of[key]].astype(np.float32, copy=True) for k, v in host.items()}
                for key in frames}
