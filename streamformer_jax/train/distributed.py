"""`jax.distributed` start-up for multi-host runs.

* TPU VMs and SLURM: `jax.distributed.initialize()` finds everything itself (`initialize="auto"` calls it
  when it detects a TPU VM (TPU environment variables or `/dev/accel*`) or a SLURM step with several tasks).
* Other GPU clusters: pass the coordinator explicitly, by config or by environment
  (`JAX_COORDINATOR_ADDRESS=host:port JAX_NUM_PROCESSES=N JAX_PROCESS_ID=i`).
* Single process (no variables, no SLURM multi-task step): nothing to do.
Must run before any other JAX call.
"""
from __future__ import annotations

import os


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
    import glob

    # Cloud TPU VMs (single- or multi-host): initialize() reads the slice's topology from the TPU metadata.
    if any(k in os.environ for k in ("TPU_WORKER_HOSTNAMES", "TPU_ACCELERATOR_TYPE", "CLOUD_TPU_TASK_ID",
                                     "MEGASCALE_COORDINATOR_ADDRESS")) or glob.glob("/dev/accel*"):
        return True
    return int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_STEP_ID" in os.environ


def maybe_initialize(cfg) -> bool:
    """Initialise jax.distributed when the config/environment asks for it; True if it did."""
    import jax

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
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
