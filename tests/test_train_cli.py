"""The command line: locked configs (a misspelt override is an error), the configs' recipe values, and the tiny
config run as two local JAX processes (jax.distributed over gloo), then resumed with a larger total_steps."""
import os
import re

import pytest

from test_train_support import (REPO, builtin_dir, jax_cache, load_config, read_metrics, run_cli,  # noqa: F401
                                run_cli_two_processes, run_readme_block, subprocess_env, tiny_config)


def test_misspelt_override_is_an_error(tmp_path):
    out = run_cli(["--config", "configs/pretrain_multitask.py:tiny", "--workdir", str(tmp_path / "w"),
                   "--config.totl_steps=3"], subprocess_env(1), timeout=120)
    assert out.returncode != 0
    assert "totl_steps" in out.stderr
    assert not (tmp_path / "w").exists()  # rejected before anything ran


def test_unknown_variant_is_an_error():
    with pytest.raises(ValueError, match="unknown variant"):
        load_config("pretrain_multitask", "tinyy")


def test_original_recipe_values():
    c = load_config("pretrain_multitask")
    assert c.model.preset == "vit_b16" and c.model.dtype == "bfloat16" and c.model.trainable == "original"
    assert c.data.num_frames == 16 and c.data.image_size == 224
    assert c.micro_batch_size * c.accum_steps == 896
    assert c.optim.lr == pytest.approx(7e-5) and (c.optim.b1, c.optim.b2) == (0.9, 0.999)
    assert c.optim.weight_decay == 0.05 and c.optim.clip_grad_norm == 0 and c.optim.warmup_steps == 0
    assert c.optim.eps == pytest.approx(1e-8) and c.optim.min_lr == 0  # AdamW eps; cosine to 0
    assert c.epochs == 20 and c.total_steps == -1
    for name, task in (("finetune_k400", "kinetics"), ("finetune_ssv2", "ssv2")):
        f = load_config(name)
        assert tuple(f.data.task_order) == (task,) and dict(f.data.task_weights) == {task: 1}
        assert f.epochs == 30 and f.optim.warmup_epochs == 5 and f.optim.lr == pytest.approx(2e-4)
    tiny = load_config("pretrain_multitask", "tiny")
    assert tiny.model.preset == "tiny" and tiny.data.image_size == 32 and tiny.accum_steps == 6


def _two_processes(workdir, builtin, cache, steps):
    return run_cli_two_processes(
        ["--config", "configs/pretrain_multitask.py:tiny", "--workdir", workdir, f"--config.total_steps={steps}",
         f"--config.builtin_dir={builtin}", f"--config.compilation_cache_dir={cache}", "--config.progress_bar=False",
         "--config.accum_steps=2", "--config.checkpoint.every_steps=2", "--config.tasks=kinetics",
         "--config.model.overrides.num_layers=1"])


@pytest.mark.slow  # about 100 s: two launches of two processes (default runs cover two-process data and eval)
def test_tiny_config_on_two_processes_then_resume(tmp_path, builtin_dir, jax_cache):  # noqa: F811
    from streamformer_jax.train import loop

    work = tmp_path / "run"
    outs = _two_processes(work, builtin_dir, jax_cache, steps=4)
    assert "finished: step 4/4 (done); workdir" in outs[0]  # process 0's line (the launch scripts look for it)
    assert "process 1: finished: step 4/4 (done)" in outs[1] and "\nfinished:" not in "\n" + outs[1]
    rows = read_metrics(work)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # one writer: process 0
    assert all("loss/kinetics" in r for r in rows)
    assert sorted(p.name for p in (work / "checkpoints").iterdir()) == ["2", "4"]
    # Each host loaded its half of every global batch: the losses are those of one process on 8 devices.
    single = tmp_path / "single"
    loop.train(tiny_config(builtin_dir, jax_cache, tasks=("kinetics",), total_steps=4, accum_steps=2,
                           **{"checkpoint.every_steps": 2, "checkpoint.keep": 3}), single, log=lambda s: None)
    for a, b in zip(rows, read_metrics(single)):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6), (a["step"], a["loss"], b["loss"])
    # The same command with a larger total_steps resumes from the latest checkpoint.
    outs = _two_processes(work, builtin_dir, jax_cache, steps=5)
    assert "resumed from" in outs[0] and "(step 4)" in outs[0]
    assert [r["step"] for r in read_metrics(work)] == [1, 2, 3, 4, 5]
    assert (work / "checkpoints" / "5").is_dir()


def _distributed_cfg(**kw):
    import ml_collections

    return ml_collections.ConfigDict({"initialize": "auto", "coordinator_address": "", "num_processes": 0,
                                      "process_id": -1, **kw})


@pytest.fixture
def bare_env(monkeypatch):
    """No cluster in sight: no TPU/SLURM/JAX_* variables, no /dev/accel*."""
    import glob
    import os

    for key in list(os.environ):
        if key.startswith(("TPU_", "CLOUD_TPU", "MEGASCALE_", "SLURM_", "JAX_COORDINATOR", "JAX_NUM_PROCESSES",
                           "JAX_PROCESS_ID")):
            monkeypatch.delenv(key)
    real_glob = glob.glob
    monkeypatch.setattr(glob, "glob", lambda p, *a, **k: [] if p.startswith("/dev/accel") else real_glob(p, *a, **k))
    return monkeypatch


def test_distributed_start_up_is_detected(bare_env):
    """jax.distributed is initialised on TPU VMs and multi-task SLURM steps (auto), with explicit coordinates
    (config or JAX_* variables) and never with initialize=no; a coordinator without the process count/id is an
    error."""
    from streamformer_jax.train import distributed

    calls = []
    bare_env.setattr("jax.distributed.initialize", lambda **kw: calls.append(kw))
    bare_env.setattr("jax.distributed.is_initialized", lambda: False)
    cfg = _distributed_cfg()
    assert not distributed._auto_cluster() and distributed.maybe_initialize(cfg) is False and calls == []
    bare_env.setenv("SLURM_NTASKS", "4")  # the sbatch script itself (no step): not yet
    assert not distributed._auto_cluster()
    bare_env.setenv("SLURM_STEP_ID", "0")  # inside srun with 4 tasks
    assert distributed._auto_cluster()
    assert distributed.maybe_initialize(cfg) is True and calls == [{}]  # jax reads the SLURM environment
    assert distributed.maybe_initialize(_distributed_cfg(initialize="no")) is False and len(calls) == 1
    bare_env.delenv("SLURM_NTASKS")
    bare_env.delenv("SLURM_STEP_ID")
    bare_env.setenv("TPU_WORKER_HOSTNAMES", "w0,w1")
    assert distributed._auto_cluster()
    bare_env.delenv("TPU_WORKER_HOSTNAMES")
    bare_env.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    with pytest.raises(ValueError, match="num_processes and process_id"):
        distributed.maybe_initialize(cfg)
    bare_env.setenv("JAX_NUM_PROCESSES", "2")
    bare_env.setenv("JAX_PROCESS_ID", "1")
    calls.clear()
    assert distributed.maybe_initialize(cfg) is True
    assert calls == [{"coordinator_address": "10.0.0.1:1234", "num_processes": 2, "process_id": 1}]
    calls.clear()  # the config's fields win over the environment
    distributed.maybe_initialize(_distributed_cfg(coordinator_address="h:1", num_processes=8, process_id=3))
    assert calls == [{"coordinator_address": "h:1", "num_processes": 8, "process_id": 3}]


@pytest.mark.slow
def test_readme_main_job(tmp_path):
    """The README's "Quickstart (no downloads)" block as written (only /tmp/sf_tiny moved into tmp_path), on one
    CPU device: six-task tiny pretraining for 20 steps, the export, features from it. About 70 s on 2 cores."""
    readme = (REPO / "README.md").read_text()
    assert "-m streamformer_jax.train --config configs/pretrain_multitask.py:tiny --workdir /tmp/sf_tiny" in readme
    work = tmp_path / "sf_tiny"
    proc = run_readme_block("## Quickstart (no downloads)", "/tmp/sf_tiny", work, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert f"finished: step 20/20 (done); workdir {work}" in proc.stdout
    rows = read_metrics(work)
    assert [r["step"] for r in rows] == list(range(1, 21))
    tasks = {k.split("/", 1)[1] for r in rows for k in r if k.startswith("loss/")}
    assert tasks == {"kinetics", "ssv2", "retrieval", "grounding", "localization", "vis"}  # one micro-batch each
    assert sorted(p.name for p in (work / "checkpoints").iterdir()) == ["10", "20"]
    shapes = re.search(r"'pooler_output': \((\d+), 64\)", proc.stdout)  # the block's last command prints them
    assert shapes and int(shapes.group(1)) > 0, proc.stdout[-2000:]
