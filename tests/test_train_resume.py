"""Checkpoints and resume: exact resume (2N == N + N), SIGTERM, restore onto another mesh, broken checkpoints,
the NaN guard, and the run's metrics.jsonl / TensorBoard output. 8 fake CPU devices (data parallel)."""
import os
import re
import shutil
import signal

import jax
import numpy as np
import pytest

from streamformer_jax.train import loop
from streamformer_jax.train.state_checkpoints import Checkpointer
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
    # lr of each update: linear warm-up over 2 steps to 1e-3, then cosine decay to 0 at step 4 (half-way at 3).
    assert [r["lr"] for r in rows] == pytest.approx([0.0, 5e-4, 1e-3, 5e-4])
    for key in ("steps_per_sec", "clips_per_sec", "tflops_per_device", "mfu"):
        assert rows[-1][key] > 0, key
    last, cfg = rows[-1], runs["cfg"]
    assert last["clips_per_sec"] == pytest.approx(last["steps_per_sec"] * 16)
    # TFLOP/s per device and MFU from the analytic count: 16 clips per step over 8 devices, the config's peak.
    from streamformer_jax.train import flops as flops_lib
    from streamformer_jax.train.task_model import ModelSettings

    clip_flops = flops_lib.train_flops_per_clip(ModelSettings.from_config(cfg).backbone, num_frames=4, image_size=32)
    assert last["tflops_per_device"] == pytest.approx(16 * clip_flops * last["steps_per_sec"] / 8 / 1e12, rel=1e-6)
    assert last["mfu"] == pytest.approx(last["tflops_per_device"] / cfg.peak_tflops_per_device, rel=1e-6)
    events = list((runs["root"] / "full" / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    scalars = _tensorboard_scalars(events[0])
    for key in ("loss", "loss/kinetics", "lr", "grad_norm", "steps_per_sec", "clips_per_sec", "tflops_per_device",
                "mfu"):
        assert key in scalars, (key, sorted(scalars))
    assert [step for step, _ in scalars["loss"]] == [1, 2, 3, 4]
    assert [v for _, v in scalars["loss"]] == pytest.approx([r["loss"] for r in rows], rel=1e-6)
    assert (runs["root"] / "full" / "config.json").is_file()
    steps = sorted(int(p.name) for p in (runs["root"] / "full" / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [2, 4]


def _tensorboard_scalars(path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} from a TensorBoard event file (TFRecord framing, tensorboardX's Event proto)."""
    import struct

    from tensorboardX.proto import event_pb2

    out, data, pos = {}, path.read_bytes(), 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])  # after length + its CRC
        pos += 12 + length + 4  # + the data's CRC
        for value in event.summary.value:
            out.setdefault(value.tag, []).append((int(event.step), float(value.simple_value)))
    return out


def test_progress_bar_with_eta_on_process_0(tmp_path, capsys):
    from streamformer_jax.train.metrics import MetricWriter

    writer = MetricWriter(tmp_path, total_steps=10, start_step=4, progress_bar=True, tensorboard=False)
    for step in (5, 6):
        writer.advance()
        writer.write(step, {"loss": 0.5})
    writer.note("a note")
    writer.close()
    out = capsys.readouterr()
    assert "6/10" in out.err and "loss=0.5000" in out.err  # resumed at 4 of 10, two steps done
    assert re.search(r"6/10 \[\d\d:\d\d<\d\d:\d\d", out.err), out.err  # elapsed<remaining: the ETA
    assert "a note" in out.out  # notes are printed through the bar (tqdm.write) without breaking it
    assert [r["step"] for r in read_metrics(tmp_path)] == [5, 6]


def test_checkpoints_every_n_steps_keep_the_last_k(tmp_path, monkeypatch):
    """every_steps=2, keep=2: steps 2, 4, 6 are saved (asynchronously), 2 is deleted; a forced save (end of run,
    SIGTERM) is kept too; the newest restores with its data-iterator state. orbax never asks JAX's preemption
    service (only the trainer's loop does, see train/distributed.py)."""
    import jax.numpy as jnp
    from jax.experimental import multihost_utils

    asked = []
    monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", lambda step: asked.append(step) or False)
    ck = Checkpointer(tmp_path / "ck", every_steps=2, keep=2)
    saved = [step for step in range(1, 8) if ck.save(step, {"w": jnp.full((3,), float(step))}, {"next_batch": step})]
    assert saved == [2, 4, 6]
    assert ck.save(7, {"w": jnp.full((3,), 7.0)}, {"next_batch": 7}, force=True)
    ck.wait()
    assert ck.all_steps() == [6, 7]
    ck.close()
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["6", "7"]
    ck = Checkpointer(tmp_path / "ck", every_steps=2, keep=2)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    step, state, data = ck.restore_latest({"w": jax.ShapeDtypeStruct((3,), jnp.float32, sharding=sharding)})
    ck.close()
    assert step == 7 and data == {"next_batch": 7}
    np.testing.assert_array_equal(np.asarray(state["w"]), [7.0, 7.0, 7.0])
    assert asked == []


def test_data_dir_reads_converted_task_directories(runs, tmp_path, builtin_dir, jax_cache):  # noqa: F811
    """--config.data_dir=DIR trains on converted data (one sub-directory per task): the built-in dataset's
    directories given that way give the built-in run's losses exactly; a root without task directories is an
    error naming them."""
    cfg = _config(builtin_dir, jax_cache, data_dir=builtin_dir)
    cfg.builtin_dir = ""
    loop.train(cfg, tmp_path / "w", log=lambda s: None)
    assert not (tmp_path / "w" / "builtin_data").exists()
    got, want = read_metrics(tmp_path / "w"), read_metrics(runs["root"] / "full")
    assert [(r["step"], r["loss"]) for r in got] == [(r["step"], r["loss"]) for r in want]
    with pytest.raises(FileNotFoundError, match="no task sub-directories"):
        loop.data_config(_config(builtin_dir, jax_cache, data_dir=str(tmp_path / "w")), tmp_path / "w")


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


def test_epoch_length_counts_only_the_tasks_of_the_run(tmp_path, builtin_dir, jax_cache):  # noqa: F811
    """One task picked from the built-in dataset (which always holds all six): an epoch is that task's clips."""
    import json
    import pathlib

    cfg = _config(builtin_dir, jax_cache, total_steps=-1, epochs=2.0, accum_steps=1)
    setup = _setup(cfg, tmp_path / "epochs")
    try:
        n = json.loads((pathlib.Path(builtin_dir) / "kinetics" / "metadata.json").read_text())["num_examples"]
        assert len(setup.meta) == 6  # the directory has every task; only kinetics is in the run
        assert setup.total_steps == 2 * max(1, n // cfg.micro_batch_size)
    finally:
        setup.ckpt.close()
