"""The training loop: distributed start-up -> mesh -> data -> model/optimiser -> restore or init -> steps.

One optimizer step = `accum_steps` task-pure micro-batches (one task each, in the mixture's cycle order), their
gradients summed in float32 and averaged, then one AdamW update. Everything is deterministic in (config, step):
the data iterator is a pure function of the micro-batch index and the RNG is folded with the step, so a run
stopped and resumed from a checkpoint continues exactly as an uninterrupted one.
"""
from __future__ import annotations

import collections
import copy
import json
import pathlib
from typing import Any, Callable, Mapping

import jax
import ml_collections
import numpy as np

from streamformer_jax import sharding as sharding_lib
from streamformer_jax.train import distributed, flops as flops_lib
from streamformer_jax.train.checkpointing import Checkpointer
from streamformer_jax.train.metrics import MetricWriter, StepTimer
from streamformer_jax.train.model import backbone_config, build_task_model
from streamformer_jax.train.optim import make_optimizer
from streamformer_jax.train.step import Trainer, device_batch


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient norm became NaN/inf; the update was not applied."""


# ------------------------------------------------------------------------------------------------- mesh
def make_mesh(mesh_cfg, devices=None) -> jax.sharding.Mesh:
    """(data, fsdp, tensor) over all devices (or `devices`, e.g. a TPU topology's compile-only devices); at most
    one axis may be -1 (takes the remaining devices)."""
    sizes = [int(mesh_cfg.data), int(mesh_cfg.fsdp), int(mesh_cfg.tensor)]
    devices = jax.devices() if devices is None else list(devices)
    n = len(devices)
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {sizes}")
    if -1 in sizes:
        known = int(np.prod([s for s in sizes if s != -1]))
        if n % known:
            raise ValueError(f"{n} devices cannot be split into a mesh of {sizes}")
        sizes[sizes.index(-1)] = n // known
    return sharding_lib.make_mesh(*sizes, devices=devices)


# ------------------------------------------------------------------------------------------------- data
def data_config(config, workdir: pathlib.Path) -> ml_collections.ConfigDict:
    """The data-pipeline config of this run: batch size and seed from the run, directories resolved."""
    data = copy.deepcopy(config.data)
    with data.unlocked():
        data.global_batch_size = int(config.micro_batch_size)
        data.seed = int(config.seed)
        # The clip shape follows the model (one source of truth for --config.model.overrides.*).
        arch = config.model.overrides
        data.num_frames, data.image_size = int(arch.num_frames), int(arch.image_size)
        for name in data.tasks:
            data.tasks[name].patch_size = int(arch.patch_size)
        if config.data_dir:
            root = pathlib.Path(config.data_dir)
            data.builtin_dir = ""
            for name in data.tasks:
                d = root / name
                data.tasks[name].data_dir = str(d) if d.is_dir() else ""
            if not any(data.tasks[n].data_dir for n in data.tasks):
                raise FileNotFoundError(f"--config.data_dir={root}: no task sub-directories "
                                        f"({', '.join(data.tasks)}) found")
        else:
            data.builtin_dir = str(config.builtin_dir or (workdir / "builtin_data"))
        if config.get("tasks"):
            chosen = [t.strip() for t in config.tasks.split(",") if t.strip()]
            unknown = sorted(set(chosen) - set(data.tasks))
            if unknown:
                raise ValueError(f"--config.tasks: unknown tasks {unknown}; known: {list(data.tasks)}")
            for name in data.tasks:
                if name not in chosen:
                    data.tasks[name].data_dir = ""
            weights = dict(data.task_weights)
            data.task_weights = ml_collections.ConfigDict(
                {t: int(weights.get(t, 1)) for t in chosen} if (weights or data.builtin_dir) else {})
    return data


def task_directories(data) -> dict[str, pathlib.Path]:
    from data_pipelines.pipeline import loader

    if data.get("builtin_dir"):
        # Process 0 builds the built-in dataset first so that local processes do not race on it.
        if jax.process_index() == 0:
            loader.task_dirs(data)
        distributed.sync("builtin_data")
    return {k: pathlib.Path(v) for k, v in loader.task_dirs(data).items()}


def read_metadata(dirs: Mapping[str, pathlib.Path]) -> dict[str, dict]:
    return {task: json.loads((d / "metadata.json").read_text()) for task, d in dirs.items()}


def steps_per_epoch(config, meta: Mapping[str, dict]) -> int:
    from data_pipelines.pipeline import mixture

    sizes = {t: int(m.get("num_examples", 0)) for t, m in meta.items() if m.get("num_examples")}
    clips = sum(mixture.balanced_sizes(sizes, config.data.balance_scale).values()) if sizes else 0
    return max(1, clips // (config.micro_batch_size * config.accum_steps))


def resolve_schedule(config, meta) -> tuple[int, int]:
    """(total_steps, warmup_steps) in optimizer steps."""
    per_epoch = None
    total = int(config.total_steps)
    if total < 0:
        if config.epochs <= 0:
            raise ValueError("set --config.total_steps=N (or total_steps=-1 with epochs > 0)")
        per_epoch = steps_per_epoch(config, meta)
        total = int(round(config.epochs * per_epoch))
    warmup = int(config.optim.warmup_steps)
    if config.optim.get("warmup_epochs", 0.0):
        per_epoch = per_epoch or steps_per_epoch(config, meta)
        warmup = int(round(config.optim.warmup_epochs * per_epoch))
    return total, warmup


# ------------------------------------------------------------------------------------------------- misc
def make_trainer(config, tm, mesh, optim, total_steps: int) -> Trainer:
    from streamformer_jax.checkpoint import nest
    from streamformer_jax.train.model import ModelDef
    from streamformer_jax.train.step import split_names

    trainable_names, _ = split_names(tm, ModelDef(tm.model))
    decay = nest({n: bool(tm.decay(n)) for n in trainable_names})
    tx, schedule = make_optimizer(optim, total_steps, decay)
    return Trainer(tm, tx, schedule, mesh, rules=config.mesh.rules, remat=config.model.remat_policy,
                   scan_layers=bool(config.model.get("scan_layers", False)))


def enable_compilation_cache(path: str) -> None:
    """JAX's persistent compilation cache: a restarted (preempted) run skips recompiling its steps."""
    if not path:
        return
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    try:  # the cache is set up at the first compilation; make it re-read the settings
        from jax._src import compilation_cache

        compilation_cache.reset_cache()
    except Exception:  # noqa: BLE001 - private API; the cache then applies from the next process on
        pass


def replicate(tree, mesh):
    sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sh, lambda idx: x[idx])

    return jax.tree_util.tree_map(put, tree)


def export_backbone(config, trainer: Trainer, state: dict, out: str | pathlib.Path) -> pathlib.Path:
    """Write the trained backbone in this project's checkpoint format (`streamformer_jax.checkpoint`), the input
    of `python -m streamformer_jax.extract --checkpoint OUT` and of `FeatureExtractor.from_checkpoint(OUT)`."""
    from streamformer_jax.checkpoint import flatten, save_checkpoint

    flat = {**flatten(jax.device_get(state["params"])), **flatten(jax.device_get(state["frozen"]))}
    backbone = {k[len("backbone."):]: np.asarray(v) for k, v in flat.items() if k.startswith("backbone.")}
    bb = backbone_config(config).replace(dtype="float32")
    path = save_checkpoint(out, bb, backbone, extra={"source": "streamformer_jax.train",
                                                     "step": int(jax.device_get(state["step"]))})
    if trainer.tm.export is not None:  # e.g. the classifier head beside the backbone
        trainer.tm.export(flat, path)
    return path


def _write_config(workdir: pathlib.Path, config) -> None:
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")


# ------------------------------------------------------------------------------------------------- setup
class Setup:
    """Everything a run needs before its first step (also used by tools that only restore)."""

    def __init__(self, config, workdir: str | pathlib.Path, log: Callable[[str], None] | None = None):
        # ---- 1. distributed start-up and run directory
        distributed.maybe_initialize(config.distributed)
        enable_compilation_cache(config.get("compilation_cache_dir", ""))
        self.config = config
        self.workdir = workdir = pathlib.Path(workdir).absolute()
        if jax.process_index() == 0:
            workdir.mkdir(parents=True, exist_ok=True)
        distributed.sync("workdir")
        self.note = log or (lambda s: print(s, flush=True) if jax.process_index() == 0 else None)

        # ---- 2. mesh
        self.mesh = mesh = make_mesh(config.mesh)
        n_batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
        if config.micro_batch_size % n_batch_shards:
            raise ValueError(f"micro_batch_size {config.micro_batch_size} is not divisible by the data x fsdp mesh "
                             f"axes ({n_batch_shards})")

        # ---- 3. data
        self.data = data_config(config, workdir)
        self.meta = read_metadata(task_directories(self.data))
        class_names = {t: list(m.get("class_names", [])) for t, m in self.meta.items()}
        # An epoch counts the tasks this run trains on (the built-in dataset always holds all six).
        weights = dict(self.data.task_weights)
        in_run = {t: m for t, m in self.meta.items() if not weights or weights.get(t, 0) > 0}
        self.total_steps, warmup_steps = resolve_schedule(config, in_run)

        # ---- 4. model and optimiser
        self.tm = build_task_model(config, class_names)
        optim = copy.deepcopy(config.optim)
        with optim.unlocked():
            optim.warmup_steps = warmup_steps
        self.trainer = make_trainer(config, self.tm, mesh, optim, self.total_steps)
        self.ckpt = Checkpointer(workdir / "checkpoints", every_steps=config.checkpoint.every_steps,
                                 keep=config.checkpoint.keep, async_save=config.checkpoint.async_save,
                                 report=self.note)

    def restore_or_init(self) -> tuple[int, dict, dict]:
        """(step, state, data-iterator state) from the newest good checkpoint, or a fresh initial state."""
        restored = self.ckpt.restore_latest(self.trainer.abstract_state())
        if restored is not None:
            step, state, data_state = restored
            self.note(f"resumed from {self.ckpt.directory / str(step)} (step {step})")
            return step, state, data_state
        return 0, self.trainer.init_state(self.config.seed), {"next_batch": 0}


# ------------------------------------------------------------------------------------------------- train
def train(config, workdir: str | pathlib.Path, *, stop_at: int | None = None,
          batch_hook: Callable[[int, dict], dict] | None = None,
          state_hook: Callable[[int, dict], dict] | None = None, log: Callable[[str], None] | None = None
          ) -> dict[str, Any]:
    """Train until `config.total_steps` (resuming from WORKDIR/checkpoints if any); returns a summary.

    stop_at: stop after this step as if preempted (checkpoint, then return); for tests.
    batch_hook(step, batch) -> batch / state_hook(step, state) -> state: run before each optimizer step's
    micro-batches (tests: SIGTERM, NaN injection).
    """
    setup = Setup(config, workdir, log)
    mesh, data, tm, trainer, ckpt = setup.mesh, setup.data, setup.tm, setup.trainer, setup.ckpt
    total_steps, writer_note, workdir = setup.total_steps, setup.note, setup.workdir

    # SIGTERM -> all processes stop after the same step (see its doc). Made before the restore and the first step's
    # compilation; it registers the latest checkpoint's step (>= the step restored) with JAX's preemption service.
    preempt = distributed.Preemption(start_step=ckpt.latest_step() or 0)

    # ---- 5. restore or initialise
    step, state, data_state = setup.restore_or_init()
    _write_config(workdir, config)
    if step >= total_steps:
        writer_note(f"nothing to do: checkpoint step {step} >= total_steps {total_steps}")
        ckpt.close()
        preempt.close()
        return {"step": step, "total_steps": total_steps, "stopped": "done", "losses": [], "state": state,
                "trainer": trainer}

    from data_pipelines.pipeline import loader

    it = loader.make_train_iterator(data, mesh=mesh, start=int(data_state["next_batch"]))
    text = replicate(tm.text, mesh) if tm.text is not None else None
    accum = int(config.accum_steps)
    clips_per_step = config.micro_batch_size * accum
    bb = backbone_config(config)
    step_flops = flops_lib.train_flops_per_clip(bb, num_frames=data.num_frames, image_size=data.image_size) \
        * clips_per_step
    peak = flops_lib.peak_tflops(jax.devices()[0].device_kind, config.peak_tflops_per_device)

    # ---- 6. loop
    writer = MetricWriter(workdir, total_steps=total_steps, start_step=step,
                          progress_bar=config.progress_bar and jax.process_index() == 0)
    timer = StepTimer()
    acc = trainer.init_accumulator()
    micro_log: list[tuple[str, dict]] = []
    step_log: list[dict] = []
    losses: list[float] = []
    pending = None  # (step, metrics) of the last step, checked one step late (keeps dispatch asynchronous)
    stopped = "done"
    first_step = step

    def check(item):
        s, m = item
        if not bool(jax.device_get(m["finite"])):
            latest = ckpt.latest_step()
            raise NonFiniteLossError(
                f"step {s}: loss {float(m['loss'])} / gradient norm {float(m['grad_norm'])} is not finite; the update "
                f"was not applied and training stops. The last good checkpoint is "
                f"{ckpt.directory / str(latest) if latest is not None else '(none)'}.")

    try:
        while step < total_steps:
            if state_hook is not None:
                state = state_hook(step, state)
            for _ in range(accum):
                batch = next(it)
                task = batch["task"]
                if tm.prepare_batch is not None:
                    extra = tm.prepare_batch(batch)
                    batch = {**batch, **loader.to_global_batch(extra, mesh, data.data_axes)}
                if batch_hook is not None:
                    batch = batch_hook(step, batch)
                acc, m = trainer.micro_step(state, acc, device_batch(batch), text, task)
                micro_log.append((task, m))
            state, acc, m = trainer.apply_step(state, acc)
            step += 1
            if pending is not None:
                check(pending)
            pending = (step, m)
            step_log.append(m)
            writer.advance()
            if step == first_step + 1:
                jax.block_until_ready(m)  # the first step compiles: time from here on
                timer.start()
            else:
                timer.tick()
            last = step >= total_steps
            do_log = step % config.log_every == 0 or last
            preempted = preempt.reached(step)  # every step, on every process (a collective in some modes)
            stop_now = preempted or (stop_at is not None and step >= stop_at)
            will_save = last or stop_now or (step % ckpt.every_steps == 0)
            if do_log or will_save:
                check(pending)
                pending = None
            if do_log:
                row = _summarise(step_log, micro_log)
                losses.append(row["loss"])
                dt = timer.read()
                if dt:
                    row.update(steps_per_sec=1 / dt, clips_per_sec=clips_per_step / dt,
                               tflops_per_device=step_flops / dt / jax.device_count() / 1e12)
                    if peak:
                        row["mfu"] = row["tflops_per_device"] / peak
                row.update(clips_seen=step * clips_per_step, progress=step / max(total_steps, 1))
                writer.write(step, row)
                step_log, micro_log = [], []
            if will_save:
                ckpt.save(step, state, it.get_state(), force=last or stop_now)
            if stop_now and not last:
                stopped = "preempted"
                writer.note(f"stopping at step {step}: checkpoint saved to {ckpt.directory / str(step)}")
                break
        if pending is not None:
            check(pending)
        if stopped == "done" and jax.process_count() == 1:
            out = export_backbone(config, trainer, state, workdir / "export")
            writer.note(f"backbone exported to {out} (python -m streamformer_jax.extract --checkpoint {out} ...)")
    finally:
        writer.close()
        ckpt.close()  # waits for the (preemption) checkpoint to be committed
        it.close()
        preempt.close()  # only now: a second SIGTERM during the final save must not kill the process
    return {"step": step, "total_steps": total_steps, "stopped": stopped, "losses": losses, "state": state,
            "trainer": trainer}


def _summarise(step_log: list[dict], micro_log: list[tuple[str, dict]]) -> dict[str, float]:
    steps = jax.device_get(step_log)
    micro = jax.device_get([m for _, m in micro_log])
    row = {"loss": float(np.mean([s["loss"] for s in steps])),
           "lr": float(steps[-1]["lr"]),
           "grad_norm": float(np.mean([s["grad_norm"] for s in steps])),
           "param_norm": float(steps[-1]["param_norm"])}
    per_task = collections.defaultdict(lambda: collections.defaultdict(list))
    for (task, _), m in zip(micro_log, micro):
        for k, v in m.items():
            per_task[task][k].append(float(v))
    for task, ms in sorted(per_task.items()):
        for k, v in ms.items():
            row[f"{k}/{task}" if k == "loss" else f"{task}/{k}"] = float(np.mean(v))
    return row
