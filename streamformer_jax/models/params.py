"""Parameters as plain data: a flat `{dotted.name: array}` view of the model and back.

The dotted names (`layers.3.attention.qkv.base.kernel`) are this project's stable checkpoint names; they
follow the NNX attribute tree, independent of Flax internals.
"""
from __future__ import annotations

from typing import Mapping

import jax
import numpy as np
from flax import nnx

from streamformer_jax.models.config import StreamFormerConfig
from streamformer_jax.models.streamformer import StreamFormer, abstract_model


class ParameterMismatchError(ValueError):
    """Raised with the full list of missing, unexpected and mis-shaped parameters."""


def _name(path) -> str:
    return ".".join(str(p) for p in path)


def flat_params(model: StreamFormer) -> dict[str, jax.Array]:
    state = nnx.state(model, nnx.Param)
    return {_name(path): var.get_value() for path, var in nnx.to_flat_state(state)}


def param_shapes(config: StreamFormerConfig) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in flat_params(abstract_model(config)).items()}


def raise_if_mismatched(what: str, missing, unexpected, wrong_shape) -> None:
    """One error that lists every missing, unexpected and mis-shaped entry (nothing if all are empty)."""
    if missing or unexpected or wrong_shape:
        lines = [f"{what}:"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items))
        raise ParameterMismatchError("\n".join(lines))


def check_params(expected: Mapping[str, tuple[int, ...]], got: Mapping[str, object], what: str) -> None:
    bad = sorted(f"{k}: expected {tuple(expected[k])}, got {tuple(np.shape(got[k]))}"
                 for k in set(expected) & set(got) if tuple(np.shape(got[k])) != tuple(expected[k]))
    raise_if_mismatched(f"{what} does not match the model", sorted(set(expected) - set(got)),
                        sorted(set(got) - set(expected)), bad)


def model_from_flat_params(config: StreamFormerConfig, flat: Mapping[str, object],
                           what: str = "parameters") -> StreamFormer:
    """Build a model from `{dotted.name: array}`; every name and shape must match exactly."""
    graphdef, state = nnx.split(abstract_model(config))
    flat_state = nnx.to_flat_state(state)
    check_params({_name(p): v.get_value().shape for p, v in flat_state}, flat, what)
    for path, var in flat_state:
        value = flat[_name(path)]
        var.set_value(value if isinstance(value, jax.Array) else np.asarray(value, dtype=np.float32))
    return nnx.merge(graphdef, nnx.from_flat_state(flat_state))
