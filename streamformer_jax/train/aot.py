r"""Compile the real training and streaming steps for a TPU slice on a machine without a TPU, and size the run.

    python -m streamformer_jax.train.aot --config configs/pretrain_multitask.py --topology v5p:4x4x4 \
        [--preset dp|fsdp|fsdp_tp] [--config.KEY=VALUE ...] --out report.json
    python -m streamformer_jax.train.aot --stream --config configs/pretrain_multitask.py --topology v5e:2x2 \
        --window 16 [--streams_per_chip 8,16] --out stream.json     # largest pool of streams that fits

Needs libtpu (`pip install 'streamformer_jax[tpu]'`): XLA's TPU compiler runs on the CPU against the compile-only
devices of the topology. Nothing is materialised: the state, batch and text arrays are ShapeDtypeStructs with
the trainer's shardings. The mesh, the model and the trainer come from `train`'s own start-up phases
(`loop.Setup`: `sharding.make_mesh` over the topology's devices, `ModelSettings` -> the model kind's builder,
shape-only, -> `step.Trainer` with its shardings, masks, `micro_step_fn` and `apply_step`).

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
  ICI bandwidth (chip figures and sources: `train.tpu_chips`); one optimizer step = accum_steps micro-steps
  (the mean over the run's tasks) + the update; MFU = analytic FLOPs / (step time x peak). Compiled and
  estimated, not measured.
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
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from streamformer_jax import cli, sharding
from streamformer_jax.models import streaming
from streamformer_jax.models.streamformer import abstract_model, normalize_pixels
from streamformer_jax.tasks import registry
from streamformer_jax.text.model import SiglipTextConfig
from streamformer_jax.train import compiled_stats, flops as flops_lib, loop
from streamformer_jax.train.multitask_kind import random_tower_config
from streamformer_jax.train.task_model import ModelSettings
from streamformer_jax.train.tpu_chips import TopologyError, chip_for, topology_devices

# Label-set sizes of the original mixture (spec §5.1); only the shapes of the label-embedding tables matter here.
CLASS_COUNTS = {"kinetics": 400, "ssv2": 174, "localization": 200, "vis": 1196}
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


def abstract_batch(config, task: str, mesh) -> dict[str, jax.ShapeDtypeStruct]:
    """The device batch the trainer gets for `task` (the fields of `data_pipelines.pipeline.transforms` plus the
    tokenised captions), as ShapeDtypeStructs split over the run's batch axes (`loop.data_config`)."""
    data = loop.data_config(config, pathlib.Path("."))  # the clip shape and batch axes of the run; reads nothing
    b, t, s, p = int(data.global_batch_size), int(data.num_frames), int(data.image_size), \
        int(config.model.overrides.patch_size)
    fields = {"video": ((b, t, s, s, 3), jnp.uint8), "frame_index": ((b, t), jnp.int32),
              "timestamps": ((b, t), jnp.float32)}
    per_task = {
        "kinetics": {"label": ((b,), jnp.int32)},
        "ssv2": {"label": ((b,), jnp.int32)},
        "retrieval": {"caption_ids": ((b, int(config.text.max_length)), jnp.int32)},
        "grounding": {"caption_ids": ((b, int(config.text.max_length)), jnp.int32), "label": ((b, t), jnp.float32),
                      "duration": ((b,), jnp.float32)},
        "localization": {"label": ((b, t), jnp.int32), "duration": ((b,), jnp.float32)},
        "vis": {"mask": ((b, t, s // p, s // p), jnp.int32)},
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


def _combine(steps: Mapping[str, dict], tasks: list[str], accum: int, analytic_step: float, chip,
             clips_per_step: int) -> dict[str, Any]:
    micro = [steps[f"micro_{t}"].get("estimate") for t in tasks]
    apply = steps["apply"].get("estimate")
    if any(m is None for m in micro) or apply is None:
        return {"step_s": None, "mfu": None, "bound": None, "note": "a step did not compile"}
    parts = {}
    for key in ("compute_s", "memory_s", "collective_s", "step_s"):
        parts[key] = accum * float(np.mean([m[key] for m in micro])) + apply[key]
    bound = max(("compute", "memory", "collective"), key=lambda k: parts[f"{k}_s"])
    mfu = analytic_step / (parts["step_s"] * chip.peak_bf16_flops)
    return {**parts, "bound": bound, "mfu": mfu, "clips_per_s": clips_per_step / parts["step_s"]}


# ------------------------------------------------------------------------------------------------- training
class CompileSetup(loop.Setup):
    """`train`'s start-up phases that make the mesh, the model and the trainer (`loop.Setup`), over a topology's
    compile-only devices and shape-only: no run directory, no data read, no parameter values. The run's tasks
    and their label-set sizes come from the config and `class_counts` instead of the data's metadata."""

    def __init__(self, config, devices, class_counts: Mapping[str, int] | None = None):
        self.config, self.note = config, lambda s: None
        self.loop = loop.LoopSettings.from_config(config)
        try:
            self.mesh = self._make_mesh(config, devices)
        except ValueError as e:
            raise AotError(str(e)) from None  # `train`'s own message (mesh sizes, batch divisibility)
        try:
            self.data = loop.data_config(config, pathlib.Path("."))
        except (ValueError, FileNotFoundError) as e:
            raise AotError(str(e)) from None
        weights = dict(self.data.task_weights)
        self.tasks = [t for t in registry.names() if t in self.data.tasks and (not weights or weights.get(t, 0) > 0)]
        counts = {**CLASS_COUNTS, **(class_counts or {})}
        self.meta = {t: {"class_names": [f"class_{i}" for i in range(counts.get(t, 0))]} for t in self.tasks}
        try:
            self.total_steps, self.warmup_steps = loop.resolve_schedule(config, self.loop, self.meta)
        except ValueError as e:
            raise AotError(str(e)) from None
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
                     class_counts: Mapping[str, int] | None = None, include_apply: bool = True, log=print
                     ) -> dict[str, Any]:
    """Compile every task's micro-step and the update for `topology`; the report described in the module doc.
    include_apply=False leaves the update out (then there is no whole-step estimate)."""
    devices = topology_devices(topology)
    chip = chip_for(topology)
    setup = CompileSetup(config, devices, class_counts)
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
        batch = abstract_batch(config, task, mesh)
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
    accum = int(config.accum_steps)
    estimate = (_combine(steps, tasks, accum, analytic_micro * accum, chip, config.micro_batch_size * accum)
                if include_apply else {"step_s": None, "mfu": None, "bound": None, "note": "update not compiled"})
    return {"topology": topology, "device_kind": devices[0].device_kind, "num_devices": n,
            "mesh": {k: int(v) for k, v in mesh.shape.items()}, "chip": chip.__dict__,
            "config": {"rules": config.mesh.rules, "remat_policy": config.model.remat_policy,
                       "micro_batch_size": int(config.micro_batch_size), "clips_per_device": config.micro_batch_size / n,
                       "accum_steps": accum, "dtype": config.model.dtype, "tasks": tasks,
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
    from absl import flags

    argv = list(sys.argv if argv is None else argv)
    error = cli.parse_absl_flags(argv)
    if error:
        return cli.fail(error)
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
            try:
                counts = {k: int(v) for k, v in (kv.split("=") for kv in FLAGS.classes.split(",") if kv)}
            except ValueError:
                raise AotError(f"--classes {FLAGS.classes!r}: expected TASK=COUNT[,TASK=COUNT...]") from None
            tasks = [t for t in FLAGS.tasks.split(",") if t] or None
            report = compile_training(config, topology, tasks=tasks, class_counts=counts, log=note)
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


def _numbers(flag: str, text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise AotError(f"{flag} {text!r}: expected positive integers, comma-separated")
    return values


def _define_flags():
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Training config (configs/*.py[:variant]).", lock_config=True)
    flags.DEFINE_string("topology", "v5e:2x2", "TPU slice, e.g. v5e:2x2, v5e:16x16, v5p:4x4x4, v4:4x4x4, v6e:4x4.")
    flags.DEFINE_string("preset", "", "Sharding preset dp|fsdp|fsdp_tp (sets config.mesh); default: the config's.")
    flags.DEFINE_string("out", "", "Write the JSON report here (default: stdout).")
    flags.DEFINE_string("tasks", "", "Compile only these tasks' micro-steps (comma-separated; default: the run's).")
    flags.DEFINE_string("classes", "", "Label-set sizes, e.g. kinetics=400,vis=40 (default: the original's).")
    flags.DEFINE_bool("stream", False, "Compile the streaming step instead of the training steps.")
    flags.DEFINE_integer("window", 16, "Streaming: temporal window (frames in the KV cache).")
    flags.DEFINE_string("streams_per_chip", "", "Streaming: compile these pool sizes (comma-separated) instead "
                                                "of searching for the largest that fits.")
    flags.DEFINE_bool("quiet", False, "No progress lines on stderr.")
    flags.mark_flag_as_required("config")


if __name__ == "__main__":
    _define_flags()
    sys.exit(main())
