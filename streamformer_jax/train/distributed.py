"""`jax.distributed` start-up for multi-host runs, and preemption (SIGTERM) agreement across processes.

* TPU VMs and SLURM: `jax.distributed.initialize()` finds everything itself (`initialize="auto"` calls it
  when it detects a TPU VM (TPU environment variables or `/dev/accel*`) or a SLURM step with several tasks).
* Other GPU clusters: pass the coordinator explicitly, by config or by environment
  (`JAX_COORDINATOR_ADDRESS=host:port JAX_NUM_PROCESSES=N JAX_PROCESS_ID=i`).
* Single process (no variables, no SLURM multi-task step): nothing to do.
`maybe_initialize` must run before any other JAX call. `Preemption`: see its docstring.
"""
from __future__ import annotations

import glob
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

try:  # private: where JAX keeps its preemption service
    from jax._src import distributed as _jax_distributed
except ImportError:  # pragma: no cover - private API moved: trust the config flag
    _jax_distributed = None


def _explicit(cfg) -> dict:
    addr = cfg.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
    num = int(cfg.num_processes or os.environ.get("JAX_NUM_PROCESSES", 0) or 0)
    pid = int(cfg.process_id if cfg.process_id >= 0 else os.environ.get("JAX_PROCESS_ID", -1))
    if not addr:
        return {}
    if num < 1 or pid < 0:
        raise ValueError("a coordinator address needs num_processes and process_id (config or JAX_NUM_PROCESSES / "
                         "JAX_PROCESS_ID)")
    return dict(coordinator_address=addr, num_processes=num, process_id=pid)


def _auto_cluster() -> bool:
    # Cloud TPU VMs (single- or multi-host): initialize() reads the slice's topology from the TPU metadata.
    if any(k in os.environ for k in ("TPU_WORKER_HOSTNAMES", "TPU_ACCELERATOR_TYPE", "CLOUD_TPU_TASK_ID",
                                     "MEGASCALE_COORDINATOR_ADDRESS")) or glob.glob("/dev/accel*"):
        return True
    return int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_STEP_ID" in os.environ


def maybe_initialize(cfg) -> bool:
    """Initialise jax.distributed when the config/environment asks for it; True if it did."""
    if cfg.initialize == "no":
        return False
    if jax.distributed.is_initialized():
        return True
    kwargs = _explicit(cfg)
    if kwargs or cfg.initialize == "yes" or (cfg.initialize == "auto" and _auto_cluster()):
        jax.distributed.initialize(**kwargs)
        return True
    return False


def sync(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def jax_preemption_service() -> bool:
    """True if this process runs JAX's preemption service (set up by `jax.distributed.initialize` unless
    `jax_enable_preemption_service` is False; TPU pods, SLURM and CPU/gloo alike)."""
    if jax.process_count() == 1:
        return False
    try:
        return _jax_distributed.global_state.preemption_sync_manager is not None
    except AttributeError:  # private API moved: trust the config flag
        return bool(jax.config.jax_enable_preemption_service)


class Preemption:
    """SIGTERM (a preemption notice, SLURM's `--signal=TERM@T`, `kill`) -> every process stops after the same
    optimizer step. Call `reached(step)` after every optimizer step, with the same steps on every process; when
    it returns True, checkpoint that step and stop.

    * One process (`mode == "signal"`): a SIGTERM handler sets a flag, read after each step.
    * Several processes with JAX's preemption service (`mode == "jax"`): its notifier (C++) catches SIGTERM on
      whichever processes get it, tells the others through the coordination service, and the processes agree on
      the step after the largest step any of them has reached; `multihost_utils.reached_preemption_sync_point`
      becomes True on all of them at that step. Free per step (a mutex); the notice takes up to about a second
      to propagate, so the stop comes that long after the signal.
    * Several processes without the service (`mode == "gather"`, e.g. `JAX_ENABLE_PREEMPTION_SERVICE=false`):
      a SIGTERM handler sets a local flag; after every step each process dispatches a max-reduction of the flags
      over all devices (a 4-byte all-reduce, asynchronous) and reads the previous step's result, which every
      process reads at the same step. All stop one step after the step in which any process saw the signal.
      Cost per step: one tiny extra dispatch and collective; the read waits only for the previous step to finish,
      so the device queue never drains.
    `start_step`: the step the run starts from (or a larger one: the latest checkpoint's), construct as early as
    possible. The handlers are installed at construction; a SIGTERM that arrives earlier (while the run is starting)
    has its default effect in modes "signal" and "gather". In mode "jax" the service catches it from
    `jax.distributed.initialize` on, but it counts steps from 0 until told otherwise: construction registers
    `start_step`, so a notice during the first step's compilation still stops the run after that step (without the
    registration, a resumed run would never reach the agreed step 1). A notice between `jax.distributed.initialize`
    and the construction is lost on a resumed run.
    """

    def __init__(self, start_step: int = 0):
        self.flag = False
        self._old = None
        self._inflight = None
        self.mode = "signal" if jax.process_count() == 1 else ("jax" if jax_preemption_service() else "gather")
        if self.mode == "jax":
            # True only if a notice already fixed the sync point at start_step: stop after the first step.
            self.flag = bool(multihost_utils.reached_preemption_sync_point(int(start_step)))
        if self.mode != "jax":
            try:
                self._old = signal.signal(signal.SIGTERM, self._handler)
            except ValueError:  # not the main thread: no handler, no preemption checkpoints
                self._old = None
        if self.mode == "gather":
            mesh = jax.sharding.Mesh(np.array(jax.devices()), ("processes",))
            self._flags_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("processes"))
            self._any = jax.jit(jnp.max, out_shardings=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))

    def _handler(self, signum, frame):
        self.flag = True

    def reached(self, step: int) -> bool:
        if self.mode == "signal":
            return self.flag
        if self.mode == "jax":
            return bool(multihost_utils.reached_preemption_sync_point(int(step))) or self.flag
        local = np.full((jax.local_device_count(),), int(self.flag), np.int32)
        flags = jax.make_array_from_process_local_data(self._flags_sharding, local, (jax.device_count(),))
        previous, self._inflight = self._inflight, self._any(flags)
        return previous is not None and bool(np.asarray(previous.addressable_data(0)))

    def close(self):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)
            self._old = None
