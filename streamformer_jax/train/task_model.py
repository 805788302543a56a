"""What the trainer needs from a model (`TaskModel`), and what a model kind's builder reads (`ModelSettings`).

The trainer never looks inside the module. It flattens the module's variables to the project's stable dotted
names (`layers.3.mlp.fc1.kernel`, `streamformer_jax.param_tree`), splits them into trainable and frozen groups
by name, and rebuilds the module from flat arrays inside the jitted step (`param_tree.ModuleTemplate.merge`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
from flax import nnx

from streamformer_jax.models.config import StreamFormerConfig, get_preset
from streamformer_jax.models.streamformer import StreamFormer, remat_policy

# loss(model, task, batch, text, *, rng) -> (scalar loss, {name: scalar}); rng is the step's PRNG key.
LossFn = Callable[..., tuple[jax.Array, Mapping[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """The model part of a training config, derived once (`from_config`) and passed to the model kind.

    backbone: the architecture (preset + overrides + compute dtype); init: checkpoint to start from ("" =
    random); trainable: "original" or "all"; remat_policy / scan_layers: how the trainer traces the backbone's
    blocks (`apply_remat`); text / classifier / augment: the kind-specific config sections (`config.text`,
    `config.model.classifier`, `config.augment`), None when the config has none.
    abstract_text: not set from a config. A `SiglipTextConfig` asks the kind for a shape-only model (parameters,
    label tables as ShapeDtypeStructs; no values, no checkpoint read) whose frozen text tower has that
    architecture, for ahead-of-time compiles (`train.aot`).
    """

    kind: str
    backbone: StreamFormerConfig
    init: str = ""
    trainable: str = "original"
    remat_policy: str = "none"
    scan_layers: bool = False
    seed: int = 0
    text: Any = None
    classifier: Any = None
    augment: Any = None
    abstract_text: Any = None

    @classmethod
    def from_config(cls, config) -> "ModelSettings":
        m = config.model
        backbone = get_preset(m.preset, dtype=m.dtype, **dict(m.overrides))
        return cls(kind=m.kind, backbone=backbone, init=m.init, trainable=m.trainable,
                   remat_policy=m.remat_policy, scan_layers=bool(m.scan_layers), seed=int(config.seed),
                   text=config.get("text"), classifier=m.get("classifier"), augment=config.get("augment"))


@dataclasses.dataclass
class TaskModel:
    """A model plus everything the trainer needs to optimise it.

    model: the full NNX module (backbone, heads, and a frozen text tower if any).
    loss: `loss(model, task, batch, text, *, rng) -> (scalar loss, {name: scalar})`, traced once per task.
    trainable: dotted parameter name -> trained?  decay: dotted name -> weight-decayed?
    text: a pytree of arrays handed to every loss call (e.g. label embeddings); replicated on the mesh.
    prepare_batch: host-side hook run on each host batch before it is sharded (e.g. tokenise captions);
      it may add numpy arrays (this host's rows) and must leave fixed shapes per task.
    backbone: the backbone's architecture (for the FLOP count).
    export: `export(flat, out_dir)` writes what evaluation needs beside the backbone checkpoint that the trainer
      exports to `out_dir` (e.g. a classifier head); `flat` holds every parameter by dotted name.
    tokenizer: the text tokenizer the run encodes captions with (callable texts -> int32 [N, L]), if any
      (periodic zero-shot evaluation encodes its queries with it).
    """

    model: nnx.Module
    loss: LossFn
    trainable: Callable[[str], bool]
    decay: Callable[[str], bool]
    backbone: StreamFormerConfig
    text: Any = None
    prepare_batch: Callable[[dict], dict] | None = None
    export: Callable[[Mapping[str, Any], Any], None] | None = None
    tokenizer: Any = None


def apply_remat(model: nnx.Module, name: str, scan_layers: bool = False) -> nnx.Module:
    """Rematerialise every divided space-time block of the backbone(s) in `model` under the named policy, and
    trace the blocks as one `lax.scan` if `scan_layers` (same parameters; one block for the compiler).

    Sets the backbone's static `remat` / `scan_layers` attributes (the policy validated here); call on a freshly
    merged module inside the traced step.
    """
    remat_policy(name)  # fail early on an unknown name
    for _, node in nnx.iter_graph(model):
        if isinstance(node, StreamFormer):
            node.remat = name
            node.scan_layers = bool(scan_layers)
    return model
