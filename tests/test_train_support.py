"""Shared fixtures and helpers of the trainer tests (no tests here).

Runs use the real `multitask` model on the tiny config (here 1 layer, 64 wide, 4 frames of 32², 8 clips per
micro-batch) restricted to one or two tasks, and share one built-in dataset and one JAX persistent compilation
cache per test session, so repeated runs of the same program do not recompile.
"""
import json
import os
import pathlib
import re
import subprocess
import sys

import ml_collections
import pytest

from multihost import free_port, wait_all
from streamformer_jax.train.config_files import load_config, set_overrides  # noqa: F401 - the tests' config helpers

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def builtin_dir(tmp_path_factory):
    from data_pipelines.pipeline import builtin

    d = tmp_path_factory.getbasetemp() / "train_builtin"
    builtin.build_builtin_dataset(d)
    return str(d)


@pytest.fixture(scope="session")
def jax_cache(tmp_path_factory):
    return str(tmp_path_factory.getbasetemp() / "train_jax_cache")


def tiny_config(builtin_dir: str, jax_cache: str, tasks=("kinetics",), **overrides) -> ml_collections.ConfigDict:
    config = load_config("pretrain_multitask", "tiny")
    config.builtin_dir = builtin_dir
    config.compilation_cache_dir = jax_cache
    config.tasks = ",".join(tasks)
    config.model.overrides.num_layers = 1  # compile time dominates the tests on CPU
    config.accum_steps = len(tasks)
    config.progress_bar = False
    config.checkpoint.async_save = True
    return set_overrides(config, overrides)


def read_metrics(workdir) -> list[dict]:
    path = pathlib.Path(workdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def subprocess_env(devices: int, **extra) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_readme_block(section: str, placeholder: str, workdir, timeout: float) -> subprocess.CompletedProcess:
    """The first bash block under the README heading `section`, as written except `placeholder` (its /tmp work
    directory) replaced by `workdir`, run with bash -euo pipefail on one CPU device."""
    text = (REPO / "README.md").read_text().split(section, 1)[1]
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    env = subprocess_env(1, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    return subprocess.run(["bash", "-euo", "pipefail", "-c", block.replace(placeholder, str(workdir))], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)


def run_cli(args, env, timeout=240, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "streamformer_jax.train", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def run_cli_two_processes(args, *, timeout: float = 300, env=None, script=None) -> list[str]:
    """The training command line as two local JAX processes (jax.distributed on CPU/gloo, 2 devices each); each
    must exit 0. `env`: extra environment for both, or a list of two dicts (one per process). `script`: a file to
    run instead of `-m streamformer_jax.train` (a wrapper of the command line). Returns both outputs."""
    port = free_port()
    envs = env if isinstance(env, (list, tuple)) else [env or {}, env or {}]
    command = [sys.executable, str(script)] if script else [sys.executable, "-m", "streamformer_jax.train"]
    procs = []
    for i in range(2):
        e = subprocess_env(2, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=2, JAX_PROCESS_ID=i,
                           **envs[i])
        procs.append(subprocess.Popen([*command, *map(str, args)], env=e, cwd=REPO, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    return wait_all(procs, timeout, "two-process training")
