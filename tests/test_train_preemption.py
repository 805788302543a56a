"""SIGTERM in multi-process runs: the processes agree on one step to stop after, checkpoint it, exit cleanly, and a
rerun resumes there and ends exactly as an uninterrupted run.

Two local JAX processes (jax.distributed on CPU/gloo), with JAX's preemption service (the default) and with the
fallback agreement (`JAX_ENABLE_PREEMPTION_SERVICE=false`), the signal sent to one process only or to both.
"""
import re
import textwrap

import pytest

from multihost import run_two_hosts
from test_train_support import builtin_dir, jax_cache, read_metrics, run_cli_two_processes  # noqa: F401

AGREEMENT_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    import jax
    import jax.numpy as jnp
    import numpy as np

    port, pid, kills = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid)
    from streamformer_jax.train import distributed

    START = 20  # as if resumed from a checkpoint at step 20
    kill_at = {int(k): v for k, v in (item.split(":") for item in kills.split(",") if item)}
    preempt = distributed.Preemption(start_step=START)
    print("MODE", preempt.mode, flush=True)
    if "early" in kill_at.values():  # the signal after start-up, while the first step compiles (on every process)
        if kill_at.get(pid) == "early":
            os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(2)
    # A stand-in for the training step: a cross-process all-reduce per step, dispatched asynchronously.
    mesh = jax.make_mesh((jax.device_count(),), ("d",))
    sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
    x = jax.make_array_from_process_local_data(sh, np.ones((jax.local_device_count(),), np.float32))
    train_step = jax.jit(lambda x: x * 0.5 + jnp.mean(x), out_shardings=sh)
    stopped = None
    for step in range(START + 1, START + 301):
        if kill_at.get(pid) == str(step):
            os.kill(os.getpid(), signal.SIGTERM)  # a real signal, to this process only
        x = train_step(x)
        time.sleep(0.01)  # JAX's notice propagates within ~1 s: ~100 steps; 300 leave room under load
        if preempt.reached(step):
            stopped = step
            break
    preempt.close()
    print("STOPPED", stopped, flush=True)
    print("HOST_OK", pid, flush=True)
    """)


def _stopped(out: str):
    value = re.search(r"^STOPPED (\S+)$", out, re.M).group(1)
    return None if value == "None" else int(value)


@pytest.mark.parametrize("service, kills", [(True, "1:25"), (True, "0:25,1:28"), (True, "1:early"),
                                            (False, "1:25"), (False, "0:25,1:28")],
                         ids=["jax_service-one_process", "jax_service-both", "jax_service-while_compiling",
                              "gather-one_process", "gather-both"])
def test_processes_agree_on_the_stop_step(tmp_path, service, kills):
    """SIGTERM to process 1 only / to both at different steps / to process 1 before the first step of a resumed
    run: both processes report the same stop step, after the signal; the fallback stops exactly one step after
    the first signalled step."""
    script = tmp_path / "host.py"
    script.write_text(AGREEMENT_SCRIPT)
    env = {"JAX_ENABLE_PREEMPTION_SERVICE": "true" if service else "false"}
    outs = run_two_hosts(script, [kills], timeout=120, env=env)
    for out in outs:
        assert f"MODE {'jax' if service else 'gather'}" in out, out[-2000:]
    stops = [_stopped(out) for out in outs]
    assert stops[0] is not None and stops[0] == stops[1], stops  # the same step on both processes
    if "early" in kills:  # (without registering the start step, the agreed step would be 1: never reached)
        assert 21 <= stops[0] < 300
        return
    first_signal = min(int(item.split(":")[1]) for item in kills.split(","))
    if service:
        assert first_signal <= stops[0] < 300
    else:  # the step in which a flag was set is all-reduced after that step and read one step later
        assert stops[0] == first_signal + 1


# ------------------------------------------------------------------------------------- the real trainer, end to end
# The training command line, with a test hook: SIGTERM to this process (a real signal, through the OS) before the
# first micro-batch of optimizer step SF_TEST_SIGTERM_AT + 1, and an optional delay per micro-batch (JAX's notice
# takes up to ~1 s to propagate; the delay keeps the run from finishing first). Numerics are untouched.
CLI_WITH_SIGTERM = textwrap.dedent(
    """
    import os, signal, time
    from streamformer_jax.train import __main__ as cli, loop

    KILL_AT = int(os.environ.get("SF_TEST_SIGTERM_AT", "-1"))
    DELAY = float(os.environ.get("SF_TEST_DELAY", "0"))
    real_train = loop.train

    def train(config, workdir, **kw):
        sent = []

        def hook(step, batch):
            if step == KILL_AT and not sent:
                sent.append(step)
                os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(DELAY)
            return batch

        return real_train(config, workdir, batch_hook=hook, **kw)

    loop.train = train
    raise SystemExit(cli.main())
    """)

TOTAL = 16


def _args(workdir, builtin, cache):
    return ["--config", "configs/pretrain_multitask.py:tiny", "--workdir", workdir, f"--config.total_steps={TOTAL}",
            f"--config.builtin_dir={builtin}", f"--config.compilation_cache_dir={cache}", "--config.progress_bar=False",
            "--config.accum_steps=2", "--config.checkpoint.every_steps=100", "--config.tasks=kinetics",
            "--config.model.overrides.num_layers=1"]


def _finished(out: str):
    m = re.search(r"^(?:process 1: )?finished: step (\d+)/(\d+) \((\w+)\)", out, re.M)
    assert m, out[-3000:]
    return int(m.group(1)), int(m.group(2)), m.group(3)


def _checkpoint_steps(workdir):
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _saved_state(workdir, step):
    """The train state saved at `step`, as NumPy arrays (read by orbax without a target mesh)."""
    import jax
    import numpy as np
    import orbax.checkpoint as ocp

    path = workdir / "checkpoints" / str(step) / "state"
    with ocp.PyTreeCheckpointer() as ckptr:
        meta = ckptr.metadata(path).item_metadata.tree
        args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)
        return ckptr.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))


def _data_state(workdir, step):
    import orbax.checkpoint as ocp

    with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as ckptr:
        return dict(ckptr.restore(workdir / "checkpoints" / str(step) / "data"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, builtin_dir, jax_cache):  # noqa: F811
    work = tmp_path_factory.mktemp("uninterrupted")
    outs = run_cli_two_processes(_args(work, builtin_dir, jax_cache))
    assert _finished(outs[0]) == _finished(outs[1]) == (TOTAL, TOTAL, "done")
    return work


@pytest.mark.slow
@pytest.mark.parametrize("service, kill_at, resume", [(True, {1: 2}, True), (True, {0: 2, 1: 4}, False),
                                                      (False, {1: 2}, True)],
                         ids=["jax_service-sigterm_to_one", "jax_service-sigterm_to_both", "gather-sigterm_to_one"])
def test_sigterm_on_two_processes_checkpoints_one_step_and_resumes_exactly(
        tmp_path, builtin_dir, jax_cache, uninterrupted, service, kill_at, resume):  # noqa: F811
    """The command line on two processes, SIGTERM to one or both: both stop after the same step S, report
    "preempted", exit 0, and S is checkpointed with the uninterrupted run's state; the same command again resumes
    from S and ends bit for bit as the uninterrupted run (losses, parameters, optimizer state). About 40-60 s each
    on 2 cores (process 1 recompiles: JAX's persistent cache is written by process 0 only and its CPU keys differ
    per process)."""
    import jax
    import numpy as np

    work = tmp_path / "run"
    args = _args(work, builtin_dir, jax_cache)
    script = tmp_path / "cli_with_sigterm.py"
    script.write_text(CLI_WITH_SIGTERM)
    base = {"JAX_ENABLE_PREEMPTION_SERVICE": "true" if service else "false", "SF_TEST_DELAY": "0.1"}
    envs = [dict(base, **({"SF_TEST_SIGTERM_AT": kill_at[i]} if i in kill_at else {})) for i in range(2)]
    outs = run_cli_two_processes(args, env=envs, script=script)  # both exit 0
    (s0, _, status0), (s1, _, status1) = _finished(outs[0]), _finished(outs[1])
    assert status0 == status1 == "preempted", outs[0][-2000:]
    assert s0 == s1, (s0, s1)  # both processes stopped after the same step ...
    stop = s0
    first_signal_step = min(kill_at.values()) + 1  # the signal came during this optimizer step
    if service:
        assert first_signal_step <= stop < TOTAL
    else:  # fallback agreement: flags all-reduced after the signalled step, read after the next one
        assert stop == first_signal_step + 1
    assert f"stopping at step {stop}: checkpoint saved" in outs[0]
    assert _checkpoint_steps(work) == [stop]  # ... which was checkpointed (and no other: every_steps=100)
    rows, ref = read_metrics(work), read_metrics(uninterrupted)
    assert [r["step"] for r in rows] == list(range(1, stop + 1))
    for a, b in zip(rows, ref):  # the same steps as the uninterrupted run up to S
        assert a["loss"] == b["loss"] and a["grad_norm"] == b["grad_norm"], a["step"]
    saved = _saved_state(work, stop)
    assert int(saved["step"]) == stop and _data_state(work, stop) == {"next_batch": 2 * stop}  # 2 micro-batches/step
    if not resume:
        return

    # The same command again (no signal) resumes from that step and ends exactly as the uninterrupted run.
    outs = run_cli_two_processes(args)
    assert f"resumed from {work / 'checkpoints' / str(stop)} (step {stop})" in outs[0], outs[0][-2000:]
    assert _finished(outs[0]) == _finished(outs[1]) == (TOTAL, TOTAL, "done")
    assert _checkpoint_steps(work) == [stop, TOTAL]
    rows = read_metrics(work)
    assert [r["step"] for r in rows] == [r["step"] for r in ref] == list(range(1, TOTAL + 1))
    for a, b in zip(rows, ref):
        for key in ("loss", "loss/kinetics", "kinetics/accuracy", "grad_norm", "lr", "param_norm"):
            assert a[key] == b[key], (a["step"], key, a[key], b[key])  # bit for bit
    got, want = _saved_state(work, TOTAL), _saved_state(uninterrupted, TOTAL)
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    for x, y in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_array_equal(x, y)  # parameters, optimizer state, step and RNG, bitwise
    assert int(got["step"]) == TOTAL
