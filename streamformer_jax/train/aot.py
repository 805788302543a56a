r"""Compile the real training and streaming steps for a TPU slice on a machine without a TPU, and size the run.

    python -m streamformer_jax.train.aot --config configs/pretrain_multitask.py --topology v5p:4x4x4 \
        [--preset dp|fsdp|fsdp_tp] [--config.KEY=VALUE ...] --out report.json
    python -m streamformer_jax.train.aot --stream --config configs/pretrain_multitask.py --topology v5e:2x2 \
        --window 16 [--streams_per_chip 8,16] --out stream.json     # largest pool of streams that fits

Needs libtpu (`pip install 'streamformer_jax[tpu]'`): XLA's TPU compiler runs on the CPU against the compile-only
devices of the topology. Nothing is materialised: the state, batch and text arrays are ShapeDtypeStructs with
the trainer's shardings, and the model is built shape-only through the trainer's own code (`Trainer`, its
shardings and masks, `micro_step_fn` / `apply_step`), on a mesh made by `loop.make_mesh` over the topology's
devices.

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
  compiler allows (read from its out-of-memory message when one occurs, else the chip's capacity); a step the
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

import json
import math
import pathlib
import re
import sys
import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from streamformer_jax.train import compiled_stats, flops as flops_lib
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


def text_tower_config(config):
    """The frozen text tower's architecture: from the config's text checkpoint or init directory when one is
    readable, else SigLIP-B/16's (the recipe's) for a 768-wide backbone, else the config's random tower."""
    from streamformer_jax.text.model import SiglipTextConfig

    for source in (config.text.get("checkpoint", ""), config.model.get("init", "")):
        path = pathlib.Path(source) / "config.json" if source else None
        if path is not None and path.is_file():
            try:
                return SiglipTextConfig.from_hf_dict(json.loads(path.read_text()))
            except (ValueError, TypeError, KeyError):
                pass
    width = int(config.model.overrides.hidden_size)
    if width == 768:
        return SiglipTextConfig()  # SigLIP base: 12 layers, 768 wide, vocab 32000, 64 positions
    r = config.text.random
    d = r.hidden_size or width
    return SiglipTextConfig(vocab_size=r.vocab_size, hidden_size=d, intermediate_size=r.mlp_size or 2 * d,
                            num_hidden_layers=r.num_layers, num_attention_heads=r.num_heads,
                            max_position_embeddings=config.text.max_length, projection_size=width)


def run_tasks(config) -> list[str]:
    from streamformer_jax.train.multitask import TASKS

    if config.get("tasks"):
        chosen = [t.strip() for t in config.tasks.split(",") if t.strip()]
        unknown = sorted(set(chosen) - set(TASKS))
        if unknown:
            raise AotError(f"--config.tasks: unknown tasks {unknown}; known: {list(TASKS)}")
        return chosen
    weights = dict(config.data.get("task_weights", {}) or {})
    return [t for t in TASKS if not weights or weights.get(t, 0) > 0]


def abstract_batch(config, task: str, mesh) -> dict[str, jax.ShapeDtypeStruct]:
    """The device batch the trainer gets for `task` (the data pipeline's fields, `data_pipelines.pipeline.tasks`,
    plus the tokenised captions), as ShapeDtypeStructs split over the batch axes."""
    arch = config.model.overrides
    b, t, s, p = int(config.micro_batch_size), int(arch.num_frames), int(arch.image_size), int(arch.patch_size)
    fields = {"video": ((b, t, s, s, 3), jnp.uint8), "frame_index": ((b, t), jnp.int32),
              "timestamps": ((b, t), jnp.float32)}
    fields.update({
        "kinetics": {"label": ((b,), jnp.int32)},
        "ssv2": {"label": ((b,), jnp.int32)},
        "retrieval": {"caption_ids": ((b, int(config.text.max_length)), jnp.int32)},
        "grounding": {"caption_ids": ((b, int(config.text.max_length)), jnp.int32), "label": ((b, t), jnp.float32),
                      "duration": ((b,), jnp.float32)},
        "localization": {"label": ((b, t), jnp.int32), "duration": ((b,), jnp.float32)},
        "vis": {"mask": ((b, t, s // p, s // p), jnp.int32)},
    }[task])
    axes = tuple(config.data.get("data_axes", ("data", "fsdp")))
    return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, PartitionSpec(axes)))
            for k, (shape, dtype) in fields.items()}


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
def build(config, devices, class_counts: Mapping[str, int] | None = None):
    """(trainer, task model, mesh) for `config` over `devices`, shape-only, through the trainer's own code."""
    from streamformer_jax.train import loop
    from streamformer_jax.train.model import build_task_model

    try:
        mesh = loop.make_mesh(config.mesh, devices)
    except ValueError as e:
        raise AotError(f"mesh {dict(config.mesh)}: {e}") from None
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if config.micro_batch_size % shards:
        raise AotError(f"micro_batch_size {config.micro_batch_size} is not divisible by the data x fsdp mesh axes "
                       f"({shards} on {len(devices)} devices); use a multiple of {shards}")
    counts = {**CLASS_COUNTS, **(class_counts or {})}
    tasks = run_tasks(config)
    class_names = {t: [f"class_{i}" for i in range(counts.get(t, 0))] for t in tasks}
    tm = build_task_model(config, class_names, abstract_text=text_tower_config(config))
    total = int(config.total_steps) if int(config.total_steps) > 0 else 1000
    try:
        trainer = loop.make_trainer(config, tm, mesh, config.optim, total)
    except ValueError as e:
        raise AotError(f"sharding {config.mesh.rules!r} on mesh {dict(mesh.shape)}: {str(e).splitlines()[0]}") from None
    flat = jax.tree_util.tree_flatten_with_path(trainer.abstract_state())[0]
    for path, leaf in flat:  # a parameter dimension that the mesh axis it is split over does not divide
        try:
            leaf.sharding.shard_shape(leaf.shape)
        except ValueError:
            name = ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
            raise AotError(f"{name} {tuple(leaf.shape)} does not divide over the mesh {dict(mesh.shape)} with "
                           f"sharding {leaf.sharding.spec} (rules {config.mesh.rules!r})") from None
    return trainer, tm, mesh


def compile_training(config, topology: str, *, tasks: list[str] | None = None,
                     class_counts: Mapping[str, int] | None = None, include_apply: bool = True, log=print
                     ) -> dict[str, Any]:
    """Compile every task's micro-step and the update for `topology`; the report described in the module doc.
    include_apply=False leaves the update out (then there is no whole-step estimate)."""
    from streamformer_jax.train.model import backbone_config

    devices = topology_devices(topology)
    chip = chip_for(topology)
    trainer, tm, mesh = build(config, devices, class_counts)
    n = len(devices)
    state = trainer.abstract_state()
    acc = _with_sharding_tree(jax.eval_shape(trainer.init_accumulator), trainer.acc_shardings)
    text = _with_sharding(tm.text, trainer.replicated) if tm.text else None
    resident = {"params": tree_bytes(state["params"]), "frozen": tree_bytes(state["frozen"]),
                "opt": tree_bytes(state["opt"]), "accumulator": tree_bytes(acc), "text": tree_bytes(text or {})}
    resident["total"] = sum(resident.values()) + tree_bytes({"s": state["step"], "r": state["rng"]})
    bb = backbone_config(config)
    per_clip = flops_lib.train_flops_per_clip(bb)
    analytic_micro = per_clip * config.micro_batch_size / n
    capacity = chip.hbm_bytes
    tasks = tasks or run_tasks(config)
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
                       "text_tower_layers": text_tower_config(config).num_hidden_layers},
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
    from flax import nnx

    from streamformer_jax.models import streaming
    from streamformer_jax.models.streamformer import abstract_model, normalize_pixels
    from streamformer_jax.train.model import backbone_config

    devices = topology_devices(topology)
    chip = chip_for(topology)
    n = len(devices)
    bb = backbone_config(config)
    mesh = jax.sharding.Mesh(np.asarray(devices), ("data",))
    model = abstract_model(bb)
    graphdef, state = nnx.split(model)
    rep = NamedSharding(mesh, PartitionSpec())
    state = _with_sharding(state, rep)
    b = streams_per_chip * n
    size = int(bb.image_size)
    cache = jax.eval_shape(lambda: streaming.init_cache(model, b, window, size, size))
    by_stream = NamedSharding(mesh, PartitionSpec(None, "data"))
    cache = streaming.StreamCache(*(jax.ShapeDtypeStruct(c.shape, c.dtype, sharding=s) for c, s in
                                    zip(cache, (by_stream, by_stream, rep, rep))))
    frames = jax.ShapeDtypeStruct((b, size, size, 3), jnp.uint8, sharding=NamedSharding(mesh, PartitionSpec("data")))

    def step(state, cache, frames):
        return streaming.stream_step(nnx.merge(graphdef, state), cache, normalize_pixels(frames))

    fn = jax.jit(step, donate_argnums=1)
    compiled, secs, err = _compile(fn, state, cache, frames)
    analytic = flops_lib.forward_flops_per_clip(bb, num_frames=1) * streams_per_chip
    report = _step_report(compiled, secs, err, n_dev=n, chip=chip, extra_resident=0, analytic=analytic,
                          capacity=chip.hbm_bytes)
    report.update(streams_per_chip=streams_per_chip, streams=b, window=window,
                  cache_bytes_per_stream=tree_bytes(cache[:2]) // max(1, streams_per_chip),
                  params_bytes=tree_bytes(state))
    if report.get("estimate"):
        report["estimate"]["frames_per_s_per_chip"] = streams_per_chip / report["estimate"]["step_s"]
    return report


def search_streams(config, topology: str, *, window: int = 16, start: int = 8, limit: int = 4096, log=print
                   ) -> dict[str, Any]:
    """The largest streams-per-chip whose step fits: doubling from `start`, then bisection."""
    tried: dict[int, dict] = {}

    def fits(s: int) -> bool:
        if s not in tried:
            log(f"compiling stream_step for {s} streams per chip on {topology}...")
            tried[s] = compile_stream(config, topology, s, window=window)
            log(f"  {_line(tried[s])}")
        if "error" in tried[s] and tried[s]["fits"] is None:
            raise AotError(f"stream_step for {s} streams per chip failed to compile: {tried[s]['error']}")
        return bool(tried[s]["fits"])

    lo, hi = 0, None
    s = start
    while s <= limit:
        if fits(s):
            lo, s = s, s * 2
        else:
            hi = s
            break
    if hi is None:
        hi = limit + 1
    if lo == 0:  # even `start` does not fit: search below it
        lo, hi = 0, start
        s = start // 2
        while s >= 1 and not fits(s):
            hi, s = s, s // 2
        lo = s if s >= 1 else 0
    while hi - lo > max(1, lo // 16):  # ~6 % resolution keeps the number of compiles small
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return {"max_streams_per_chip": lo, "resolution": hi - lo, "tried": {str(k): v for k, v in sorted(tried.items())}}


# ------------------------------------------------------------------------------------------------- CLI
PRESETS = {"dp": (-1, 1, 1), "fsdp": (1, -1, 1), "fsdp_tp": (1, -1, 2)}


def apply_preset(config, preset: str) -> None:
    if preset not in PRESETS:
        raise AotError(f"--preset {preset!r}: choose from {sorted(PRESETS)}")
    with config.unlocked():
        config.mesh.data, config.mesh.fsdp, config.mesh.tensor = PRESETS[preset]
        config.mesh.rules = preset


def main(argv) -> int:
    from absl import flags

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
                counts = [int(x) for x in FLAGS.streams_per_chip.split(",") if x]
                report = {**header, "runs": {str(c): compile_stream(config, topology, c, window=FLAGS.window)
                                             for c in counts}}
            else:
                report = {**header, **search_streams(config, topology, window=FLAGS.window, log=note)}
            devices = topology_devices(topology)
            report.update(device_kind=devices[0].device_kind, num_devices=len(devices))
        else:
            counts = dict((k, int(v)) for k, v in (kv.split("=") for kv in FLAGS.classes.split(",") if kv))
            tasks = [t for t in FLAGS.tasks.split(",") if t] or None
            report = compile_training(config, topology, tasks=tasks, class_counts=counts, log=note)
    except (TopologyError, AotError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
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
    from absl import app

    _define_flags()
    app.run(lambda argv: sys.exit(main(argv)))
