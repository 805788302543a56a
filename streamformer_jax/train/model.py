"""What the trainer needs from a model: a module, a per-task loss and parameter groups (`TaskModel`).

The trainer never looks inside the module. It flattens the module's variables to the project's stable dotted
names (`layers.3.mlp.fc1.kernel`, as `streamformer_jax.models.params`), splits them into trainable and frozen
groups by name, and rebuilds the module from flat arrays inside the jitted step (`ModelDef.merge`).

Model kinds are registered by name (`config.model.kind`): "multitask" is the StreamFormer backbone with the
multitask heads of `streamformer_jax.train.multitask`; "classifier" is the action-recognition finetuning model
of `streamformer_jax.train.classifier`; tests register small stand-ins.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from streamformer_jax.models.streamformer import StreamFormer, remat_policy
from streamformer_jax.models.config import StreamFormerConfig

LossFn = Callable[..., tuple[jax.Array, Mapping[str, jax.Array]]]


@dataclasses.dataclass
class TaskModel:
    """A model plus everything the trainer needs to optimise it.

    model: the full NNX module (backbone, heads, and a frozen text tower if any).
    loss: `loss(model, task, batch, text) -> (scalar loss, {name: scalar})`, traced once per task.
    trainable: dotted parameter name -> trained?  decay: dotted name -> weight-decayed?
    text: a pytree of arrays handed to every loss call (e.g. label embeddings); replicated on the mesh.
    prepare_batch: host-side hook run on each host batch before it is sharded (e.g. tokenise captions);
      it may add numpy arrays (this host's rows) and must leave fixed shapes per task.
    backbone: the backbone's architecture (for the FLOP count).
    export: `export(flat, out_dir)` writes what evaluation needs beside the backbone checkpoint that the trainer
      exports to `out_dir` (e.g. a classifier head); `flat` holds every parameter by dotted name.
    """

    model: nnx.Module
    loss: LossFn
    trainable: Callable[[str], bool]
    decay: Callable[[str], bool]
    backbone: StreamFormerConfig
    text: Any = None
    prepare_batch: Callable[[dict], dict] | None = None
    export: Callable[[Mapping[str, Any], Any], None] | None = None


_KINDS: dict[str, Callable[..., TaskModel]] = {}
# The project's own kinds, imported on first use (they pull in heavier modules: the text tower, eval).
_BUILTIN_KIND_MODULES = {"multitask": "streamformer_jax.train.multitask_adapter",
                         "classifier": "streamformer_jax.train.classifier"}


def register_model_kind(name: str, builder: Callable[..., TaskModel]) -> None:
    """`builder(config, class_names: {task: [names]}) -> TaskModel`."""
    _KINDS[name] = builder


def build_task_model(config, class_names: Mapping[str, list[str]], **options) -> TaskModel:
    """options: passed to the kind's builder (e.g. `abstract_text=` for a shape-only multitask model)."""
    kind = config.model.kind
    if kind not in _KINDS and kind in _BUILTIN_KIND_MODULES:
        importlib.import_module(_BUILTIN_KIND_MODULES[kind])  # registers the kind
    if kind not in _KINDS:
        raise ValueError(f"unknown model kind {kind!r}; registered: {sorted(_KINDS)}")
    return _KINDS[kind](config, class_names, **options)


def backbone_config(config) -> StreamFormerConfig:
    from streamformer_jax.models.config import get_preset

    overrides = dict(config.model.overrides)
    return get_preset(config.model.preset, dtype=config.model.dtype, **overrides)


# -------------------------------------------------------------------------------------- flat <-> module glue
def _name(path) -> str:
    return ".".join(str(p) for p in path)


class ModelDef:
    """A module's structure without its values: rebuild it from `{dotted.name: array}` inside jit."""

    def __init__(self, model: nnx.Module):
        self.graphdef, state = nnx.split(model)
        self._template = [(path, var.replace(jax.ShapeDtypeStruct(np.shape(var.get_value()),
                                                                   jnp.result_type(var.get_value()))))
                          for path, var in nnx.to_flat_state(state)]
        self.names = [_name(p) for p, _ in self._template]
        self.is_param = {_name(p): isinstance(v, nnx.Param) for p, v in self._template}

    def merge(self, flat: Mapping[str, jax.Array]) -> nnx.Module:
        state = nnx.from_flat_state([(p, v.replace(flat[_name(p)])) for p, v in self._template])
        return nnx.merge(self.graphdef, state)

    def abstract_state(self) -> nnx.State:
        return nnx.from_flat_state(self._template)


def flat_values(model: nnx.Module) -> dict[str, jax.Array]:
    return {_name(p): v.get_value() for p, v in nnx.to_flat_state(nnx.state(model))}


# ------------------------------------------------------------------------------------------------- remat
def apply_remat(model: nnx.Module, name: str, scan_layers: bool = False) -> nnx.Module:
    """Rematerialise every divided space-time block of the backbone(s) in `model` under the named policy.

    Sets the backbone's static `remat` attribute (validated here); call on a freshly merged module inside
    the traced step.
    """
    remat_policy(name)  # fail early on an unknown name
    for _, node in nnx.iter_graph(model):
        if isinstance(node, StreamFormer):
            node.remat = name
            node.scan_layers = bool(scan_layers)
    return model


def call_loss(loss: LossFn, model, task: str, batch, text, rng):
    """Calls the loss, passing `rng` only if it accepts one."""
    try:
        takes_rng = "rng" in inspect.signature(loss).parameters
    except (TypeError, ValueError):
        takes_rng = False
    if takes_rng:
        return loss(model, task, batch, text, rng=rng)
    return loss(model, task, batch, text)
