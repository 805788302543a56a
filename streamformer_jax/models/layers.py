"""Small building blocks: dense maps with named multi-dimensional kernels, LayerNorm and LoRA.

Kernels keep their head structure (`[D, 3, heads, head_dim]` for a fused qkv) so that parameters carry
logical axis names a mesh can shard (heads on `tensor`, embed on `fsdp`) without slicing q/k/v apart.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Shape = Sequence[int]
Axes = Sequence[str | None]


class HostRngs:
    """Parameter initialisation on the host with NumPy, one independent stream per parameter.

    Compiling per-parameter RNG kernels costs 10-30 s on a CPU (each draw is its own XLA program); NumPy
    draws the 130 M ViT-B parameters in about a second. Deterministic in (seed, creation order).
    """

    def __init__(self, seed: int = 0):
        self.seed, self.count = int(seed), 0

    def params(self) -> np.random.Generator:
        self.count += 1
        return np.random.default_rng([self.seed, self.count])


def abstract_module(cls, config) -> nnx.Module:
    """`cls(config)`'s structure with shape-only parameters (no memory, no RNG work)."""
    with nnx.use_eager_sharding(False):  # placement is the caller's job (`sharding.shard_state`)
        return nnx.eval_shape(lambda: cls(config, rngs=None))


def init_module(cls, config, seed: int = 0) -> nnx.Module:
    """`cls(config)` initialised on the host from `seed` (`HostRngs`)."""
    with nnx.use_eager_sharding(False):
        return cls(config, rngs=HostRngs(seed))


def normal_init(std: float):
    """N(0, std²). The official `trunc_normal_(std=0.02)` truncates at torch's default ±2 in absolute units
    (±100σ), so it is this plain normal in practice."""

    def init(rng: np.random.Generator, shape):
        return std * rng.standard_normal(shape)

    return init


def zeros_init(rng, shape):
    return np.zeros(shape)


def ones_init(rng, shape):
    return np.ones(shape)


def param(rngs: HostRngs | None, init, shape: Shape, axes: Axes) -> nnx.Param:
    """A float32 parameter annotated with logical axis names; zeros without `rngs` (for abstract models)."""
    if len(axes) != len(shape):
        raise ValueError(f"axes {axes} do not match shape {shape}")
    if rngs is None:
        value = jnp.zeros(tuple(shape), jnp.float32)
    else:
        value = jnp.asarray(np.asarray(init(rngs.params(), tuple(shape)), dtype=np.float32))
    return nnx.Param(value, sharding_names=tuple(axes))


def _letters(n: int, start: int) -> str:
    return "".join(chr(ord("a") + start + i) for i in range(n))


class Dense(nnx.Module):
    """y = x · W + b where x ends in `in_shape` and y ends in `out_shape` (one einsum)."""

    def __init__(self, in_shape: Shape, out_shape: Shape, in_axes: Axes, out_axes: Axes, *, use_bias=True,
                 kernel_init=normal_init(0.02), rngs: HostRngs | None):
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        self.kernel = param(rngs, kernel_init, self.in_shape + self.out_shape, tuple(in_axes) + tuple(out_axes))
        self.bias = param(rngs, zeros_init, self.out_shape, out_axes) if use_bias else None
        i, o = _letters(len(self.in_shape), 0), _letters(len(self.out_shape), len(self.in_shape))
        self._spec = f"...{i},{i}{o}->...{o}"

    def __call__(self, x: jax.Array, dtype=None) -> jax.Array:
        dtype = dtype or x.dtype
        y = jnp.einsum(self._spec, x.astype(dtype), self.kernel[...].astype(dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype)
        return y


class LoRADense(nnx.Module):
    """A frozen-able base Dense plus an unscaled low-rank update, as the official spatial LoRA:

    y = x W + b + (x A) B, with A ~ N(0, 0.02²) and B = 0 at init, no α/r scaling, no dropout. The two
    paths are kept separate (not folded) so float rounding matches the original.
    """

    def __init__(self, in_shape: Shape, out_shape: Shape, in_axes: Axes, out_axes: Axes, rank: int, *,
                 use_bias=True, rngs: HostRngs | None):
        self.base = Dense(in_shape, out_shape, in_axes, out_axes, use_bias=use_bias, rngs=rngs)
        self.rank = rank
        if rank:
            self.lora_a = Dense(in_shape, (rank,), in_axes, ("lora",), use_bias=False, rngs=rngs)
            self.lora_b = Dense((rank,), out_shape, ("lora",), out_axes, use_bias=False,
                                kernel_init=zeros_init, rngs=rngs)

    def __call__(self, x: jax.Array, dtype=None) -> jax.Array:
        y = self.base(x, dtype)
        if self.rank:
            y = y + self.lora_b(self.lora_a(x, dtype), dtype)
        return y


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis with the biased variance (as torch), always computed in float32."""

    def __init__(self, dim: int, eps: float, *, rngs: HostRngs | None):
        self.eps = eps
        self.scale = param(rngs, ones_init, (dim,), ("norm",))
        self.bias = param(rngs, zeros_init, (dim,), ("norm",))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        centred = x32 - mean
        var = jnp.mean(jnp.square(centred), axis=-1, keepdims=True)
        y = centred * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]
        return y.astype(x.dtype)


class MLP(nnx.Module):
    def __init__(self, dim: int, hidden: int, approximate_gelu: bool, *, rngs: HostRngs | None):
        self.fc1 = Dense((dim,), (hidden,), ("embed",), ("mlp",), rngs=rngs)
        self.fc2 = Dense((hidden,), (dim,), ("mlp",), ("embed",), rngs=rngs)
        self.approximate_gelu = approximate_gelu

    def __call__(self, x: jax.Array, dtype=None) -> jax.Array:
        return self.fc2(jax.nn.gelu(self.fc1(x, dtype), approximate=self.approximate_gelu), dtype)
