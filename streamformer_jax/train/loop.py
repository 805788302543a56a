"""The training loop, in named phases: start-up (distributed, run directory, mesh) -> data -> model and optimiser
-> restore or initialise -> optimizer steps (`StepLoop`) -> export.

One optimizer step = `accum_steps` task-pure micro-batches (one task each, in the mixture's cycle order), their
gradients summed in float32 and averaged, then one AdamW update. Everything is deterministic in (config, step):
the data iterator is a pure function of the micro-batch index and the RNG is folded with the step, so a run
stopped and resumed from a checkpoint continues exactly as an uninterrupted one.

The config is read once, in `Setup`: the model part becomes a `ModelSettings`, the loop part a `LoopSettings`,
the data part the pipeline config of the run; each builder gets only its part.
"""
from __future__ import annotations

import collections
import copy
import dataclasses
import json
import pathlib
from typing import Any, Callable, Mapping

import jax
import ml_collections
import numpy as np

from data_pipelines.pipeline import label_tables, loader, mixture
from streamformer_jax import sharding
from streamformer_jax.checkpoint import save_checkpoint
from streamformer_jax.param_tree import flatten
from streamformer_jax.train import distributed, flops as flops_lib, zero_shot_eval
from streamformer_jax.train.metrics import MetricWriter, StepTimer
from streamformer_jax.train.model_kinds import build_task_model
from streamformer_jax.train.state_checkpoints import Checkpointer
from streamformer_jax.train.step import Trainer, device_batch
from streamformer_jax.train.task_model import ModelSettings

try:  # JAX's persistent-cache module is private; without it the cache applies from the next process on
    from jax._src import compilation_cache as _compilation_cache
except ImportError:  # pragma: no cover - private API moved
    _compilation_cache = None


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient norm became NaN/inf; the update was not applied."""


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    """The step-loop part of a training config, derived once."""

    micro_batch_size: int
    accum_steps: int
    log_every: int
    progress_bar: bool
    peak_tflops_per_device: float
    seed: int

    @classmethod
    def from_config(cls, config) -> "LoopSettings":
        return cls(micro_batch_size=int(config.micro_batch_size), accum_steps=int(config.accum_steps),
                   log_every=int(config.log_every), progress_bar=bool(config.progress_bar),
                   peak_tflops_per_device=float(config.peak_tflops_per_device), seed=int(config.seed))

    @property
    def clips_per_step(self) -> int:
        return self.micro_batch_size * self.accum_steps


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
    if data.get("builtin_dir"):
        # Process 0 builds the built-in dataset first so that local processes do not race on it.
        if jax.process_index() == 0:
            loader.task_dirs(data)
        distributed.sync("builtin_data")
    return {k: pathlib.Path(v) for k, v in loader.task_dirs(data).items()}


def read_metadata(dirs: Mapping[str, pathlib.Path]) -> dict[str, dict]:
    return {task: json.loads((d / "metadata.json").read_text()) for task, d in dirs.items()}


def steps_per_epoch(loop: LoopSettings, balance_scale: float, meta: Mapping[str, dict],
                    plan: mixture.MixturePlan | None = None) -> int:
    """Optimizer steps per epoch: the original sampler's epoch (`plan`: Σ b_k micro-batches) / accum_steps, or,
    for explicit task weights, the mixture's (balanced) samples / clips per step."""
    if plan is not None and plan.epoch_micro_batches() is not None:
        return max(1, plan.epoch_micro_batches() // loop.accum_steps)
    sizes = {t: int(m.get("num_samples", m.get("num_examples", 0))) for t, m in meta.items()
             if m.get("num_samples", m.get("num_examples"))}
    clips = sum(mixture.balanced_sizes(sizes, balance_scale).values()) if sizes else 0
    return max(1, clips // loop.clips_per_step)


def resolve_accum_steps(config, plan: mixture.MixturePlan) -> int:
    """accum_steps from the mixture's cycle: the original steps the optimizer once per cycle (Σ f_k micro-batches;
    7 in its released mix). 0 = derive it (one cycle per step); a value that is not a whole number of cycles is an
    error, because its optimizer steps would mix the tasks differently from the original's (k cycles per step
    keep the mix and make the step k times larger)."""
    accum, cycle = int(config.accum_steps), len(plan.cycle)
    if accum == 0:
        return cycle
    if accum < 0:
        raise ValueError(f"--config.accum_steps must be >= 0, got {accum}")
    if accum % cycle:
        raise ValueError(f"--config.accum_steps={accum} is not a whole number of the data's task cycle of {cycle} "
                         f"micro-batches ({plan.describe()}): set --config.accum_steps={cycle} (one cycle per "
                         "optimizer step, as the original), or 0 to derive it")
    return accum


def resolve_schedule(config, loop: LoopSettings, meta, plan: mixture.MixturePlan | None = None) -> tuple[int, int]:
    """(total_steps, warmup_steps) in optimizer steps (an epoch: `meta`'s samples, balanced, / clips per step)."""
    per_epoch = None
    total = int(config.total_steps)
    if total < 0:
        if config.epochs <= 0:
            raise ValueError("set --config.total_steps=N (or total_steps=-1 with epochs > 0)")
        per_epoch = steps_per_epoch(loop, config.data.balance_scale, meta, plan)
        total = int(round(config.epochs * per_epoch))
    warmup = int(config.optim.warmup_steps)
    if config.optim.get("warmup_epochs", 0.0):
        per_epoch = per_epoch or steps_per_epoch(loop, config.data.balance_scale, meta, plan)
        warmup = int(round(config.optim.warmup_epochs * per_epoch))
    return total, warmup


def check_required(config) -> None:
    """The config's `required` fields (dotted names) must be set, e.g. the recipe's data_dir and model.init."""
    for name in config.get("required", ()):
        value = config
        for part in name.split("."):
            value = value.get(part) if hasattr(value, "get") else None
        if not value:
            raise ValueError(f"--config.{name} is required by the {config.get('name', 'chosen')} config "
                             "(docs/training.md; the ':tiny' variant trains on the built-in dataset)")


# ------------------------------------------------------------------------------------------------- misc
def enable_compilation_cache(path: str) -> None:
    """JAX's persistent compilation cache: a restarted (preempted) run skips recompiling its steps."""
    if not path:
        return
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    if _compilation_cache is not None:  # the cache is set up at the first compilation; make it re-read the settings
        _compilation_cache.reset_cache()


def export_backbone(trainer: Trainer, state: dict, out: str | pathlib.Path) -> pathlib.Path:
    """Write the trained backbone in this project's checkpoint format (`streamformer_jax.checkpoint`), the input
    of `python -m streamformer_jax.extract --checkpoint OUT` and of `FeatureExtractor.from_checkpoint(OUT)`, plus
    what the model kind exports beside it (e.g. the classifier head)."""
    flat = {**flatten(jax.device_get(state["params"])), **flatten(jax.device_get(state["frozen"]))}
    backbone = {k[len("backbone."):]: np.asarray(v) for k, v in flat.items() if k.startswith("backbone.")}
    bb = trainer.tm.backbone.replace(dtype="float32")
    path = save_checkpoint(out, bb, backbone, extra={"source": "streamformer_jax.train",
                                                     "step": int(jax.device_get(state["step"]))})
    if trainer.tm.export is not None:
        trainer.tm.export(flat, path)
    return path


def _write_config(workdir: pathlib.Path, config) -> None:
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")


# ------------------------------------------------------------------------------------------------- setup
class Setup:
    """Everything a run needs before its first step (also used by tools that only restore)."""

    def __init__(self, config, workdir: str | pathlib.Path, log: Callable[[str], None] | None = None):
        self.config = config
        self._start_up(config, workdir, log)
        self.mesh = self._make_mesh(config)
        self._load_data(config)
        self._build_model(config)
        self.ckpt = Checkpointer(self.workdir / "checkpoints", every_steps=config.checkpoint.every_steps,
                                 keep=config.checkpoint.keep, async_save=config.checkpoint.async_save,
                                 report=self.note)

    def _start_up(self, config, workdir, log) -> None:
        """Phase 1: the config's required fields, distributed start-up, compilation cache, run directory."""
        check_required(config)
        distributed.maybe_initialize(config.distributed)
        enable_compilation_cache(config.get("compilation_cache_dir", ""))
        self.workdir = pathlib.Path(workdir).absolute()
        if jax.process_index() == 0:
            self.workdir.mkdir(parents=True, exist_ok=True)
        distributed.sync("workdir")
        self.note = log or (lambda s: print(s, flush=True) if jax.process_index() == 0 else None)
        self.loop = LoopSettings.from_config(config)

    def _make_mesh(self, config, devices=None) -> jax.sharding.Mesh:
        """Phase 2: the (data, fsdp, tensor) mesh over all devices (or `devices`); the micro-batch must split over
        its batch axes."""
        mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor, devices=devices)
        n_batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
        if self.loop.micro_batch_size % n_batch_shards:
            raise ValueError(f"micro_batch_size {self.loop.micro_batch_size} is not divisible by the data x fsdp "
                             f"mesh axes ({n_batch_shards})")
        return mesh

    def _load_data(self, config) -> None:
        """Phase 3: the run's pipeline config, its task directories' metadata, the mixture (the original sampler's
        epoch over the tasks' samples), the optimizer step's micro-batches and the schedule's length."""
        self.data = data_config(config, self.workdir)
        dirs = task_directories(self.data)
        self.meta = read_metadata(dirs)
        # An epoch counts the tasks this run trains on (the built-in dataset always holds every task).
        weights = dict(self.data.task_weights)
        in_run = {t: m for t, m in self.meta.items() if not weights or weights.get(t, 0) > 0}
        self.plan = loader.mixture_plan(self.data, {t: d for t, d in dirs.items() if t in in_run})
        self.loop = dataclasses.replace(self.loop, accum_steps=resolve_accum_steps(config, self.plan))
        self.total_steps, self.warmup_steps = resolve_schedule(config, self.loop, in_run, self.plan)

    @property
    def accum_steps(self) -> int:
        return self.loop.accum_steps

    def _build_model(self, config, model: ModelSettings | None = None) -> None:
        """Phase 4: the model (its kind's builder) and the trainer (optimiser, shardings, compiled steps).
        model: settings to build instead of the config's (a shape-only model for `train.aot`)."""
        self.model = model or ModelSettings.from_config(config)
        class_names = {t: label_tables.label_sets(m) for t, m in self.meta.items()}
        self.tm = build_task_model(self.model, class_names)
        optim = copy.deepcopy(config.optim)
        with optim.unlocked():
            optim.warmup_steps = self.warmup_steps
        self.trainer = Trainer(self.tm, optim, self.total_steps, self.mesh, rules=config.mesh.rules,
                               remat=self.model.remat_policy, scan_layers=self.model.scan_layers)

    def restore_or_init(self) -> tuple[int, dict, dict]:
        """Phase 5: (step, state, data-iterator state) from the newest good checkpoint, or a fresh state."""
        restored = self.ckpt.restore_latest(self.trainer.abstract_state())
        if restored is not None:
            step, state, data_state = restored
            self.note(f"resumed from {self.ckpt.directory / str(step)} (step {step})")
            return step, state, data_state
        return 0, self.trainer.init_state(self.loop.seed), {"next_batch": 0}


# ------------------------------------------------------------------------------------------------- steps
class StepLoop:
    """Phase 6: optimizer steps until the end of the run, a preemption or `stop_at`, with logging and
    checkpoints. A step's finiteness is checked one step late (keeps dispatch asynchronous), and always before
    a log line or a checkpoint."""

    def __init__(self, setup: Setup, it, preempt: distributed.Preemption, *, stop_at: int | None,
                 batch_hook: Callable[[int, dict], dict] | None, state_hook: Callable[[int, dict], dict] | None,
                 evaluator=None):
        self.setup, self.it, self.preempt = setup, it, preempt
        self.stop_at, self.batch_hook, self.state_hook = stop_at, batch_hook, state_hook
        self.evaluator = evaluator  # periodic evaluation: `.every` steps, `evaluator(step, state)` -> metrics
        self.text = sharding.replicate(setup.tm.text, setup.mesh) if setup.tm.text is not None else None
        self.step_flops = flops_lib.train_flops_per_clip(
            setup.tm.backbone, num_frames=setup.data.num_frames, image_size=setup.data.image_size
        ) * setup.loop.clips_per_step
        self.peak = flops_lib.peak_tflops(jax.devices()[0].device_kind, setup.loop.peak_tflops_per_device)
        self.timer = StepTimer()
        self.micro_log: list[tuple[str, dict]] = []
        self.step_log: list[dict] = []
        self.losses: list[float] = []
        self.pending = None  # (step, metrics) of the last step, not yet checked

    def run(self, step: int, state: dict, writer: MetricWriter) -> tuple[int, dict, str]:
        """-> (last step, state, "done" | "preempted")."""
        setup, first_step = self.setup, step
        acc = setup.trainer.init_accumulator()
        while step < setup.total_steps:
            state, acc, metrics = self.optimizer_step(step, state, acc)
            step += 1
            self._check_previous((step, metrics))
            writer.advance()
            if step == first_step + 1:
                jax.block_until_ready(metrics)  # the first step compiles: time from here on
                self.timer.start()
            else:
                self.timer.tick()
            last = step >= setup.total_steps
            stop_now = self.preempt.reached(step) or (self.stop_at is not None and step >= self.stop_at)
            do_log = step % setup.loop.log_every == 0 or last
            will_save = last or stop_now or step % setup.ckpt.every_steps == 0
            do_eval = self.evaluator is not None and (step % self.evaluator.every == 0 or last)
            if do_log or will_save or do_eval:
                self.check_pending()
            if do_log:
                self._log(step, writer)
            if do_eval:
                writer.write(step, self.evaluator(step, state))
            if will_save:
                setup.ckpt.save(step, state, self.it.get_state(), force=last or stop_now)
            if stop_now and not last:
                writer.note(f"stopping at step {step}: checkpoint saved to {setup.ckpt.directory / str(step)}")
                return step, state, "preempted"
        self.check_pending()
        return step, state, "done"

    def optimizer_step(self, step: int, state: dict, acc: dict) -> tuple[dict, dict, dict]:
        """`accum_steps` micro-batches, then the update."""
        setup = self.setup
        if self.state_hook is not None:
            state = self.state_hook(step, state)
        for _ in range(setup.loop.accum_steps):
            batch = next(self.it)
            task = batch["task"]
            if setup.tm.prepare_batch is not None:
                extra = setup.tm.prepare_batch(batch)
                batch = {**batch, **loader.to_global_batch(extra, setup.mesh, setup.data.data_axes)}
            if self.batch_hook is not None:
                batch = self.batch_hook(step, batch)
            acc, m = setup.trainer.micro_step(state, acc, device_batch(batch), self.text, task)
            self.micro_log.append((task, m))
        state, acc, metrics = setup.trainer.apply_step(state, acc)
        self.step_log.append(metrics)
        return state, acc, metrics

    def _check_previous(self, item: tuple[int, dict]) -> None:
        self.check_pending()
        self.pending = item

    def check_pending(self) -> None:
        if self.pending is None:
            return
        s, m = self.pending
        self.pending = None
        if not bool(jax.device_get(m["finite"])):
            latest = self.setup.ckpt.latest_step()
            raise NonFiniteLossError(
                f"step {s}: loss {float(m['loss'])} / gradient norm {float(m['grad_norm'])} is not finite; the update "
                f"was not applied and training stops. The last good checkpoint is "
                f"{self.setup.ckpt.directory / str(latest) if latest is not None else '(none)'}.")

    def _log(self, step: int, writer: MetricWriter) -> None:
        loop = self.setup.loop
        row = _summarise(self.step_log, self.micro_log)
        self.losses.append(row["loss"])
        dt = self.timer.read()
        if dt:
            row.update(steps_per_sec=1 / dt, clips_per_sec=loop.clips_per_step / dt,
                       tflops_per_device=self.step_flops / dt / jax.device_count() / 1e12)
            if self.peak:
                row["mfu"] = row["tflops_per_device"] / self.peak
        row.update(clips_seen=step * loop.clips_per_step, progress=step / max(self.setup.total_steps, 1))
        writer.write(step, row)
        self.step_log, self.micro_log = [], []


# ------------------------------------------------------------------------------------------------- train
def train(config, workdir: str | pathlib.Path, *, stop_at: int | None = None,
          batch_hook: Callable[[int, dict], dict] | None = None,
          state_hook: Callable[[int, dict], dict] | None = None, log: Callable[[str], None] | None = None,
          evaluator: Callable[[Setup], Any] | None = zero_shot_eval.make_evaluator) -> dict[str, Any]:
    """Train until `config.total_steps` (resuming from WORKDIR/checkpoints if any); returns a summary.

    stop_at: stop after this step as if preempted (checkpoint, then return); for tests.
    batch_hook(step, batch) -> batch / state_hook(step, state) -> state: run before each optimizer step's
    micro-batches (tests: SIGTERM, NaN injection).
    evaluator(setup) -> None or a periodic evaluator: `.every` (steps), `evaluator(step, state)` -> metrics logged
    with the training metrics after every `every`-th step and the last (all processes call it). Default: the
    zero-shot evaluation of `config.eval_every` (`zero_shot_eval`); None: no evaluation.
    """
    setup = Setup(config, workdir, log)
    # SIGTERM -> all processes stop after the same step (see its doc). Made before the restore and the first step's
    # compilation; it registers the latest checkpoint's step (>= the step restored) with JAX's preemption service.
    preempt = distributed.Preemption(start_step=setup.ckpt.latest_step() or 0)
    step, state, data_state = setup.restore_or_init()
    _write_config(setup.workdir, config)
    summary = {"step": step, "total_steps": setup.total_steps, "stopped": "done", "losses": [], "state": state,
               "trainer": setup.trainer}
    if step >= setup.total_steps:
        setup.note(f"nothing to do: checkpoint step {step} >= total_steps {setup.total_steps}")
        setup.ckpt.close()
        preempt.close()
        return summary
    it = loader.make_train_iterator(setup.data, mesh=setup.mesh, start=int(data_state["next_batch"]))
    writer = MetricWriter(setup.workdir, total_steps=setup.total_steps, start_step=step,
                          progress_bar=setup.loop.progress_bar and jax.process_index() == 0)
    steps = StepLoop(setup, it, preempt, stop_at=stop_at, batch_hook=batch_hook, state_hook=state_hook,
                     evaluator=evaluator(setup) if evaluator is not None else None)
    try:
        step, state, stopped = steps.run(step, state, writer)
        if stopped == "done" and jax.process_count() == 1:  # phase 7
            out = export_backbone(setup.trainer, state, setup.workdir / "export")
            writer.note(f"backbone exported to {out} (python -m streamformer_jax.extract --checkpoint {out} ...)")
    finally:
        writer.close()
        setup.ckpt.close()  # waits for the (preemption) checkpoint to be committed
        it.close()
        preempt.close()  # only now: a second SIGTERM during the final save must not kill the process
    return {**summary, "step": step, "stopped": stopped, "losses": steps.losses, "state": state}


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
