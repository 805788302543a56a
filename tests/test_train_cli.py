"""The command line: locked configs (a misspelt override is an error), the configs' recipe values, and the tiny
config run as two local JAX processes (jax.distributed over gloo), then resumed with a larger total_steps."""
import subprocess
import sys

import pytest

from test_train_support import (REPO, builtin_dir, free_port, jax_cache, load_config, read_metrics,  # noqa: F401
                                run_cli, subprocess_env, tiny_config)


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
    assert c.epochs == 20 and c.total_steps == -1
    for name, task in (("finetune_k400", "kinetics"), ("finetune_ssv2", "ssv2")):
        f = load_config(name)
        assert tuple(f.data.task_order) == (task,) and dict(f.data.task_weights) == {task: 1}
        assert f.epochs == 30 and f.optim.warmup_epochs == 5 and f.optim.lr == pytest.approx(2e-4)
    tiny = load_config("pretrain_multitask", "tiny")
    assert tiny.model.preset == "tiny" and tiny.data.image_size == 32 and tiny.accum_steps == 6


def _two_processes(workdir, builtin, cache, steps):
    port = free_port()
    args = ["--config", "configs/pretrain_multitask.py:tiny", "--workdir", str(workdir),
            f"--config.total_steps={steps}", f"--config.builtin_dir={builtin}",
            f"--config.compilation_cache_dir={cache}", "--config.progress_bar=False",
            "--config.accum_steps=2", "--config.checkpoint.every_steps=2"]
    args += ["--config.tasks=kinetics", "--config.model.overrides.num_layers=1"]
    procs = []
    for i in range(2):
        env = subprocess_env(2, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=2, JAX_PROCESS_ID=i)
        procs.append(subprocess.Popen([sys.executable, "-m", "streamformer_jax.train", *args], env=env, cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=300)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("two-process training timed out")
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    return outs


def test_tiny_config_on_two_processes_then_resume(tmp_path, builtin_dir, jax_cache):  # noqa: F811
    from streamformer_jax.train import loop

    work = tmp_path / "run"
    outs = _two_processes(work, builtin_dir, jax_cache, steps=4)
    assert "finished: step 4/4" in outs[0] and "finished" not in outs[1]  # process 0 reports
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
