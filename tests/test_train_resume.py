"""Checkpoints and resume: exact resume (2N == N + N), SIGTERM, restore onto another mesh, broken checkpoints,
the NaN guard, and the run's metrics.jsonl / TensorBoard output. 8 fake CPU devices (data parallel)."""
import os
import shutil
import signal

import jax
import numpy as np
import pytest

from streamformer_jax.train import loop
from streamformer_jax.train.checkpointing import Checkpointer
from test_train_support import builtin_dir, jax_cache, read_metrics, tiny_config  # noqa: F401

def _config(builtin_dir, jax_cache, **kw):
    """One task (one compiled micro-step), two micro-batches per optimizer step (gradient accumulation)."""
    kw = {"total_steps": 4, "checkpoint.every_steps": 2, "checkpoint.keep": 3, "accum_steps": 2, **kw}
    return tiny_config(builtin_dir, jax_cache, tasks=("kinetics",), **kw)


def _host(tree):
    return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, builtin_dir, jax_cache):  # noqa: F811
    """A 4-step run, and a run stopped at step 2 (as if preempted) then resumed to step 4."""
    root = tmp_path_factory.mktemp("resume")
    cfg = _config(builtin_dir, jax_cache)
    full = loop.train(cfg, root / "full", log=lambda s: None)
    first = loop.train(cfg, root / "split", stop_at=2, log=lambda s: None)
    notes = []
    second = loop.train(cfg, root / "split", log=notes.append)
    return dict(root=root, cfg=cfg, full=full, first=first, second=second, notes=notes)


def test_resume_is_exact(runs):
    assert runs["first"]["stopped"] == "preempted" and runs["first"]["step"] == 2
    assert any("resumed from" in n and "(step 2)" in n for n in runs["notes"]), runs["notes"]
    full = read_metrics(runs["root"] / "full")
    split = read_metrics(runs["root"] / "split")
    assert [r["step"] for r in full] == [1, 2, 3, 4] and [r["step"] for r in split] == [1, 2, 3, 4]
    # Identical losses, per-task losses and gradient norms, bit for bit.
    for a, b in zip(full, split):
        for key in ("loss", "loss/kinetics", "kinetics/accuracy", "grad_norm", "lr"):
            assert a[key] == b[key], (a["step"], key, a[key], b[key])
    assert len({r["loss"] for r in full}) == 4  # it trains: the loss changes every step
    pa, pb = _host(runs["full"]["state"]), _host(runs["second"]["state"])
    assert int(pa["step"]) == int(pb["step"]) == 4
    leaves_a, leaves_b = jax.tree_util.tree_leaves(pa), jax.tree_util.tree_leaves(pb)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(x, y)  # parameters and optimizer state, bitwise
    # and the parameters did move
    init = _host(runs["second"]["trainer"].init_state(runs["cfg"].seed))["params"]
    moved = [not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(init),
                                                      jax.tree_util.tree_leaves(pa["params"]))]
    assert sum(moved) > len(moved) // 2


def test_metrics_jsonl_and_tensorboard(runs):
    rows = read_metrics(runs["root"] / "full")
    for row in rows:
        assert isinstance(row["step"], int) and np.isfinite(row["loss"])
        for key in ("lr", "grad_norm", "param_norm", "loss/kinetics", "kinetics/accuracy"):
            assert key in row, key
    # lr of each update: linear warm-up over 2 steps to 1e-3, then cosine decay to 0 at step 4.
    assert [r["lr"] for r in rows][:3] == pytest.approx([0.0, 5e-4, 1e-3])
    assert 0 < rows[3]["lr"] < 1e-3
    for key in ("steps_per_sec", "clips_per_sec", "tflops_per_device", "mfu"):
        assert rows[-1][key] > 0, key
    assert rows[-1]["clips_per_sec"] == pytest.approx(rows[-1]["steps_per_sec"] * 16)
    events = list((runs["root"] / "full" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert (runs["root"] / "full" / "config.json").is_file()
    steps = sorted(int(p.name) for p in (runs["root"] / "full" / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [2, 4]


def _setup(cfg, workdir):
    return loop.Setup(cfg, workdir, log=lambda s: None)


def test_restore_onto_a_different_mesh(runs, builtin_dir, jax_cache):  # noqa: F811
    cfg = _config(builtin_dir, jax_cache, **{"mesh.data": 2, "mesh.fsdp": 4, "mesh.rules": "fsdp"})
    setup = _setup(cfg, runs["root"] / "split")
    step, state, data_state = setup.restore_or_init()
    setup.ckpt.close()
    assert step == 4 and data_state == {"next_batch": 8}
    kernel = state["params"]["backbone"]["layers"]["0"]["mlp"]["fc1"]["kernel"]
    assert kernel.sharding.mesh.shape == {"data": 2, "fsdp": 4, "tensor": 1}
    assert kernel.sharding.spec[0] == "fsdp"  # embed dimension split over fsdp on the new mesh
    assert len({str(s.index) for s in kernel.addressable_shards}) == 4
    ref = _host(runs["second"]["state"])
    for x, y in zip(jax.tree_util.tree_leaves(ref), jax.tree_util.tree_leaves(_host(state))):
        np.testing.assert_array_equal(x, y)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax closing after a failed read
def test_broken_checkpoints_are_skipped_with_a_message(runs, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(runs["root"] / "full", work)
    ckdir = work / "checkpoints"
    assert sorted(int(p.name) for p in ckdir.iterdir() if p.name.isdigit()) == [2, 4]
    # Corrupt step 4: truncate every array data file of its state.
    data_files = [p for p in (ckdir / "4" / "state").rglob("*") if p.is_file() and "d" in p.parent.name]
    assert data_files
    for p in data_files:
        p.write_bytes(b"garbage")
    notes = []
    cfg = runs["cfg"]
    setup = loop.Setup(cfg, work, log=notes.append)
    step, state, _ = setup.restore_or_init()
    setup.ckpt.close()
    assert step == 2, notes
    assert any("checkpoint" in n and "/4" in n and "incomplete or corrupt" in n for n in notes), notes
    assert (work / "checkpoints_corrupt" / "4").is_dir() and not (ckdir / "4").exists()
    # Restored values are step 2's, not garbage.
    assert int(np.asarray(state["step"])) == 2
    # An incomplete checkpoint (an item missing) is skipped too.
    shutil.rmtree(ckdir / "2" / "data")
    notes.clear()
    ck = Checkpointer(ckdir, every_steps=2, keep=3, report=notes.append)
    assert ck.restore_latest(setup.trainer.abstract_state()) is None
    ck.close()
    assert any("item 'data' is missing" in n for n in notes), notes


def test_sigterm_saves_a_checkpoint_and_stops(runs, tmp_path, builtin_dir, jax_cache):  # noqa: F811
    cfg = _config(builtin_dir, jax_cache, **{"checkpoint.every_steps": 100})

    def hook(step, batch):
        if step == 1:  # during the second optimizer step
            os.kill(os.getpid(), signal.SIGTERM)
        return batch

    summary = loop.train(cfg, tmp_path / "w", batch_hook=hook, log=lambda s: None)
    assert summary["stopped"] == "preempted" and summary["step"] == 2
    assert sorted(p.name for p in (tmp_path / "w" / "checkpoints").iterdir() if p.name.isdigit()) == ["2"]
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, signal.default_int_handler) or callable(
        signal.getsignal(signal.SIGTERM))


def test_nan_guard_stops_and_keeps_the_last_good_checkpoint(runs, tmp_path, builtin_dir, jax_cache):  # noqa: F811
    import jax.numpy as jnp

    cfg = _config(builtin_dir, jax_cache)  # 4 steps, checkpoints every 2
    seen = {}

    def poison(step, state):
        if step == 2:  # the third optimizer step runs with a NaN logit scale
            head = state["params"]["heads"]["kinetics"]
            seen["before"] = np.asarray(state["params"]["backbone"]["post_layernorm"]["scale"])
            head["logit_scale"] = head["logit_scale"] * jnp.nan
        return state

    with pytest.raises(loop.NonFiniteLossError, match=r"step 3: loss nan .* not finite.*checkpoints/2"):
        loop.train(cfg, tmp_path / "w", state_hook=poison, log=lambda s: None)
    steps = sorted(int(p.name) for p in (tmp_path / "w" / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [2]
    rows = read_metrics(tmp_path / "w")
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
