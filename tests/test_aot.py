"""Ahead-of-time compilation support that runs without libtpu: the shape-only model and batch match the real
ones the trainer gets, the HLO collective counter, topology names, the mesh over given devices, and the
one-line errors. The TPU compiles themselves are in tests/test_aot_tpu.py (CI runs it in a [tpu] environment)."""
import dataclasses
import importlib.util
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from data_pipelines.pipeline import label_tables, mixture
from streamformer_jax.train import aot, compiled_stats, loop, tpu_chips
from streamformer_jax.train.model_kinds import build_task_model
from streamformer_jax.train.multitask_kind import random_tower_config
from streamformer_jax.train.step import device_batch
from streamformer_jax.train.task_model import ModelSettings
from test_train_support import REPO, builtin_dir, jax_cache, load_config, tiny_config  # noqa: F401

ALL_TASKS = ("kinetics", "ssv2", "retrieval", "grounding", "localization", "vis")


@pytest.fixture(scope="module")
def real_run(builtin_dir, jax_cache, tmp_path_factory):  # noqa: F811
    """The tiny config on all six tasks: `train`'s real Setup (model, trainer, mesh) and one real device batch per
    task from its input pipeline."""
    from data_pipelines.pipeline import loader

    cfg = tiny_config(builtin_dir, jax_cache, tasks=ALL_TASKS)
    setup = loop.Setup(cfg, tmp_path_factory.mktemp("w"), log=lambda s: None)
    it = loader.make_train_iterator(setup.data, mesh=setup.mesh)
    batches = {}
    for _ in range(len(ALL_TASKS)):
        b = next(it)
        b = {**b, **loader.to_global_batch(setup.tm.prepare_batch(b), setup.mesh, setup.data.data_axes)}
        batches[b["task"]] = device_batch(b)
    it.close()
    setup.ckpt.close()
    return cfg, setup, batches


def test_abstract_batch_is_the_batch_the_trainer_gets(real_run):
    cfg, setup, batches = real_run
    assert set(batches) == set(ALL_TASKS)
    for task, real in batches.items():
        fake = aot.abstract_batch(cfg, task, setup.mesh, setup.meta[task])
        assert sorted(fake) == sorted(real), task
        for k in real:
            assert (fake[k].shape, fake[k].dtype) == (real[k].shape, real[k].dtype), (task, k)
            assert fake[k].sharding.is_equivalent_to(real[k].sharding, real[k].ndim), (task, k)


def test_shape_only_setup_has_the_real_state_masks_and_label_tables(real_run):
    cfg, real, _ = real_run
    sets = {t: label_tables.label_sets(m) for t, m in real.meta.items()}
    counts = {t: {ds: len(n) for ds, n in s.items()} if isinstance(s, dict) else len(s) for t, s in sets.items()}
    fake = aot.CompileSetup(cfg, jax.devices(), counts)
    assert dict(fake.mesh.shape) == dict(real.mesh.shape) and fake.tasks == list(ALL_TASKS)
    assert fake.accum_steps == real.accum_steps
    assert fake.model.scan_layers == real.model.scan_layers is False
    rt, ft = real.trainer, fake.trainer
    assert (rt.template.names, rt.trainable_names, rt.frozen_names) == \
        (ft.template.names, ft.trainable_names, ft.frozen_names)
    assert all(real.tm.decay(n) == fake.tm.decay(n) for n in rt.template.names)
    # the whole train state: shapes, dtypes and shardings (params, frozen text tower, optimizer moments)
    r_state, f_state = rt.abstract_state(), ft.abstract_state()
    assert jax.tree_util.tree_structure(r_state) == jax.tree_util.tree_structure(f_state)
    for r, f in zip(jax.tree_util.tree_leaves(r_state), jax.tree_util.tree_leaves(f_state)):
        assert (r.shape, r.dtype) == (f.shape, f.dtype)
        assert r.sharding.is_equivalent_to(f.sharding, len(r.shape))
    assert {k: (np.shape(v), np.asarray(v).dtype) for k, v in real.tm.text.items()} == \
        {k: (v.shape, v.dtype) for k, v in fake.tm.text.items()}
    # nothing was materialised
    assert all(isinstance(v, jax.ShapeDtypeStruct) for v in ft.template.shapes.values())
    assert all(isinstance(v.get_value(), jax.ShapeDtypeStruct)
               for _, v in nnx.to_flat_state(nnx.state(fake.tm.model)))


def test_the_default_text_tower_is_siglip_base_for_vit_b():
    t = aot.text_tower_config(ModelSettings.from_config(load_config("pretrain_multitask")))
    assert (t.num_hidden_layers, t.hidden_size, t.vocab_size, t.max_position_embeddings) == (12, 768, 32000, 64)
    tiny = aot.text_tower_config(ModelSettings.from_config(load_config("pretrain_multitask", "tiny")))
    assert tiny.num_hidden_layers == 1 and tiny.output_size == 64  # the tiny variant's random stand-in tower


def test_setup_s_mesh_over_given_devices():
    cfg = load_config("pretrain_multitask", "tiny,mesh=fsdp")
    cfg.micro_batch_size = 8
    setup = aot.CompileSetup(cfg, jax.devices()[:4])
    assert dict(setup.mesh.shape) == {"data": 1, "fsdp": 4, "tensor": 1}
    assert list(setup.mesh.devices.flat) == jax.devices()[:4]
    cfg.mesh.tensor = 3
    with pytest.raises(aot.AotError, match="4 devices cannot be split"):
        aot.CompileSetup(cfg, jax.devices()[:4])
    cfg.mesh.tensor, cfg.micro_batch_size = 1, 6
    with pytest.raises(aot.AotError, match="micro_batch_size 6 is not divisible"):
        aot.CompileSetup(cfg, jax.devices()[:4])


def test_collectives_are_counted_with_their_bytes_and_loop_trip_counts():
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()).reshape(4, 2), ("a", "b"))
    x = jax.ShapeDtypeStruct((64, 256), jnp.float32, sharding=NamedSharding(mesh, PartitionSpec("a", "b")))

    def f(x):  # sum over the sharded rows -> an all-reduce over `a` of a [32, 128]-per-device... partial sum
        return jax.lax.with_sharding_constraint(x.sum(0), NamedSharding(mesh, PartitionSpec()))

    stats = compiled_stats.collectives(jax.jit(f).lower(x).compile().as_text(), 8)
    total = sum(v["count"] for v in stats.values())
    assert total >= 1
    assert "all-reduce" in stats or "all-gather" in stats

    def g(x):  # the same reduction in a 5-step fori_loop: counted 5 times
        def body(i, acc):
            y = jax.lax.with_sharding_constraint(x * (i + 1.0), NamedSharding(mesh, PartitionSpec("a", "b")))
            return acc + jax.lax.with_sharding_constraint(y.sum(0), NamedSharding(mesh, PartitionSpec()))
        return jax.lax.fori_loop(0, 5, body, jnp.zeros((256,), jnp.float32))

    looped = compiled_stats.collectives(jax.jit(g).lower(x).compile().as_text(), 8)
    assert sum(v["count"] for v in looped.values()) == 5 * total


def test_collective_parser_on_a_known_hlo_snippet():
    hlo = """HloModule m

%body (p: (s32[], f32[4,8])) -> (s32[], f32[4,8]) {
  %p = (s32[], f32[4,8]) parameter(0)
  %x = f32[4,8]{1,0} get-tuple-element(%p), index=1
  %ag = f32[4,32]{1,0} all-gather(%x), channel_id=1, replica_groups=[2,4]<=[8], dimensions={1}
  ROOT %t = (s32[], f32[4,8]) tuple(%i, %x)
}

%cond (p: (s32[], f32[4,8])) -> pred[] {
  %p = (s32[], f32[4,8]) parameter(0)
  ROOT %c = pred[] constant(true)
}

ENTRY %main (a: f32[4,8]) -> f32[4,8] {
  %a = f32[4,8]{1,0} parameter(0)
  %ar = bf16[1024]{0} all-reduce(%b), channel_id=2, replica_groups={{0,1},{2,3},{4,5},{6,7}}, to_apply=%add
  %cp = (f32[4,8]{1,0}, f32[4,8]{1,0}, u32[], u32[]) collective-permute-start(%a), channel_id=3, source_target_pairs={{0,1}}
  %w = (s32[], f32[4,8]) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"12"}}
  ROOT %r = f32[4,8]{1,0} copy(%a)
}
"""
    stats = compiled_stats.collectives(hlo, 8)
    assert stats["all-gather"] == {"count": 12, "bytes": 12 * 4 * 32 * 4, "wire_bytes": 12 * 4 * 32 * 4 * 3 // 4}
    assert stats["all-reduce"] == {"count": 1, "bytes": 2048, "wire_bytes": 2048}  # 2 (g-1)/g with g = 2
    assert stats["collective-permute"] == {"count": 1, "bytes": 128, "wire_bytes": 128}


def test_topology_names():
    assert tpu_chips.parse_topology("v5e:16x16") == ("v5e", (16, 16))
    assert tpu_chips.parse_topology("v5litepod-2x2") == ("v5e", (2, 2))
    assert tpu_chips.parse_topology("v5p:4x4x4") == ("v5p", (4, 4, 4))
    for bad, why in [("v5e:4x4x4", "2-D"), ("v4:4x4", "3-D"), ("h100:8", "expected GENERATION")]:
        with pytest.raises(tpu_chips.TopologyError, match=why):
            tpu_chips.parse_topology(bad)
    assert tpu_chips.chip_for("v5e:2x2").hbm_bytes == 16 * 10**9


def _aot_cli_on_tiny(topology: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamformer_jax.train.aot", "--config",
                           str(REPO / "configs" / "pretrain_multitask.py") + ":tiny", "--topology", topology],
                          capture_output=True, text=True, cwd=REPO, timeout=300)


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is not None, reason="libtpu is installed here")
def test_cli_says_in_one_line_that_libtpu_is_missing():
    r = _aot_cli_on_tiny("v5e:2x2")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: libtpu is not installed")


def test_cli_rejects_a_bad_topology_in_one_line():
    r = _aot_cli_on_tiny("v5e:2x2x2")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: topology 'v5e:2x2x2'")


def test_the_compiler_s_hbm_limit_is_read_from_its_out_of_memory_message():
    assert aot._capacity_from("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
                              "temporaries (62.53G) exceeds available HBM (15.75G).") == int(15.75 * 2**30)
    assert aot._capacity_from("Ran out of memory in memory space hbm. Used 17.32G of 15.75G hbm.") == \
        int(15.75 * 2**30)
    assert aot._capacity_from("INTERNAL: something else") is None


@pytest.mark.parametrize("variant,chips,remat", [("v5e_256", 256, "full"), ("v5p_128", 64, "none"),
                                                 ("v4_128", 64, "names:temporal_qkv,temporal_attended,spatial_qkv,"
                                                                "spatial_attended,spatial_residual")])
def test_pod_variants(variant, chips, remat):
    cfg = load_config("pretrain_multitask", variant)
    assert (cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, cfg.mesh.rules) == (-1, 1, 1, "dp")
    assert cfg.model.remat_policy == remat and cfg.model.scan_layers is True
    assert cfg.micro_batch_size == 16 * chips and cfg.accum_steps == 7
    assert cfg.optim.lr == pytest.approx(2e-5 * 16 * chips * 7 / 256)  # the original's linear rule


def test_a_parameter_the_mesh_does_not_divide_is_one_clear_error():
    cfg = load_config("pretrain_multitask", "tiny,mesh=fsdp")  # tiny: 64 wide; fsdp over 8 devices is fine
    cfg.model.overrides.hidden_size, cfg.model.overrides.num_heads = 60, 4
    cfg.micro_batch_size = 8
    with pytest.raises(aot.AotError, match=r"does not divide over the mesh .*fsdp.: 8"):
        aot.CompileSetup(cfg, jax.devices())


@pytest.mark.parametrize("start", [8, 64])
def test_the_stream_search_finds_the_largest_pool_in_few_compiles(monkeypatch, start):
    """Per-chip memory affine in the pool size (what the compiled stream step shows): two compiles give the line,
    two more confirm its prediction. The fake compiler refuses sizes over the limit as the TPU compiler does."""
    capacity, fixed, per_stream = int(15.75 * 2**30), 600_000_000, 118_000_000
    compiled = []

    def fake_compile(config, topology, s, *, window):
        compiled.append(s)
        need = fixed + per_stream * s + (s % 7) * 1000  # a little noise around the line
        if need > capacity:
            return {"fits": False, "error": f"RESOURCE_EXHAUSTED: Used {need / 2**30:.2f}G of 15.75G hbm.",
                    "hbm_capacity": capacity, "compile_s": 1.0}
        return {"fits": True, "hbm_bytes": need, "hbm_capacity": capacity, "compile_s": 1.0,
                "flops": 1.0, "flops_ratio": 1.0, "collectives": {}}

    monkeypatch.setattr(aot, "compile_stream", fake_compile)
    r = aot.search_streams(None, "v5e:2x2", start=start, log=lambda s: None)
    truth = max(s for s in range(1, 1000) if fixed + per_stream * s + (s % 7) * 1000 <= capacity)
    assert r["max_streams_per_chip"] == truth and r["resolution"] == 1
    assert len(compiled) <= 6, compiled


def test_accum_steps_zero_is_derived_from_the_task_cycle():
    """accum_steps=0: one optimizer step = one cycle of the original sampler over the tasks' sample counts (or
    of explicit task weights); without either the tool says what to give."""
    cfg = load_config("pretrain_multitask")
    cfg.accum_steps, cfg.micro_batch_size = 0, 8
    with pytest.raises(aot.AotError, match="accum_steps=0 derives the optimizer step"):
        aot.CompileSetup(cfg, jax.devices())
    # kinetics has twice the (balanced) batches of the smallest task: it appears twice in the cycle, as in the
    # original's released mix (7 micro-batches for six tasks)
    samples = {"kinetics": 240000, "ssv2": 120000, "retrieval": 200000, "grounding": 150000,
               "localization": 130000, "vis": 125000}
    setup = aot.CompileSetup(cfg, jax.devices(), samples=samples)
    plan = mixture.original_plan(samples, 8, tuple(setup.data.task_order), 2.0)
    assert setup.accum_steps == len(plan.cycle) == 7 and plan.cycle.count("kinetics") == 2
    cfg.accum_steps = 5  # not a whole number of cycles: train's own error
    with pytest.raises(aot.AotError, match="not a whole number of the data's task cycle of 7"):
        aot.CompileSetup(cfg, jax.devices(), samples=samples)


def test_the_step_estimate_follows_the_task_cycle():
    est = lambda s: {"compute_s": s / 2, "memory_s": s, "collective_s": 0.0, "step_s": s}  # noqa: E731
    steps = {"micro_kinetics": {"estimate": est(1.0)}, "micro_vis": {"estimate": est(3.0)},
             "apply": {"estimate": est(0.5)}}
    chip = tpu_chips.chip_for("v5e:2x2")
    cycle = ("kinetics", "kinetics", "ssv2", "vis")  # ssv2 not compiled: the mean compiled micro-step (2.0)
    r = aot._combine(steps, ["kinetics", "vis"], cycle, 8, 1e12, chip, 64)
    assert r["step_s"] == pytest.approx(2 * (1 + 1 + 2 + 3) + 0.5) and r["bound"] == "memory"
    assert "ssv2" in r["note"]
    assert aot._combine(steps, ["kinetics", "vis"], None, 3, 1e12, chip, 64)["step_s"] == pytest.approx(6.5)


def test_with_a_data_dir_the_label_tables_and_cycle_are_the_data_s(builtin_dir):  # noqa: F811
    """--config.data_dir: train's own data phase (metadata.json and the mixture plan; no record decoded)."""
    cfg = load_config("pretrain_multitask", "tiny")
    cfg.data_dir, cfg.accum_steps = builtin_dir, 0
    setup = aot.CompileSetup(cfg, jax.devices())
    meta = loop.read_metadata({t: pathlib.Path(builtin_dir) / t for t in ALL_TASKS})
    assert setup.meta == meta and setup.tasks == list(ALL_TASKS)
    assert setup.accum_steps == len(setup.plan.cycle) >= len(ALL_TASKS)
    for task in ALL_TASKS:
        sets = label_tables.label_sets(meta[task])
        if isinstance(sets, dict):  # per-dataset tables: [K, C, D] + valid, and the batch carries dataset_id
            assert setup.tm.text[task].shape[:2] == (len(sets), max(len(n) for n in sets.values()))
            assert "dataset_id" in aot.abstract_batch(cfg, task, setup.mesh, setup.meta[task])


def test_shape_only_per_dataset_label_tables_match_the_real_ones():
    """{dataset: names} label sets (the original's localization / VIS): the real builder's padded [K, C, D] table
    and validity against the shape-only ones."""
    settings = ModelSettings.from_config(load_config("pretrain_multitask", "tiny"))
    names = {"kinetics": ["a", "b", "c"],
             "vis": {"COCOPseudoVIS": ["p", "q"], "LVVIS": ["", "x", "y", "z"], "YoutubeVIS": ["", "u"]}}
    real = build_task_model(settings, names)
    fake = build_task_model(dataclasses.replace(settings, abstract_text=random_tower_config(settings)), names)
    assert {k: (np.shape(v), np.asarray(v).dtype) for k, v in real.text.items()} == \
        {k: (v.shape, v.dtype) for k, v in fake.text.items()}
    assert fake.text["vis"].shape[:2] == (3, 4) and fake.text["vis_valid"].shape == (3, 4)
