"""Run a test script as two local JAX processes (the multi-host code paths on one CPU machine)."""
import os
import socket
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_hosts(script_path, extra_args, timeout: float, env: dict | None = None) -> list[str]:
    """`python SCRIPT PORT PROCESS_ID *extra_args` for process 0 and 1; each must exit 0 and print
    `HOST_OK <id>`. `env`: extra environment variables for both. Returns both outputs (stdout + stderr)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {}))
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, str(script_path), port, str(i), *map(str, extra_args)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = wait_all(procs, timeout, "multi-process run")
    for i, out in enumerate(outs):
        assert f"HOST_OK {i}" in out, out[-3000:]
    return outs


def wait_all(procs, timeout: float, what: str) -> list[str]:
    """Waits for every process (killing all of them on a timeout); each must exit 0. Returns their outputs."""
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"{what} timed out")
    for i, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"{what}: process {i} exited with {p.returncode}:\n{out[-4000:]}"
    return outs
