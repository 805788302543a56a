"""Which parameters train and which are weight-decayed, as functions of their dotted names (the original's
groups, spec §5.5); shared by every model kind. `mask_tree` turns a {name: bool} mask into the pytree of an
nnx.State (optax masks); `trainable_filter` is the same split as an nnx filter (`nnx.Optimizer(wrt=...)`)."""
from __future__ import annotations

import re
from typing import Iterable, Mapping

from flax import nnx

_SPATIAL_BASE = re.compile(r"^backbone\.layers\.\d+\.attention\.(qkv|out)\.base\.")


def _name(path) -> str:
    return ".".join(str(p) for p in path)


def _names(names_or_params) -> list[str]:
    return list(names_or_params.keys() if isinstance(names_or_params, Mapping) else names_or_params)


def is_trainable(name: str, lora: bool = True) -> bool:
    if name.startswith("text_encoder."):
        return False
    return not (lora and _SPATIAL_BASE.match(name))


def trainable_mask(names_or_params: Iterable[str] | Mapping[str, object]) -> dict[str, bool]:
    """The original split: text tower frozen; with spatial LoRA, the spatial base qkv/out frozen (LoRA trains)."""
    names = _names(names_or_params)
    lora = any(".attention.qkv.lora_a." in n for n in names)
    return {n: is_trainable(n, lora) for n in names}


def trainable_by_mode(names: Iterable[str], mode: str) -> dict[str, bool]:
    """`config.model.trainable`: "original" (`trainable_mask`) or "all" (everything but the text tower)."""
    names = list(names)
    if mode == "original":
        return trainable_mask(names)
    if mode == "all":
        return {n: not n.startswith("text_encoder.") for n in names}
    raise ValueError(f"config.model.trainable must be 'original' or 'all', got {mode!r}")


def trainable_filter(lora: bool = True):
    """nnx filter selecting the trainable parameters (`lora`: whether the model has spatial LoRA)."""
    return nnx.All(nnx.Param, lambda path, value: is_trainable(_name(path), lora))


def decays(name: str) -> bool:
    last = name.rsplit(".", 1)[-1]
    if last == "bias" or name.endswith("embeddings.patch_bias"):
        return False
    if last == "scale":  # LayerNorm weights (1-D in the original)
        return False
    return True


def weight_decay_mask(names_or_params: Iterable[str] | Mapping[str, object]) -> dict[str, bool]:
    """The original groups: no decay for `ndim == 1` tensors and names ending in `.bias`, decay otherwise
    (0-dim gates and logit scale/bias included). Our kernels are multi-dimensional where the original's are
    2-D, so the rule is written on names: biases (incl. `patch_bias`) and LayerNorm scales."""
    return {n: decays(n) for n in _names(names_or_params)}


def mask_tree(state: nnx.State, mask: Mapping[str, bool]) -> nnx.State:
    """A pytree like `state` (nnx.State of params) with the mask's booleans as leaves (optax masks)."""
    flat = [(p, mask[_name(p)]) for p, _ in nnx.to_flat_state(state)]
    return nnx.from_flat_state(flat)
