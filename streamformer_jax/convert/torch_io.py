"""PyTorch `.pth` reading and writing. torch is imported lazily: the rest of the package works without it."""
from __future__ import annotations

import argparse
import os
import pickle
from typing import Mapping

import numpy as np

from streamformer_jax.convert.keymap import OFFICIAL_PREFIX
from streamformer_jax.convert.pretrain import ConversionError, resolve_aliases


def require_torch():
    try:
        import torch
    except ImportError:
        raise ConversionError("reading or writing .pth checkpoints needs PyTorch, which is not installed "
                              "(pip install 'streamformer_jax[torch]')") from None
    return torch


def load_pth(path: str | os.PathLike) -> tuple[dict[str, object], list[str]]:
    """-> (state dict of torch tensors in stored order, other top-level entries that were ignored).

    Accepts the pretraining checkpoint (`{"model": state_dict, "optimizer": ..., "args": Namespace, ...}`) or a
    bare state dict. Loads with `weights_only=True` (no arbitrary code); `argparse.Namespace` (the `args`
    entry of the official checkpoints) is allowed.
    """
    torch = require_torch()
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: no such file")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConversionError(f"{path}: cannot be loaded safely with torch.load(weights_only=True): {first}") from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConversionError(f"{path}: not a readable PyTorch checkpoint ({first})") from None
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        state, ignored = obj["model"], [k for k in obj if k != "model"]
    elif isinstance(obj, Mapping):
        state, ignored = obj, []
    else:
        raise ConversionError(f"{path}: expected a dict (a state dict or {{'model': state_dict, ...}}), "
                              f"got {type(obj).__name__}")
    not_tensors = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ConversionError(f"{path}: state dict entries that are not tensors: {', '.join(not_tensors[:10])}"
                              + (" ..." if len(not_tensors) > 10 else ""))
    return dict(state), [str(k) for k in ignored]


def storage_identity(t) -> object:
    """Tensors with equal identities are the same data under two names (stored once by torch.save)."""
    if t.numel() == 0:
        return None
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)


def resolve_aliases_of(state: Mapping[str, object], preferred: set[str]) -> dict[str, str]:
    """{alias: canonical} among the tensors of a loaded state dict (see `pretrain.resolve_aliases`)."""
    return resolve_aliases({k: storage_identity(v) for k, v in state.items()}, preferred)


def to_numpy_f32(t) -> tuple[np.ndarray, bool]:
    """-> (float32 NumPy copy, whether the dtype was already float32)."""
    torch = require_torch()
    exact = t.dtype == torch.float32
    return t.detach().to("cpu", torch.float32).contiguous().numpy().copy(), exact


def save_pth(path: str | os.PathLike, backbone: Mapping[str, np.ndarray], extras: Mapping[str, object] | None = None,
             aliases: Mapping[str, str] | None = None, order: list[str] | None = None) -> int:
    """Write `{"model": state_dict}` as the pretraining wrapper's checkpoint: `timesformer.` + backbone keys,
    the extras, and every alias as the very same tensor object as its canonical key (so torch.save stores it
    once). Keys follow `order` when it names exactly these keys. Returns the number of entries."""
    torch = require_torch()
    tensors = {OFFICIAL_PREFIX + k: torch.from_numpy(np.array(v, dtype=np.float32, order="C"))
               for k, v in backbone.items()}
    tensors.update(extras or {})
    for alias, canonical in (aliases or {}).items():
        if canonical not in tensors:
            raise ConversionError(f"extras alias {alias} points to {canonical}, which is neither stored nor a "
                                  "backbone key")
        tensors[alias] = tensors[canonical]
    if order and set(order) == set(tensors):
        state = {k: tensors[k] for k in order}
    else:
        state = tensors
    save_model_state(path, state)
    return len(state)


def save_model_state(path: str | os.PathLike, state: Mapping[str, object]) -> None:
    """`torch.save({"model": state}, path)`, atomically (written to `path.tmp`, then renamed)."""
    torch = require_torch()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    torch.save({"model": state}, tmp)
    os.replace(tmp, path)
