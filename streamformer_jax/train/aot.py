r"""Compile the real training and streaming steps for a TPU slice on a machine without a TPU, and size the run.

    python -m streamformer_jax.train.aot --config configs/pretrain_multitask.py --topology v5p:4x4x4 \
        [--preset dp|fsdp|fsdp_tp] [--config.KEY=VALUE ...] --out report.json
        [--config.data_dir=DIR | --samples TASK=N,... | --classes TASK=N,...]
    python -m streamformer_jax.train.aot --stream --config configs/pretrain_multitask.py --topology v5e:2x2 \
        --window 16 [--streams_per_chip 8,16] --out stream.json     # largest pool of streams that fits

Needs libtpu (`pip install 'streamformer_jax[tpu]'`): XLA's TPU compiler runs on the CPU against the compile-only
devices of the topology. Nothing is materialised: the state, batch and text arrays are ShapeDtypeStructs with
the trainer's shardings. The mesh, the model and the trainer come from `train`'s own start-up phases
(`loop.Setup`: `sharding.make_mesh` over the topology's devices, `ModelSettings` -> the model kind's builder,
shape-only, -> `step.Trainer` with its shardings, masks, `micro_step_fn` and `apply_step`). The run's label
tables and task cycle come from `--config.data_dir` (its metadata only) or stand-ins (`CompileSetup`).

Training report (JSON; every figure per device):
  {"topology", "device_kind", "num_devices", "mesh": {axis: size}, "config": {...},
   "resident": {"params", "frozen", "opt", "accumulator", "text", "total"}  (bytes held for the whole run),
   "steps": {"micro_<task>" | "apply": {"compile_s", "argument_bytes", "output_bytes", "temp_bytes",
             "alias_bytes", "hbm_bytes", "hbm_capacity", "fits", "flops", "analytic_flops", "bytes_accessed",
             "collectives": {kind: {"count", "bytes", "wire_bytes"}}, "estimate": {...}, "error"?}},
   "estimate": {"step_s", "mfu", "bound", "compute_s", "memory_s", "collective_s", "clips_per_s"}}

  hbm_bytes = arguments + temporaries + outputs - aliased (donated) outputs + code + whatever stays resident
  without being an argument of that step (the label embeddings during the update). The micro-step takes the
  whole train state as arguments (`keep_unused`), so the optimizer moments, the frozen towers (incl. the text
  tower) and the accumulator are counted, and the compiler budgets for them. `fits` is hbm_bytes <= the HBM the
  compiler allows one program (`compiler_hbm_limit`, read from the compiler's out-of-memory message for an
  oversized probe: 15.75 GiB on v5e, 30.75 on v4, 95.74 on v5p, 31.25 on v6e with libtpu 0.0.42); a step the
  compiler rejects for memory is reported with "fits": false and its message.
  analytic_flops: the backbone's model FLOPs (`train.flops`, 3 x forward, no remat) for this device's share of
  the micro-batch; flops / analytic_flops - 1 is rematerialisation plus the heads and the text tower.
  flops / bytes_accessed are XLA's cost analysis, which counts a loop body once: for a scanned model
  (`scan_layers`) they cover one block ("costs_counted": "xla, loop bodies once", "loop_trips"); compile the
  unrolled model (or one block) for FLOP and traffic figures. Memory and collectives are exact either way.
  Estimates are a roofline: per step the maximum of flops / peak, bytes accessed / HBM bandwidth and wire bytes /
  ICI bandwidth (chip figures and sources: `train.tpu_chips`); one optimizer step = accum_steps micro-steps in
  the task cycle's proportions (`_combine`) + the update; MFU = analytic FLOPs / (step time x peak). Compiled and
  estimated, not measured.

Streaming report: {"topology", "window", "max_streams_per_chip", "resolution", "predicted_from_two_compiles",
  "tried": {streams_per_chip: step report + "cache_bytes_per_stream", "params_bytes", estimate with
  "frames_per_s_per_chip"}} (`search_streams`), or {"runs": {...}} for given --streams_per_chip.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import sys
import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from ml_collections import config_flags

from data_pipelines.pipeline import mixture
from streamformer_jax import cli, sharding
from streamformer_jax.models import streaming
from streamformer_jax.models.streamformer import abstract_model, normalize_pixels
from streamformer_jax.tasks import registry
from streamformer_jax.text.model import SiglipTextConfig
from streamformer_jax.train import compiled_stats, flops as flops_lib, loop
from streamformer_jax.train.multitask_kind import random_tower_config
from streamformer_jax.train.task_model import ModelSettings
from streamformer_jax.train.tpu_chips import TopologyError, chip_for, topology_devices

# The original mixture's label sets when no data is given (`--config.data_dir` reads the real ones): one table for
# the action tasks, one per source dataset for localization and VIS (the nested label2id; rows by id, so 1-based
# ids add an empty row 0). Only the shapes of the label-embedding tables matter here.
LABEL_SETS: dict[str, int | dict[str, int]] = {
    "kinetics": 400, "ssv2": 174,
    "localization": {"ActivityNet": 200, "FineAction": 106, "HACS": 200},
    "vis": {"COCOPseudoVIS": 80, "LVVIS": 1197, "YoutubeVIS": 41},
}
_OOM = re.compile(r"RESOURCE_EXHAUSTED|Ran out of memory|out of memory", re.I)
# "Used 17.3G of 15.75G hbm" or "... exceeds available HBM (15.75G)": the HBM the compiler lets a program use.
_CAPACITY = re.compile(r"(?:Used\s+[\d.]+[KMGT]?\s+of\s+|available\s+HBM\s+\()([\d.]+)([KMGT])?", re.I)
_UNIT = {None: 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


class AotError(ValueError):
    """A problem with the request (shapes, mesh, topology) stated in one line."""


# ------------------------------------------------------------------------------------------------- helpers
def _nbytes(sds) -> int:
    shape = sds.sharding.shard_shape(sds.shape) if getattr(sds, "sharding", None) is not None else sds.shape
    return int(np.prod(shape, dtype=np.int64)) * jnp.dtype(sds.dtype).itemsize


def tree_bytes(tree) -> int:
    """Per-device bytes of a pytree of (sharded) ShapeDtypeStructs."""
    return int(sum(_nbytes(x) for x in jax.tree_util.tree_leaves(tree)))


def _with_sharding(tree, sharding):
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def text_tower_config(settings: ModelSettings) -> SiglipTextConfig:
    """The frozen text tower's architecture: from the text checkpoint or init directory when one is readable,
    else SigLIP-B/16's (the recipe's) for a 768-wide backbone, else the config's random tower."""
    for source in (settings.text.get("checkpoint", ""), settings.init):
        path = pathlib.Path(source) / "config.json" if source else None
        if path is not None and path.is_file():
            try:
                return SiglipTextConfig.from_hf_dict(json.loads(path.read_text()))
            except (ValueError, TypeError, KeyError):
                pass
    if settings.backbone.hidden_size == 768:
        return SiglipTextConfig()  # SigLIP base: 12 layers, 768 wide, vocab 32000, 64 positions
    return random_tower_config(settings)


def abstract_batch(config, task: str, mesh, meta: Mapping[str, Any] | None = None) -> dict[str, jax.ShapeDtypeStruct]:
    """The device batch the trainer gets for `task`: the numeric fields of `data_pipelines.pipeline.transforms`
    (plus `dataset_id` when the task's metadata has per-dataset label tables) and the tokenised captions, as
    ShapeDtypeStructs split over the run's batch axes (`loop.data_config`)."""
    data = loop.data_config(config, pathlib.Path("."))  # the clip shape and batch axes of the run; reads nothing
    b, t, s, p = int(data.global_batch_size), int(data.num_frames), int(data.image_size), \
        int(config.model.overrides.patch_size)
    fields = {"video": ((b, t, s, s, 3), jnp.uint8), "frame_index": ((b, t), jnp.int32),
              "timestamps": ((b, t), jnp.float32), "row": ((b,), jnp.int32)}
    if (meta or {}).get("label_tables"):
        fields["dataset_id"] = ((b,), jnp.int32)
    task_cfg = data.tasks[task] if task in data.tasks else {}
    m = s if str(task_cfg.get("mask_resolution", "input")) == "input" else s // p  # VIS targets
    captions = ((b, int(config.text.max_length)), jnp.int32)
    per_task = {
        "kinetics": {"label": ((b,), jnp.int32)},
        "ssv2": {"label": ((b,), jnp.int32)},
        "retrieval": {"caption_ids": captions},
        "grounding": {"caption_ids": captions, "label": ((b, t), jnp.float32), "duration": ((b,), jnp.float32)},
        "localization": {"label": ((b, t), jnp.int32), "duration": ((b,), jnp.float32)},
        "vis": {"mask": ((b, t, m, m), jnp.int32)},
    }
    if task not in per_task:
        raise AotError(f"task {task!r}: its batch fields are not known here (streamformer_jax.train.aot."
                       f"abstract_batch knows {sorted(per_task)})")
    fields.update(per_task[task])
    split = sharding.batch_sharding(mesh, axes=data.data_axes)
    return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=split) for k, (shape, dtype) in fields.items()}


def _compile(fn, *args) -> tuple[Any, float, str | None]:
    t0 = time.perf_counter()
    try:
        compiled = fn.lower(*args).compile()
    except Exception as e:  # noqa: BLE001 - report the compiler's message, never crash the sweep
        return None, time.perf_counter() - t0, str(e)
    return compiled, time.perf_counter() - t0, None


def _short(message: str, limit: int = 600) -> str:
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    keep = [ln for ln in lines if _OOM.search(ln) or "Used " in ln or "Exceeded" in ln] or lines[:3]
    return " | ".join(keep)[:limit]


def _capacity_from(message: str) -> int | None:
    m = _CAPACITY.search(message)
    return int(float(m.group(1)) * _UNIT[m.group(2)]) if m else None


_LIMITS: dict[str, int] = {}


def compiler_hbm_limit(device, fallback: int) -> int:
    """The HBM the TPU compiler lets one program use on `device`'s chip (v5e: 15.75 GiB of its 16 GiB), read from
    the out-of-memory message of a deliberately oversized program (a 256 GiB temporary; compiles in seconds).
    `fallback` (the chip table's capacity) if the message cannot be read."""
    kind = device.device_kind
    if kind not in _LIMITS:
        x = jax.ShapeDtypeStruct((1 << 18,), jnp.float32, sharding=jax.sharding.SingleDeviceSharding(device))
        try:
            jax.jit(lambda x: x[:, None] * x[None, :]).lower(x).compile()
            _LIMITS[kind] = fallback
        except Exception as e:  # noqa: BLE001 - the message is what we want
            _LIMITS[kind] = _capacity_from(str(e)) or fallback
    return _LIMITS[kind]


def _step_report(compiled, compile_s, error, *, n_dev, chip, extra_resident, analytic, capacity) -> dict:
    if compiled is None:
        out = {"compile_s": round(compile_s, 2), "fits": False if error and _OOM.search(error) else None,
               "error": _short(error or "")}
        cap = _capacity_from(error or "")
        if cap:
            out["hbm_capacity"] = cap
        return out
    stats = compiled_stats.summarize(compiled, n_dev)
    hbm = (stats["argument_bytes"] + stats["temp_bytes"] + stats["output_bytes"] - stats["alias_bytes"]
           + stats["code_bytes"] + extra_resident)
    est = roofline(stats, chip)
    return {"compile_s": round(compile_s, 2), **{k: stats[k] for k in (
        "argument_bytes", "output_bytes", "temp_bytes", "alias_bytes", "code_bytes")},
            "resident_not_in_arguments": extra_resident, "hbm_bytes": int(hbm), "hbm_capacity": capacity,
            "fits": bool(hbm <= capacity), "flops": stats["flops"], "analytic_flops": analytic,
            "flops_ratio": stats["flops"] / analytic if analytic else None,
            "bytes_accessed": stats["bytes_accessed"], "collectives": stats["collectives"], "estimate": est,
            "costs_counted": stats["costs_counted"], "loop_trips": stats["loop_trips"]}


def roofline(stats: Mapping[str, Any], chip) -> dict[str, float]:
    compute = stats["flops"] / chip.peak_bf16_flops
    memory = stats["bytes_accessed"] / chip.hbm_bytes_per_s
    wire = sum(c["wire_bytes"] for c in stats["collectives"].values())
    comm = wire / chip.ici_bytes_per_s
    return {"compute_s": compute, "memory_s": memory, "collective_s": comm, "step_s": max(compute, memory, comm)}


def _combine(steps: Mapping[str, dict], tasks: list[str], cycle: tuple[str, ...] | None, accum: int,
             analytic_step: float, chip, clips_per_step: int) -> dict[str, Any]:
    """One optimizer step: its `accum` micro-batches follow the task cycle (accum / len(cycle) cycles), each
    task's micro-step as compiled; a task of the cycle that was not compiled counts as the mean compiled one.
    Without a known cycle: accum x the mean compiled micro-step."""
    micro = {t: steps[f"micro_{t}"].get("estimate") for t in tasks}
    apply = steps["apply"].get("estimate")
    if any(m is None for m in micro.values()) or apply is None:
        return {"step_s": None, "mfu": None, "bound": None, "note": "a step did not compile"}
    parts, missing = {}, sorted(set(cycle or ()) - set(tasks))
    for key in ("compute_s", "memory_s", "collective_s", "step_s"):
        mean = float(np.mean([m[key] for m in micro.values()]))
        if cycle:
            per_cycle = sum(micro[t][key] if t in micro else mean for t in cycle)
            parts[key] = accum / len(cycle) * per_cycle + apply[key]
        else:
            parts[key] = accum * mean + apply[key]
    bound = max(("compute", "memory", "collective"), key=lambda k: parts[f"{k}_s"])
    mfu = analytic_step / (parts["step_s"] * chip.peak_bf16_flops)
    out = {**parts, "bound": bound, "mfu": mfu, "clips_per_s": clips_per_step / parts["step_s"]}
    if missing:
        out["note"] = f"micro-steps of {missing} not compiled: counted as the mean compiled micro-step"
    return out


# ------------------------------------------------------------------------------------------------- training
class CompileSetup(loop.Setup):
    """`train`'s start-up phases that make the mesh, the model and the trainer (`loop.Setup`), over a topology's
    compile-only devices and shape-only: no run directory, no parameter values.

    The run's tasks, label tables and optimizer step come from `--config.data_dir` exactly as `train` reads them
    (`Setup._load_data`: the metadata.json files and the mixture plan; no record is decoded), or, without data,
    from the config: the original's label sets (`LABEL_SETS`, or `label_sets`), and the task cycle of the
    original sampler over `samples` ({task: num_samples}) when given, else of explicit `task_weights`.
    `accum_steps=0` (derive it from the cycle) needs one of those; otherwise it is taken as given."""

    def __init__(self, config, devices, label_sets: Mapping[str, Any] | None = None,
                 samples: Mapping[str, int] | None = None):
        self.config, self.note = config, lambda s: None
        self.workdir = pathlib.Path(".")  # read only for the built-in dataset, which is never built here
        self.loop = loop.LoopSettings.from_config(config)
        try:
            self.mesh = self._make_mesh(config, devices)
            if config.get("data_dir"):
                self._load_data(config)
            else:
                self._plan_without_data(config, label_sets, samples)
        except (ValueError, FileNotFoundError, KeyError) as e:
            raise AotError(cli.message(e) if isinstance(e, KeyError) else str(e)) from None
        weights = dict(self.data.task_weights)
        self.tasks = [t for t in registry.names() if t in self.meta and (not weights or weights.get(t, 0) > 0)]
        settings = ModelSettings.from_config(config)
        if settings.kind != "multitask":
            raise AotError(f"config.model.kind {settings.kind!r}: only the 'multitask' kind is compiled here")
        settings = dataclasses.replace(settings, abstract_text=text_tower_config(settings))
        try:
            self._build_model(config, settings)
        except ValueError as e:
            raise AotError(f"sharding {config.mesh.rules!r} on mesh {dict(self.mesh.shape)}: "
                           f"{str(e).splitlines()[0]}") from None
        self._check_divisible()

    def _plan_without_data(self, config, label_sets, samples) -> None:
        self.data = loop.data_config(config, self.workdir)
        weights = dict(self.data.task_weights)
        tasks = [t for t in registry.names() if t in self.data.tasks and (not weights or weights.get(t, 0) > 0)]
        sets = {**LABEL_SETS, **(label_sets or {})}
        self.meta = {}
        for t in tasks:
            n = sets.get(t, 0)
            if isinstance(n, Mapping):
                self.meta[t] = {"label_tables": {ds: [f"{ds}_{i}" for i in range(c)] for ds, c in n.items()}}
            else:
                self.meta[t] = {"class_names": [f"class_{i}" for i in range(int(n))]}
            if samples and t in samples:
                self.meta[t]["num_samples"] = int(samples[t])
        self.plan = None
        if samples:
            unknown = sorted(set(samples) - set(tasks))
            if unknown:
                raise ValueError(f"--samples: {unknown} are not tasks of this run ({tasks})")
            given = {t: int(samples[t]) for t in tasks if t in samples}
            if weights:
                self.plan = mixture.weighted_plan(given, weights, tuple(self.data.task_order))
            else:
                self.plan = mixture.original_plan(given, int(self.data.global_batch_size),
                                                  tuple(self.data.task_order), float(self.data.balance_scale))
        elif weights:
            self.plan = mixture.weighted_plan({t: 1 for t in tasks}, weights, tuple(self.data.task_order))
        if self.plan is not None:
            self.loop = dataclasses.replace(self.loop, accum_steps=loop.resolve_accum_steps(config, self.plan))
        elif self.loop.accum_steps <= 0:
            raise ValueError("accum_steps=0 derives the optimizer step from the data's task cycle: give "
                             "--config.data_dir=DIR (converted data; only its metadata is read), --samples "
                             "TASK=N,... (the tasks' sample counts) or --config.accum_steps=N")
        try:
            self.total_steps, self.warmup_steps = loop.resolve_schedule(config, self.loop, self.meta, self.plan)
        except ValueError:  # no sample counts: the schedule's length does not change the compiled steps
            self.total_steps, self.warmup_steps = 1000, int(config.optim.warmup_steps)

    def _check_divisible(self) -> None:
        """A parameter dimension that the mesh axis it is split over does not divide: one line naming it."""
        flat = jax.tree_util.tree_flatten_with_path(self.trainer.abstract_state())[0]
        for path, leaf in flat:
            try:
                leaf.sharding.shard_shape(leaf.shape)
            except ValueError:
                name = ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
                raise AotError(f"{name} {tuple(leaf.shape)} does not divide over the mesh {dict(self.mesh.shape)} "
                               f"with sharding {leaf.sharding.spec} (rules {self.config.mesh.rules!r})") from None


def compile_training(config, topology: str, *, tasks: list[str] | None = None,
                     label_sets: Mapping[str, Any] | None = None, samples: Mapping[str, int] | None = None,
                     include_apply: bool = True, log=print) -> dict[str, Any]:
    """Compile every task's micro-step and the update for `topology`; the report described in the module doc.
    label_sets / samples: see `CompileSetup`. include_apply=False leaves the update out (then there is no
    whole-step estimate)."""
    devices = topology_devices(topology)
    chip = chip_for(topology)
    setup = CompileSetup(config, devices, label_sets, samples)
    trainer, tm, mesh = setup.trainer, setup.tm, setup.mesh
    n = len(devices)
    state = trainer.abstract_state()
    acc = _with_sharding_tree(jax.eval_shape(trainer.init_accumulator), trainer.acc_shardings)
    text = _with_sharding(tm.text, trainer.replicated) if tm.text else None
    resident = {"params": tree_bytes(state["params"]), "frozen": tree_bytes(state["frozen"]),
                "opt": tree_bytes(state["opt"]), "accumulator": tree_bytes(acc), "text": tree_bytes(text or {})}
    resident["total"] = sum(resident.values()) + tree_bytes({"s": state["step"], "r": state["rng"]})
    bb = setup.model.backbone
    per_clip = flops_lib.train_flops_per_clip(bb)
    analytic_micro = per_clip * config.micro_batch_size / n
    capacity = compiler_hbm_limit(devices[0], chip.hbm_bytes)
    unknown = sorted(set(tasks or ()) - set(setup.tasks))
    if unknown:
        raise AotError(f"--tasks: {unknown} are not tasks of this run; choose from {setup.tasks}")
    tasks = tasks or setup.tasks
    steps: dict[str, dict] = {}
    for task in tasks:
        batch = abstract_batch(config, task, mesh, setup.meta.get(task))
        log(f"compiling micro_{task} for {topology} (mesh {dict(mesh.shape)}, {config.micro_batch_size} clips)...")
        compiled, secs, err = _compile(trainer.micro_step_fn(task), state, acc, batch, text)
        steps[f"micro_{task}"] = _step_report(compiled, secs, err, n_dev=n, chip=chip, extra_resident=0,
                                              analytic=analytic_micro, capacity=capacity)
        steps[f"micro_{task}"]["batch_bytes"] = tree_bytes(batch)
        log(f"  {_line(steps[f'micro_{task}'])}")
    if include_apply:
        log(f"compiling apply for {topology}...")
        compiled, secs, err = _compile(trainer.apply_step, state, acc)
        steps["apply"] = _step_report(compiled, secs, err, n_dev=n, chip=chip, extra_resident=resident["text"],
                                      analytic=0.0, capacity=capacity)
        log(f"  {_line(steps['apply'])}")
    caps = [s["hbm_capacity"] for s in steps.values() if s.get("hbm_capacity") and "error" in s]
    if caps:  # the compiler told us its HBM limit: judge every step against it
        for s in steps.values():
            if "hbm_bytes" in s:
                s["hbm_capacity"] = caps[0]
                s["fits"] = bool(s["hbm_bytes"] <= caps[0])
    accum = setup.accum_steps
    cycle = tuple(setup.plan.cycle) if setup.plan is not None else None
    estimate = (_combine(steps, tasks, cycle, accum, analytic_micro * accum, chip, config.micro_batch_size * accum)
                if include_apply else {"step_s": None, "mfu": None, "bound": None, "note": "update not compiled"})
    return {"topology": topology, "device_kind": devices[0].device_kind, "num_devices": n,
            "mesh": {k: int(v) for k, v in mesh.shape.items()}, "chip": chip.__dict__,
            "config": {"rules": config.mesh.rules, "remat_policy": config.model.remat_policy,
                       "micro_batch_size": int(config.micro_batch_size), "clips_per_device": config.micro_batch_size / n,
                       "accum_steps": accum, "task_cycle": list(cycle) if cycle else None,
                       "accum_from": ("derived from the task cycle" if int(config.accum_steps) == 0 else "config")
                       + ("" if cycle else " (no data or sample counts: not checked against the task cycle)"),
                       "dtype": config.model.dtype, "tasks": tasks,
                       "num_frames": int(bb.num_frames), "image_size": int(bb.image_size),
                       "scan_layers": setup.model.scan_layers,
                       "text_tower_layers": setup.model.abstract_text.num_hidden_layers},
            "resident": resident, "steps": steps, "fits": all(s.get("fits") for s in steps.values()),
            "estimate": estimate}


def _with_sharding_tree(tree, shardings):
    return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _line(step: Mapping[str, Any]) -> str:
    if "error" in step:
        return f"fits={step['fits']} ({step['compile_s']:.0f} s): {step['error'][:300]}"
    ratio = step["flops_ratio"]
    return (f"{step['compile_s']:.0f} s, HBM {step['hbm_bytes'] / 2**30:.2f} / {step['hbm_capacity'] / 2**30:.2f} GiB "
            f"fits={step['fits']}, {step['flops'] / 1e12:.2f} TFLOP" + (f" ({ratio:.2f}x analytic)" if ratio else "")
            + f", collectives {sum(c['wire_bytes'] for c in step['collectives'].values()) / 2**20:.1f} MiB on the wire")


# ------------------------------------------------------------------------------------------------- streaming
def compile_stream(config, topology: str, streams_per_chip: int, *, window: int = 16) -> dict[str, Any]:
    """`models.streaming.stream_step` for a pool of streams_per_chip x chips streams, data-parallel (parameters
    replicated, caches and frames split over the streams), as `FeatureExtractor` runs it (float32 parameters,
    uint8 frames normalised inside, the cache donated)."""
    devices = topology_devices(topology)
    chip = chip_for(topology)
    n = len(devices)
    bb = ModelSettings.from_config(config).backbone
    mesh = sharding.make_mesh(-1, 1, 1, devices=devices)
    model = abstract_model(bb)
    graphdef, state = nnx.split(model)
    rep = sharding.replicated(mesh)
    state = _with_sharding(state, rep)
    b = streams_per_chip * n
    size = int(bb.image_size)
    cache = jax.eval_shape(lambda: streaming.init_cache(model, b, window, size, size))
    by_stream = NamedSharding(mesh, PartitionSpec(None, "data"))
    cache = streaming.StreamCache(*(jax.ShapeDtypeStruct(c.shape, c.dtype, sharding=s) for c, s in
                                    zip(cache, (by_stream, by_stream, rep, rep))))
    frames = jax.ShapeDtypeStruct((b, size, size, 3), jnp.uint8, sharding=sharding.batch_sharding(mesh, axes=("data",)))

    def step(state, cache, frames):
        return streaming.stream_step(nnx.merge(graphdef, state), cache, normalize_pixels(frames))

    fn = jax.jit(step, donate_argnums=1)
    compiled, secs, err = _compile(fn, state, cache, frames)
    analytic = flops_lib.forward_flops_per_clip(bb, num_frames=1) * streams_per_chip
    report = _step_report(compiled, secs, err, n_dev=n, chip=chip, extra_resident=0, analytic=analytic,
                          capacity=compiler_hbm_limit(devices[0], chip.hbm_bytes))
    report.update(streams_per_chip=streams_per_chip, streams=b, window=window,
                  cache_bytes_per_stream=tree_bytes(cache[:2]) // max(1, streams_per_chip),
                  params_bytes=tree_bytes(state))
    if report.get("estimate"):
        report["estimate"]["frames_per_s_per_chip"] = streams_per_chip / report["estimate"]["step_s"]
    return report


def search_streams(config, topology: str, *, window: int = 16, start: int = 8, limit: int = 4096, log=print
                   ) -> dict[str, Any]:
    """The largest streams-per-chip whose step fits, in few compiles (a ViT-B one takes minutes here).

    Per-chip memory is affine in the pool size (replicated parameters and code + per stream a cache, frames and
    activations), so two compiles that fit (`start` and 2 x `start`, halving first if `start` does not) give the
    line, its crossing with the HBM the compiler allows predicts the answer, and compiles at the prediction and one
    above it confirm it. Should the confirmation disagree (the compiler changes its plan near the limit), a
    bisection between the known bounds finishes the search."""
    tried: dict[int, dict] = {}

    def fits(s: int) -> bool:
        if s not in tried:
            log(f"compiling stream_step for {s} streams per chip on {topology}...")
            tried[s] = compile_stream(config, topology, s, window=window)
            log(f"  {_line(tried[s])}")
            told = [r["hbm_capacity"] for r in tried.values() if "error" in r and r.get("hbm_capacity")]
            for r in tried.values():  # the compiler stated the HBM it allows: judge every size against it
                if told and "hbm_bytes" in r:
                    r["hbm_capacity"], r["fits"] = told[0], bool(r["hbm_bytes"] <= told[0])
        if "error" in tried[s] and tried[s]["fits"] is None:
            raise AotError(f"stream_step for {s} streams per chip failed to compile: {tried[s]['error']}")
        return bool(tried[s]["fits"])

    a = start
    while a >= 1 and not fits(a):
        a //= 2
    if a < 1:
        return {"max_streams_per_chip": 0, "resolution": 0, "method": "none fits",
                "tried": {str(k): v for k, v in sorted(tried.items())}}
    lo, hi = a, limit + 1  # lo fits; hi is the smallest size known not to fit (limit + 1: none known)

    def probe(s: int) -> None:
        nonlocal lo, hi
        if lo < s < hi:
            if fits(s):
                lo = s
            else:
                hi = s

    probe(min(2 * a, limit))
    prediction = None
    if lo == 2 * a:
        per_stream = (tried[lo]["hbm_bytes"] - tried[a]["hbm_bytes"]) / a
        capacity = min(s.get("hbm_capacity") or tried[a]["hbm_capacity"] for s in tried.values())
        if per_stream > 0:
            fixed = tried[a]["hbm_bytes"] - per_stream * a
            prediction = int(min(limit, max(lo, (capacity - fixed) // per_stream)))
            probe(prediction)
            probe(prediction + 1)
    while hi > limit and lo < limit:  # no size known not to fit: double
        probe(min(2 * lo, limit))
    while hi <= limit and hi - lo > max(1, lo // 64):  # bisect to ~1.5 %
        probe((lo + hi) // 2)
    return {"max_streams_per_chip": lo, "resolution": (hi - lo) if hi <= limit else None,
            "predicted_from_two_compiles": prediction, "tried": {str(k): v for k, v in sorted(tried.items())}}


# ------------------------------------------------------------------------------------------------- CLI
PRESETS = {"dp": (-1, 1, 1), "fsdp": (1, -1, 1), "fsdp_tp": (1, -1, 2)}


def apply_preset(config, preset: str) -> None:
    if preset not in PRESETS:
        raise AotError(f"--preset {preset!r}: choose from {sorted(PRESETS)}")
    with config.unlocked():
        config.mesh.data, config.mesh.fsdp, config.mesh.tensor = PRESETS[preset]
        config.mesh.rules = preset


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    error = cli.parse_absl_flags(argv)
    if error:
        return cli.fail(error)
    logging.set_verbosity(logging.WARNING)  # JAX/optax INFO lines would bury the progress lines
    FLAGS = flags.FLAGS
    config = FLAGS.config
    out = pathlib.Path(FLAGS.out) if FLAGS.out else None
    note = (lambda s: print(s, file=sys.stderr, flush=True)) if not FLAGS.quiet else (lambda s: None)
    try:
        if FLAGS.preset:
            apply_preset(config, FLAGS.preset)
        topology = FLAGS.topology
        chip_for(topology)  # validates the name before anything heavy
        if FLAGS.stream:
            header = {"topology": topology, "window": FLAGS.window, "preset": "dp (streams over all chips)"}
            if FLAGS.streams_per_chip:
                counts = _numbers("--streams_per_chip", FLAGS.streams_per_chip)
                report = {**header, "runs": {str(c): compile_stream(config, topology, c, window=FLAGS.window)
                                             for c in counts}}
            else:
                report = {**header, **search_streams(config, topology, window=FLAGS.window, log=note)}
            devices = topology_devices(topology)
            report.update(device_kind=devices[0].device_kind, num_devices=len(devices))
        else:
            counts = _pairs("--classes", FLAGS.classes)
            samples = _pairs("--samples", FLAGS.samples)
            tasks = [t for t in FLAGS.tasks.split(",") if t] or None
            report = compile_training(config, topology, tasks=tasks, label_sets=counts, samples=samples or None,
                                      log=note)
    except (TopologyError, AotError) as e:
        return cli.fail(str(e))
    text = json.dumps(report, indent=2, default=float) + "\n"
    if out:
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(out)
        note(f"report written to {out}")
    else:
        sys.stdout.write(text)
    failed = [k for k, s in report.get("steps", {}).items() if "error" in s and s.get("fits") is not False]
    return 1 if failed else 0


def _pairs(flag: str, text: str) -> dict[str, int]:
    try:
        return {k.strip(): int(v) for k, v in (kv.split("=") for kv in text.split(",") if kv)}
    except ValueError:
        raise AotError(f"{flag} {text!r}: expected TASK=N[,TASK=N...]") from None


def _numbers(flag: str, text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise AotError(f"{flag} {text!r}: expected positive integers, comma-separated")
    return values


def _define_flags():
    config_flags.DEFINE_config_file("config", None, "Training config (configs/*.py[:variant]).", lock_config=True)
    flags.DEFINE_string("topology", "v5e:2x2", "TPU slice, e.g. v5e:2x2, v5e:16x16, v5p:4x4x4, v4:4x4x4, v6e:4x4.")
    flags.DEFINE_string("preset", "", "Sharding preset dp|fsdp|fsdp_tp (sets config.mesh); default: the config's.")
    flags.DEFINE_string("out", "", "Write the JSON report here (default: stdout).")
    flags.DEFINE_string("tasks", "", "Compile only these tasks' micro-steps (comma-separated; default: the run's).")
    flags.DEFINE_string("classes", "", "Label-set sizes without --config.data_dir, e.g. kinetics=400,vis=40 (one "
                                       "table per task; default: the original's, per dataset for localization/VIS).")
    flags.DEFINE_string("samples", "", "Without --config.data_dir: the tasks' sample counts (TASK=N,...), which "
                                       "give the original sampler's task cycle (for accum_steps=0 and the estimate).")
    flags.DEFINE_bool("stream", False, "Compile the streaming step instead of the training steps.")
    flags.DEFINE_integer("window", 16, "Streaming: temporal window (frames in the KV cache).")
    flags.DEFINE_string("streams_per_chip", "", "Streaming: compile these pool sizes (comma-separated) instead "
                                                "of searching for the largest that fits.")
    flags.DEFINE_bool("quiet", False, "No progress lines on stderr.")
    flags.mark_flag_as_required("config")


if __name__ == "__main__":
    _define_flags()
    sys.exit(main())
