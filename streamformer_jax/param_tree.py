"""Parameters as plain data: dotted names, flat and nested dicts, flat views of NNX modules, and back.

The dotted names (`layers.3.attention.qkv.base.kernel`) are this project's stable parameter names: checkpoints,
key maps, masks and the trainer all speak them. They follow the NNX attribute tree, independent of Flax
internals. Everything here works for any module (backbone, text tower, multitask model, classifier).
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class ParameterMismatchError(ValueError):
    """Raised with the full list of missing, unexpected and mis-shaped parameters."""


def path_name(path: Iterable) -> str:
    """An NNX state path -> its dotted name."""
    return ".".join(str(p) for p in path)


def nest(flat: Mapping[str, object]) -> dict:
    """{"a.b.c": x} -> {"a": {"b": {"c": x}}}."""
    tree: dict = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def flatten(tree: Mapping, prefix: str = "") -> dict[str, object]:
    """The inverse of `nest`."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def flat_variables(module_or_state, what=nnx.Param) -> dict[str, nnx.Variable]:
    """{dotted name: nnx.Variable} of a module (or an nnx.State); `what` is an nnx filter (None: every
    variable)."""
    state = module_or_state if isinstance(module_or_state, nnx.State) else (
        nnx.state(module_or_state) if what is None else nnx.state(module_or_state, what))
    return {path_name(p): v for p, v in nnx.to_flat_state(state)}


def flat_params(module: nnx.Module, what=nnx.Param) -> dict[str, Any]:
    """{dotted name: array} of a module's parameters (`what=None`: every variable)."""
    return {k: v.get_value() for k, v in flat_variables(module, what).items()}


def shapes(module: nnx.Module, what=nnx.Param) -> dict[str, tuple[int, ...]]:
    return {k: tuple(np.shape(v)) for k, v in flat_params(module, what).items()}


def raise_if_mismatched(what: str, missing, unexpected, wrong_shape, error=ParameterMismatchError) -> None:
    """One error that lists every missing, unexpected and mis-shaped entry (nothing if all are empty)."""
    if missing or unexpected or wrong_shape:
        lines = [f"{what}:"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items))
        raise error("\n".join(lines))


def check_params(expected: Mapping[str, tuple[int, ...]], got: Mapping[str, object], what: str) -> None:
    bad = sorted(f"{k}: expected {tuple(expected[k])}, got {tuple(np.shape(got[k]))}"
                 for k in set(expected) & set(got) if tuple(np.shape(got[k])) != tuple(expected[k]))
    raise_if_mismatched(f"{what} does not match the model", sorted(set(expected) - set(got)),
                        sorted(set(got) - set(expected)), bad)


def module_from_flat(abstract: nnx.Module, flat: Mapping[str, object], what: str = "parameters") -> nnx.Module:
    """Fill a shape-only module (`nnx.eval_shape`) from `{dotted.name: array}`; every name and shape must match
    exactly. Arrays are kept as they are (jax.Array) or converted to float32."""
    graphdef, state = nnx.split(abstract)
    flat_state = nnx.to_flat_state(state)
    check_params({path_name(p): v.get_value().shape for p, v in flat_state}, flat, what)
    for path, var in flat_state:
        value = flat[path_name(path)]
        var.set_value(value if isinstance(value, jax.Array) else np.asarray(value, dtype=np.float32))
    return nnx.merge(graphdef, nnx.from_flat_state(flat_state))


def mask_tree(state: nnx.State, mask: Mapping[str, Any]) -> nnx.State:
    """A pytree like `state` with `mask[name]` as leaves (e.g. the booleans of an optax mask)."""
    return nnx.from_flat_state([(p, mask[path_name(p)]) for p, _ in nnx.to_flat_state(state)])


class ModuleTemplate:
    """A module's structure without its values: rebuild it from `{dotted.name: array}` (inside jit too).

    `names` (every variable, in state order), `is_param`, `shapes` ({name: ShapeDtypeStruct}).
    """

    def __init__(self, module: nnx.Module):
        self.graphdef, state = nnx.split(module)
        self._template = [(path, var.replace(jax.ShapeDtypeStruct(np.shape(var.get_value()),
                                                                   jnp.result_type(var.get_value()))))
                          for path, var in nnx.to_flat_state(state)]
        self.names = [path_name(p) for p, _ in self._template]
        self.is_param = {path_name(p): isinstance(v, nnx.Param) for p, v in self._template}
        self.shapes = {path_name(p): v.get_value() for p, v in self._template}

    def merge(self, flat: Mapping[str, jax.Array]) -> nnx.Module:
        state = nnx.from_flat_state([(p, v.replace(flat[path_name(p)])) for p, v in self._template])
        return nnx.merge(self.graphdef, state)

    def abstract_state(self) -> nnx.State:
        return nnx.from_flat_state(self._template)
