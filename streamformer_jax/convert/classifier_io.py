"""The classification head's files: our head `.npz` (the head dict of `streamformer_jax.models.classifier`) and
the original action-recognition checkpoints (`k400.pt` / `ssv2.pt`: the backbone and the head in one PyTorch
state dict; torch needed only for those)."""
from __future__ import annotations

import pathlib
from typing import Mapping

import numpy as np

from streamformer_jax.convert.keymap import MASK_BUFFER, official_to_ours, ours_to_official
from streamformer_jax.convert.torch_io import require_torch, save_model_state
from streamformer_jax.key_rules import layer_norm, linear, to_ours, to_theirs
from streamformer_jax.param_tree import flatten, nest

# The original's head keys <-> our head dict (flattened: `fc_norm.scale`, ...).
HEAD_RULES = [*layer_norm("fc_norm", "fc_norm"), *linear("classifier", "classifier")]


def save_head(path, head: Mapping) -> None:
    np.savez(path, **{f"{a}.{b}": v for a, d in head.items() for b, v in d.items()})


def load_head(path) -> dict:
    with np.load(path) as z:
        out: dict = {}
        for k in z.files:
            a, b = k.split(".")
            out.setdefault(a, {})[b] = z[k]
    return out


def head_from_state_dict(state: Mapping[str, np.ndarray]) -> dict:
    """fc_norm / classifier of an original AR checkpoint (`k400.pt` / `ssv2.pt` model state, numpy)."""
    head = {k: v for k, v in _strip_module(state).items() if k.startswith(("fc_norm.", "classifier."))}
    return nest(to_ours(head, HEAD_RULES, None, "the AR checkpoint's classification head"))


def ar_checkpoint_to_ours(state: Mapping[str, np.ndarray], config) -> tuple[dict, dict]:
    """An original AR model state dict -> (our backbone flat params, head). Keys may carry `module.`."""
    state = _strip_module(state)
    backbone = {k: v for k, v in state.items() if not k.startswith(("fc_norm.", "classifier."))}
    masks = {MASK_BUFFER.format(l=l) for l in range(config.num_layers)}
    backbone = {k: v for k, v in backbone.items() if k not in masks}
    return official_to_ours(backbone, config, source="AR checkpoint"), head_from_state_dict(state)


def load_ar_checkpoint(path, config) -> tuple[dict, dict]:
    """An original AR checkpoint file (`k400.pt` / `ssv2.pt`: a state dict, or a dict holding it under
    "model" or "module" as DeepSpeed writes) -> (our backbone params, head). Needs torch."""
    torch = require_torch()
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "module"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    state = {k: v.detach().float().numpy() for k, v in obj.items() if hasattr(v, "detach")}
    return ar_checkpoint_to_ours(state, config)


def ours_to_ar_checkpoint(params: Mapping[str, np.ndarray], head: Mapping, config) -> dict[str, np.ndarray]:
    """Our backbone params + head -> the original AR model's state dict (NumPy float32, PyTorch layouts, mask
    buffers included); the inverse of `ar_checkpoint_to_ours`."""
    return {**ours_to_official(params, config), **to_theirs(flatten(head), HEAD_RULES)}


def save_ar_checkpoint(path, config, params: Mapping[str, np.ndarray], head: Mapping) -> pathlib.Path:
    """Write `{"model": AR state dict}` (what `load_ar_checkpoint` and the original AR code read). Needs torch."""
    torch = require_torch()
    state = {k: torch.from_numpy(v) for k, v in ours_to_ar_checkpoint(params, head, config).items()}
    path = pathlib.Path(path)
    save_model_state(path, state)
    return path


def _strip_module(state):
    if any(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items() if k.startswith("module.")}
    return dict(state)
