"""Training checkpoints: orbax `CheckpointManager` (async), every N steps, on preemption, keeping the last K.

Layout: `WORKDIR/checkpoints/<step>/{state, data}`:
  * `state`: the train state pytree (`params` / `frozen` nested by the stable dotted names, `opt`, `step`, `rng`),
    written by every process for its shards (orbax coordinates; process 0 commits);
  * `data`: the data iterator state (`{"next_batch": k}`, the same on every host), JSON.

Orbax writes each step into a temporary directory and renames it when complete, so an interrupted save never
looks like a checkpoint. A checkpoint that is nevertheless broken (files lost or truncated, bad metadata) fails
to restore; `restore_latest` then reports it, moves it to `WORKDIR/checkpoints_corrupt/` and falls back to the
previous one. Restoring takes the target shardings from the current mesh, so a run can resume on a different
mesh shape or device count.
"""
from __future__ import annotations

import logging
import pathlib
import shutil
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

from streamformer_jax.train.distributed import sync

log = logging.getLogger(__name__)

ITEMS = ("state", "data")


class Checkpointer:
    def __init__(self, directory: str | pathlib.Path, *, every_steps: int, keep: int, async_save: bool = True,
                 report: Callable[[str], None] | None = None):
        self.directory = pathlib.Path(directory).absolute()
        self.report = report or log.warning
        self.every_steps = max(int(every_steps), 1)
        self._options = ocp.CheckpointManagerOptions(
            max_to_keep=int(keep) if keep and keep > 0 else None, save_interval_steps=self.every_steps,
            enable_async_checkpointing=bool(async_save), create=True, cleanup_tmp_directories=True)
        self._open()

    def _open(self):
        self.manager = ocp.CheckpointManager(self.directory, options=self._options, item_names=ITEMS)
        # Preemption is the trainer's business (train/distributed.py:Preemption asks JAX's preemption service once
        # per step, from the main thread, and saves with force=True). orbax would ask the service too, also from its
        # save-finalize thread with the step being saved: that moves the service's step counter back, and a notice
        # arriving then could make the processes agree on a step they have already passed (no preemption save).
        self.manager.reached_preemption = lambda step: False

    # --------------------------------------------------------------------------------------------- save
    def save(self, step: int, state: Any, data_state: dict, *, force: bool = False) -> bool:
        """Start an (async) save when `step` is on the interval, or always with `force`. True if saving."""
        # (orbax alone would also save the first step it sees, wherever it falls)
        if not force and (step % self.every_steps or not self.manager.should_save(step)):
            return False
        if step in self.manager.all_steps():
            return False
        return bool(self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(dict(data_state))), force=force))

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    # ------------------------------------------------------------------------------------------ restore
    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        return out["state"], dict(out["data"])

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
        """The newest checkpoint that restores, skipping (and setting aside) broken ones; None if there is none."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            problem = self._check_complete(step)
            if problem is None:
                try:
                    state, data = self.restore(step, abstract_state)
                    _check_restored(state, abstract_state, step)
                    return step, state, data
                except Exception as e:  # noqa: BLE001 - any failure means this checkpoint is unusable
                    problem = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            self._set_aside(step, problem)
        return None

    def _check_complete(self, step: int) -> str | None:
        d = self.directory / str(step)
        for item in ITEMS:
            if not (d / item).is_dir():
                return f"item {item!r} is missing"
        if not any((d / "state").iterdir()):
            return "state item is empty"
        return None

    def _set_aside(self, step: int, problem: str) -> None:
        src = self.directory / str(step)
        dst = self.directory.parent / (self.directory.name + "_corrupt") / str(step)
        self.report(f"checkpoint {src} is incomplete or corrupt ({problem}); skipping it for the previous "
                    f"one{' and moving it to ' + str(dst) if jax.process_index() == 0 else ''}")
        if jax.process_index() == 0 and src.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            if dst.exists():
                shutil.rmtree(dst)
            shutil.move(str(src), str(dst))
        sync(f"set_aside_{step}")
        self.manager.close()
        self._open()


def _check_restored(state, abstract_state, step: int) -> None:
    """Shapes/dtypes must match the target exactly (orbax may pad or cast silently)."""
    got = jax.tree_util.tree_map(lambda x: (tuple(x.shape), str(x.dtype)), state)
    want = jax.tree_util.tree_map(lambda x: (tuple(x.shape), str(x.dtype)), abstract_state)
    if jax.tree_util.tree_structure(got) != jax.tree_util.tree_structure(want) or got != want:
        raise ValueError(f"checkpoint {step} does not match the model (different architecture or trainable split)")
