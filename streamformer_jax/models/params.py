"""The backbone's parameters as plain data (`streamformer_jax.param_tree` applied to `StreamFormer`)."""
from __future__ import annotations

from typing import Mapping

from streamformer_jax.models.config import StreamFormerConfig
from streamformer_jax.models.streamformer import StreamFormer, abstract_model
from streamformer_jax.param_tree import module_from_flat, shapes


def param_shapes(config: StreamFormerConfig) -> dict[str, tuple[int, ...]]:
    return shapes(abstract_model(config))


def model_from_flat_params(config: StreamFormerConfig, flat: Mapping[str, object],
                           what: str = "parameters") -> StreamFormer:
    """Build a model from `{dotted.name: array}`; every name and shape must match exactly."""
    return module_from_flat(abstract_model(config), flat, what)
