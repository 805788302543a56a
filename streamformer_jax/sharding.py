"""The one mesh/sharding module: the device mesh, logical-axis rules for placing parameters, and the shardings
(and host -> global array helpers) of batches and replicated values.

Parameters carry logical axis names (`embed`, `embed_out` (a D->D map's output), `heads`, `kv`, `mlp`, `lora`, `norm`); a rule set maps them
onto the mesh axes (`data`, `fsdp`, `tensor`). ViT-B needs no model parallelism for memory, so the default
is pure data parallelism, but FSDP and tensor parallelism are wired and tested.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from flax import linen, nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the batch dimension of activations is split over both

RULES = {
    "dp": (("embed", None), ("embed_out", None), ("heads", None), ("kv", None), ("mlp", None), ("lora", None),
           ("norm", None)),
    "fsdp": (("embed", "fsdp"), ("embed_out", None), ("heads", None), ("kv", None), ("mlp", None),
             ("lora", None), ("norm", None)),
    # Megatron-style: attention heads and the MLP hidden units over `tensor`. The temporal D->D map stays
    # unsplit on its output (`embed_out`), so the residual stream is never split over `tensor`: the map is folded
    # into the row-parallel temporal out-projection (heads on `tensor`) and splitting it buys nothing. Splitting it
    # also trips an XLA partitioner bug on a mesh with data, fsdp and tensor all > 1 (XLA:CPU, jax 0.10.2): a
    # residual split on `tensor` plus a row-parallel projection gives wrong values (minimal reproduction in
    # tests/test_scan_and_sharding_bug.py, docs/training.md).
    "fsdp_tp": (("embed", "fsdp"), ("embed_out", None), ("heads", "tensor"), ("kv", None), ("mlp", "tensor"),
                ("lora", None), ("norm", None)),
}


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh with Auto axis types (GSPMD); one axis may be -1: it takes the devices the
    others leave."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = [int(data), int(fsdp), int(tensor)]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {sizes}")
    if -1 in sizes:
        known = int(np.prod([s for s in sizes if s != -1]))
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices cannot be split into a mesh of {sizes}")
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(f"mesh {'x'.join(map(str, sizes))} does not use the {len(devices)} available devices")
    grid = np.asarray(devices).reshape(sizes)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def get_rules(name_or_rules) -> tuple:
    if isinstance(name_or_rules, str):
        if name_or_rules not in RULES:
            raise ValueError(f"unknown sharding rules {name_or_rules!r}; choose from {sorted(RULES)}")
        return RULES[name_or_rules]
    return tuple(name_or_rules)


def state_shardings(state: nnx.State, mesh: Mesh, rules="dp") -> nnx.State:
    """NamedShardings for a model state, from the logical names its parameters were annotated with."""
    return linen.logical_to_mesh_sharding(nnx.get_partition_spec(state), mesh, get_rules(rules))


def shard_state(state: nnx.State, mesh: Mesh, rules="dp") -> nnx.State:
    return jax.device_put(state, state_shardings(state, mesh, rules))


def batch_sharding(mesh: Mesh, ndim: int | None = None, axes: Sequence[str] = BATCH_AXES) -> NamedSharding:
    """Leading (batch) axis over `axes` (default data x fsdp), the rest replicated (spelt out for `ndim` axes)."""
    rest = [None] * (ndim - 1) if ndim else []
    return NamedSharding(mesh, PartitionSpec(tuple(axes), *rest))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def put_global(host: Any, sharding: NamedSharding) -> jax.Array:
    """A global array from a host value every process holds in full (each device takes its shard of it)."""
    host = np.asarray(host)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every leaf (the same on every process) as a replicated global array."""
    sharding = replicated(mesh)
    return jax.tree_util.tree_map(lambda x: put_global(x, sharding), tree)


def batch_devices(mesh: Mesh, axes: Sequence[str] = BATCH_AXES) -> int:
    """Devices of this process along the batch axes: a host's rows must be a multiple of it."""
    n = int(np.prod([mesh.shape[a] for a in axes]))
    return max(1, n // jax.process_count())


def from_host_rows(rows: np.ndarray, mesh: Mesh, axes: Sequence[str] = BATCH_AXES) -> jax.Array:
    """This process's rows of a batch (a multiple of `batch_devices`) -> the global array split over `axes`."""
    return jax.make_array_from_process_local_data(batch_sharding(mesh, rows.ndim, axes), rows)


def host_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a batch-split global array, in order, each once (replicated axes hold the same rows
    on several devices)."""
    rows, seen = [], set()
    for s in sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0):
        start = s.index[0].start or 0
        if start not in seen:
            seen.add(start)
            rows.append(np.asarray(s.data))
    return np.concatenate(rows)
