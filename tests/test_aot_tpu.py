"""The real training and streaming steps compiled by XLA's TPU compiler for a v5e:2x2 slice, on this CPU.

Needs libtpu (the [tpu] extra); skipped without it, except with STREAMFORMER_REQUIRE=libtpu (CI runs this file
in its own [tpu] environment that way). One tiny compile is a few seconds to half a minute on two cores.
"""
import json
import subprocess
import sys

import pytest

from data_helpers import require_module
from test_train_support import REPO, load_config, set_overrides

require_module("libtpu")

from streamformer_jax.models.config import get_preset  # noqa: E402
from streamformer_jax.train import aot, flops  # noqa: E402

TOPOLOGY = "v5e:2x2"
# XLA's FLOP count of the tiny kinetics micro-step against the analytic backbone count (3 x forward, heads left
# out): measured 0.999 (v5e:2x2, libtpu 0.0.42). The heads and the loss are a few per cent of this tiny model.
FLOPS_TOLERANCE = 0.05


def _tiny(**overrides):
    config = load_config("pretrain_multitask", "tiny")
    config.tasks = "kinetics"
    config.accum_steps = 1
    return set_overrides(config, overrides)


@pytest.fixture(scope="module")
def tiny_report():
    return aot.compile_training(_tiny(), TOPOLOGY, log=lambda s: None)


def test_tiny_training_steps_compile_for_v5e_and_fit(tiny_report):
    r = tiny_report
    assert (r["topology"], r["num_devices"], r["mesh"]) == (TOPOLOGY, 4, {"data": 4, "fsdp": 1, "tensor": 1})
    assert "v5 lite" in r["device_kind"].lower()
    assert set(r["steps"]) == {"micro_kinetics", "apply"}
    for name, step in r["steps"].items():
        assert "error" not in step, (name, step.get("error"))
        assert step["fits"] is True and 0 < step["hbm_bytes"] < step["hbm_capacity"]
        assert step["compile_s"] > 0
    micro = r["steps"]["micro_kinetics"]
    # Everything resident is counted: the micro-step's arguments hold the whole train state (incl. the Adam
    # moments it does not read) and the accumulator.
    assert micro["argument_bytes"] >= r["resident"]["params"] + r["resident"]["frozen"] + r["resident"]["opt"] \
        + r["resident"]["accumulator"]
    # data parallelism: one all-reduce family of the gradients across the 4 chips
    assert micro["collectives"] and sum(c["wire_bytes"] for c in micro["collectives"].values()) > 0
    est = r["estimate"]
    assert est["step_s"] > 0 and 0 < est["mfu"] < 1 and est["bound"] in ("compute", "memory", "collective")


def test_tiny_flops_agree_with_the_analytic_count(tiny_report):
    micro = tiny_report["steps"]["micro_kinetics"]
    config = _tiny()
    bb = get_preset(config.model.preset, dtype=config.model.dtype, **dict(config.model.overrides))
    analytic = flops.train_flops_per_clip(bb) * config.micro_batch_size / 4
    assert micro["analytic_flops"] == pytest.approx(analytic)
    assert micro["flops"] == pytest.approx(analytic, rel=FLOPS_TOLERANCE)


def test_fit_is_judged_against_the_hbm_the_compiler_allows():
    # what XLA's TPU compiler lets one program use on a v5e (of its 16 GiB), from its own out-of-memory message
    assert aot.compiler_hbm_limit(aot.topology_devices(TOPOLOGY)[0], 1) == int(15.75 * 2**30)


def test_an_oversized_batch_is_reported_as_not_fitting():
    # 16 frames of 224² and 4096 clips per chip: the activations need far more than a v5e's 16 GB
    config = _tiny(micro_batch_size=16384, **{"model.overrides.image_size": 224, "model.overrides.num_frames": 16})
    r = aot.compile_training(config, TOPOLOGY, log=lambda s: None)
    micro = r["steps"]["micro_kinetics"]
    assert micro["fits"] is False and r["fits"] is False
    assert "memory" in micro["error"].lower() or "hbm" in micro["error"].lower()


def test_streaming_step_for_a_pool_of_streams():
    config = _tiny()
    r = aot.compile_stream(config, TOPOLOGY, 8, window=4)
    assert "error" not in r, r.get("error")
    assert r["fits"] is True and r["streams"] == 32
    bb = get_preset(config.model.preset, dtype=config.model.dtype, **dict(config.model.overrides))
    tokens = (bb.image_size // bb.patch_size) ** 2
    # keys and values: layers x window x tokens x hidden, in the compute dtype (float32 for tiny), per stream
    assert r["cache_bytes_per_stream"] == 2 * bb.num_layers * 4 * tokens * bb.hidden_size * 4
    assert r["hbm_bytes"] >= r["params_bytes"] + 8 * r["cache_bytes_per_stream"]


def test_cli_writes_the_report_and_rejects_an_indivisible_batch_in_one_line(tmp_path):
    cfg = str(REPO / "configs" / "pretrain_multitask.py") + ":tiny"
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, "-m", "streamformer_jax.train.aot", "--config", cfg, "--topology",
                        TOPOLOGY, "--config.micro_batch_size=6", "--out", str(out)],
                       capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 2 and not out.exists()
    assert r.stderr.strip().splitlines()[-1] == \
        "error: micro_batch_size 6 is not divisible by the data x fsdp mesh axes (4)"
    r = subprocess.run([sys.executable, "-m", "streamformer_jax.train.aot", "--config", cfg, "--topology",
                        TOPOLOGY, "--tasks", "kinetics", "--out", str(out), "--quiet"],
                       capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(out.read_text())
    for key in ("topology", "device_kind", "num_devices", "mesh", "steps", "estimate"):
        assert key in report
    for key in ("compile_s", "argument_bytes", "output_bytes", "temp_bytes", "hbm_bytes", "fits", "flops",
                "analytic_flops", "bytes_accessed", "collectives"):
        assert key in report["steps"]["micro_kinetics"], key
    assert {"step_s", "mfu", "bound"} <= set(report["estimate"])


def test_a_scanned_model_is_flagged_as_counting_its_loop_body_once():
    """XLA's cost analysis counts a while loop's body once: the report says so for a scanned model, whose
    memory, fit and collectives are still those of the whole model."""
    unrolled = aot.compile_training(_tiny(), TOPOLOGY, include_apply=False, log=lambda s: None)
    scanned = aot.compile_training(_tiny(**{"model.scan_layers": True}), TOPOLOGY, include_apply=False,
                                   log=lambda s: None)
    u, s = unrolled["steps"]["micro_kinetics"], scanned["steps"]["micro_kinetics"]
    assert (u["costs_counted"], u["loop_trips"]) == ("xla", 1)
    assert s["costs_counted"] == "xla, loop bodies once" and s["loop_trips"] == 2  # the tiny model's 2 blocks
    assert s["flops"] < 0.9 * u["flops"]
    assert s["fits"] is True
