r"""Training-step benchmark: step time, clips/s, TFLOP/s per device and MFU for a config and mesh on the current
backend, plus the compiled steps' FLOPs (XLA cost analysis) and memory.

    python scripts/benchmark_train.py --config configs/pretrain_multitask.py:tiny --steps 10
    python scripts/benchmark_train.py --config configs/pretrain_multitask.py --steps 10 \
        --config.micro_batch_size=16 --config.accum_steps=1 --config.tasks=kinetics   # ViT-B 16x224² on one GPU
    python scripts/benchmark_train.py --config configs/pretrain_multitask.py:mesh=fsdp ...    # another mesh

The input pipeline is left out: one real micro-batch per task (from the configured data, the built-in dataset by
default) is loaded once and reused, so the numbers are the step's alone. XLA's FLOPs are per device (of the
partitioned program); the analytic ones are for the whole step. MFU uses the analytic model FLOPs
(3 x forward, no remat; ViT-B/16 16x224²: 2.40 TFLOP per clip) over the dense bf16 peak of the device kind
(`--peak_tflops` to override). On CPU (`--measure_peak`, default on CPU) the float32 matmul peak is measured in the
same run with a large jnp.dot and reported with the step's achieved GFLOP/s.
"""
from __future__ import annotations

import json
import pathlib
import sys
import tempfile
import time

import jax
from absl import app, flags, logging
from ml_collections import config_flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from a checkout: `python scripts/...`
from data_pipelines.pipeline import loader  # noqa: E402
from streamformer_jax.train import flops as flops_lib  # noqa: E402
from streamformer_jax.train import loop  # noqa: E402
from streamformer_jax.train.step import device_batch  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config (configs/*.py[:variant]).", lock_config=True)
flags.DEFINE_integer("steps", 10, "Timed optimizer steps (after one warm-up step).")
flags.DEFINE_float("peak_tflops", 0.0, "Peak TFLOP/s per device for MFU (0 = by device kind / measured on CPU).")
flags.DEFINE_bool("measure_peak", None, "Measure the matmul peak with a large jnp.dot (default: on CPU).")
flags.DEFINE_integer("peak_size", 4096, "Side of the square float32 matrices for the peak measurement.")
flags.DEFINE_string("workdir", "", "Scratch directory (built-in dataset cache); default: a temporary directory.")
flags.DEFINE_string("json_out", "", "Also write the results as JSON here.")
flags.mark_flag_as_required("config")


def _cost(compiled) -> tuple[float, dict]:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    mem = compiled.memory_analysis()
    memory = {}
    if mem is not None:
        for k in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
                  "generated_code_size_in_bytes", "alias_size_in_bytes"):
            if hasattr(mem, k):
                memory[k] = int(getattr(mem, k))
    return float(cost.get("flops", 0.0)), memory


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    config = FLAGS.config
    with config.unlocked():  # step timing needs neither the recipe's data and start point nor a real text tower
        config.required = ()
        config.text.allow_random = True
    workdir = pathlib.Path(FLAGS.workdir or tempfile.mkdtemp(prefix="sf_bench_"))
    setup = loop.Setup(config, workdir, log=lambda s: None)
    trainer, mesh, data, tm = setup.trainer, setup.mesh, setup.data, setup.tm
    backend = jax.default_backend()
    device_kind = jax.devices()[0].device_kind
    print(f"backend {backend} ({device_kind}), {jax.device_count()} devices, mesh {dict(mesh.shape)} "
          f"rules {config.mesh.rules}, remat {config.model.remat_policy}, dtype {config.model.dtype}", flush=True)

    # One micro-batch per task of the cycle, loaded once.
    it = loader.make_train_iterator(data, mesh=mesh)
    accum = setup.accum_steps
    batches = []
    for _ in range(accum):
        b = next(it)
        if tm.prepare_batch is not None:
            b = {**b, **loader.to_global_batch(tm.prepare_batch(b), mesh, data.data_axes)}
        batches.append((b["task"], device_batch(b)))
    it.close()
    text = loop.replicate(tm.text, mesh) if tm.text is not None else None
    state = trainer.init_state(config.seed)
    acc = trainer.init_accumulator()

    # Compile (and read XLA's cost/memory analysis of) each task's micro-step and the update.
    t0 = time.perf_counter()
    xla_flops, memory = 0.0, {}
    for task in sorted({t for t, _ in batches}):
        b = next(b for t, b in batches if t == task)
        f, m = _cost(trainer.micro_step_fn(task).lower(state, acc, b, text).compile())
        xla_flops += f * sum(1 for t, _ in batches if t == task)
        memory[f"micro_{task}"] = m
    f, m = _cost(trainer.apply_step.lower(state, acc).compile())
    xla_flops += f
    memory["apply"] = m
    compile_s = time.perf_counter() - t0

    def one_step(state, acc):
        for task, b in batches:
            acc, _ = trainer.micro_step(state, acc, b, text, task)
        return trainer.apply_step(state, acc)

    state, acc, metrics = one_step(state, acc)  # warm-up
    jax.block_until_ready(metrics)
    times = []
    for _ in range(FLAGS.steps):
        t = time.perf_counter()
        state, acc, metrics = one_step(state, acc)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t)
    step_s = sorted(times)[len(times) // 2]

    bb = setup.tm.backbone
    clips = config.micro_batch_size * accum
    model_flops = flops_lib.train_flops_per_clip(bb, num_frames=data.num_frames, image_size=data.image_size) * clips
    n_dev = jax.device_count()
    tflops_dev = model_flops / step_s / n_dev / 1e12
    measure = FLAGS.measure_peak if FLAGS.measure_peak is not None else backend == "cpu"
    peak = flops_lib.peak_tflops(device_kind, FLAGS.peak_tflops or config.peak_tflops_per_device)
    result = {
        "backend": backend, "device_kind": device_kind, "devices": n_dev, "mesh": dict(mesh.shape),
        "rules": config.mesh.rules, "remat": config.model.remat_policy, "dtype": config.model.dtype,
        "frames": data.num_frames, "image_size": data.image_size, "clips_per_step": clips,
        "micro_batch_size": config.micro_batch_size, "accum_steps": accum,
        "compile_s": compile_s, "step_time_s": step_s, "step_time_min_s": min(times),
        "clips_per_s": clips / step_s,
        "model_tflop_per_step": model_flops / 1e12, "xla_tflop_per_device_step": xla_flops / 1e12,
        "model_tflops_per_device": tflops_dev, "memory_bytes": memory, "loss": float(metrics["loss"]),
    }
    if measure:
        gflops = flops_lib.matmul_peak_gflops(n=FLAGS.peak_size)
        result["matmul_peak_gflops_per_process"] = gflops
        result["achieved_gflops"] = model_flops / step_s / 1e9
        result["achieved_fraction_of_matmul_peak"] = result["achieved_gflops"] / gflops
        if not (FLAGS.peak_tflops or config.peak_tflops_per_device):
            peak = gflops / 1e3 / max(1, jax.local_device_count())
    if peak:
        result["peak_tflops_per_device"] = peak
        result["mfu"] = tflops_dev / peak
    for k, v in result.items():
        print(f"{k:>36}: {v}")
    if FLAGS.json_out:
        pathlib.Path(FLAGS.json_out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    app.run(main)
