"""The jitted steps: sharding presets agree on 8 fake devices, analytic FLOPs match XLA's cost analysis, remat
recomputes without changing gradients, frozen parameters get no optimizer state, the NaN guard drops updates."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from streamformer_jax import sharding as sharding_lib
from streamformer_jax.models import config as model_configs
from streamformer_jax.models.streamformer import init_model
from streamformer_jax.train import flops as flops_lib
from streamformer_jax.train import loop
from streamformer_jax.models.streamformer import remat_policy
from streamformer_jax.train.model_kinds import build_task_model
from streamformer_jax.train.step import Trainer, device_batch
from streamformer_jax.train.task_model import ModelSettings, apply_remat
from test_train_support import builtin_dir, jax_cache, tiny_config  # noqa: F401


@pytest.fixture(scope="module")
def parts(builtin_dir, jax_cache, tmp_path_factory):  # noqa: F811
    """The tests' tiny multitask model (one layer, kinetics head) and one host batch of 8 clips."""
    from data_pipelines.pipeline import loader

    cfg = tiny_config(builtin_dir, jax_cache, tasks=("kinetics",))
    loop.enable_compilation_cache(jax_cache)
    data = loop.data_config(cfg, tmp_path_factory.mktemp("w"))
    meta = loop.read_metadata(loop.task_directories(data))
    tm = build_task_model(ModelSettings.from_config(cfg), {t: m["class_names"] for t, m in meta.items()})
    it = loader.make_train_iterator(data)
    batch = next(it)
    it.close()
    assert batch["task"] == "kinetics" and batch["video"].shape[0] == 8
    return cfg, tm, batch


def _grads_on(cfg, tm, host_batch, rules, shape):
    from data_pipelines.pipeline import loader

    mesh = sharding_lib.make_mesh(*shape)
    cfg = cfg.copy_and_resolve_references()
    cfg.mesh.rules = rules
    trainer = Trainer(tm, cfg.optim, 10, mesh, rules=cfg.mesh.rules)
    state = trainer.init_state(0)
    acc = trainer.init_accumulator()
    batch = loader.to_global_batch({k: v for k, v in host_batch.items() if k != "task"}, mesh, ("data", "fsdp"))
    text = sharding_lib.replicate(tm.text, mesh)
    acc, metrics = trainer.micro_step(state, acc, device_batch(batch), text, "kinetics")
    return state, float(metrics["loss"]), jax.device_get(acc["grads"])


def test_sharding_presets_give_the_same_loss_and_gradients(parts):
    cfg, tm, batch = parts
    assert jax.device_count() == 8
    results = {}
    for rules, shape in [("dp", (8, 1, 1)), ("fsdp", (2, 4, 1)), ("fsdp_tp", (2, 2, 2))]:
        state, loss, grads = _grads_on(cfg, tm, batch, rules, shape)
        qkv = state["params"]["backbone"]["layers"]["0"]["temporal_attention"]["qkv"]["kernel"]
        fc1 = state["params"]["backbone"]["layers"]["0"]["mlp"]["fc1"]["kernel"]
        if rules == "dp":
            assert all(a is None for a in fc1.sharding.spec)
        if rules in ("fsdp", "fsdp_tp"):
            assert fc1.sharding.spec[0] == "fsdp"
        if rules == "fsdp_tp":
            assert qkv.sharding.spec[2] == "tensor" and fc1.sharding.spec[1] == "tensor"
        results[rules] = (loss, grads)
    ref_loss, ref_grads = results["dp"]
    assert np.isfinite(ref_loss)
    for rules in ("fsdp", "fsdp_tp"):
        loss, grads = results[rules]
        assert loss == pytest.approx(ref_loss, rel=1e-5), rules
        for g, r in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads)):
            np.testing.assert_allclose(g, r, rtol=1e-3, atol=1e-5, err_msg=rules)
    # the gradients are not trivially zero
    assert max(float(np.abs(g).max()) for g in jax.tree_util.tree_leaves(ref_grads)) > 1e-4


def test_frozen_parameters_have_no_optimizer_state(parts):
    cfg, tm, _ = parts
    mesh = sharding_lib.make_mesh(8, 1, 1)
    trainer = Trainer(tm, cfg.optim, 10, mesh, rules=cfg.mesh.rules)
    frozen = set(trainer.frozen_names)
    assert "backbone.layers.0.attention.qkv.base.kernel" in frozen
    assert "backbone.layers.0.attention.out.base.bias" in frozen
    assert any(n.startswith("text_encoder.") for n in frozen)
    trained = set(trainer.trainable_names)
    assert {"backbone.layers.0.attention.qkv.lora_a.kernel", "backbone.layers.0.temporal_gate",
            "heads.kinetics.logit_scale", "backbone.embeddings.patch_kernel"} <= trained
    abstract = trainer.abstract_state(with_shardings=False)
    n_trainable = sum(np.prod(s.shape) for s in jax.tree_util.tree_leaves(abstract["params"]))
    n_opt = sum(np.prod(s.shape) for s in jax.tree_util.tree_leaves(abstract["opt"]))
    assert n_opt == pytest.approx(2 * n_trainable, abs=8)  # Adam mu + nu for trainable params only (+ counters)


def test_nan_guard_drops_the_update(parts):
    cfg, tm, _ = parts
    mesh = sharding_lib.make_mesh(8, 1, 1)
    trainer = Trainer(tm, cfg.optim, 4, mesh, rules=cfg.mesh.rules)  # the program test_train_resume compiled
    state = trainer.init_state(0)
    before = jax.device_get(state)
    acc = trainer.init_accumulator()
    acc["grads"] = jax.tree_util.tree_map(lambda g: g + jnp.nan, acc["grads"])
    acc["count"] = acc["count"] + 1
    new, acc, metrics = trainer.apply_step(state, acc)
    assert not bool(metrics["finite"])
    for a, b in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(jax.device_get(new))):
        np.testing.assert_array_equal(a, b)  # step, params and moments unchanged


def test_gradient_accumulation_averages_micro_batches_and_donates_the_state(parts):
    """Two micro-batches accumulate to the sum of their gradients; the update step averages them (loss and
    gradient norm of the mean), returns a zeroed accumulator and consumes (donates) the old state."""
    from data_pipelines.pipeline import loader

    cfg, tm, host = parts
    mesh = sharding_lib.make_mesh(8, 1, 1)
    trainer = Trainer(tm, cfg.optim, 4, mesh, rules=cfg.mesh.rules)  # the programs the other tests compiled
    text = sharding_lib.replicate(tm.text, mesh)

    def global_batch(video):
        fields = {k: v for k, v in host.items() if k != "task"}
        return device_batch(loader.to_global_batch({**fields, "video": video}, mesh, ("data", "fsdp")))

    a, b = global_batch(host["video"]), global_batch(host["video"][:, ::-1])  # clips and the clips reversed
    state = trainer.init_state(0)

    def grads_of(batch, micro_index):  # one micro-batch into a fresh accumulator (RNG folded with micro_index)
        acc = trainer.init_accumulator()
        acc["count"] = acc["count"] + micro_index
        acc, m = trainer.micro_step(state, acc, batch, text, "kinetics")
        return jax.device_get(acc["grads"]), float(m["loss"])

    (ga, la), (gb, lb) = grads_of(a, 0), grads_of(b, 1)
    assert la != lb
    acc = trainer.init_accumulator()
    acc, _ = trainer.micro_step(state, acc, a, text, "kinetics")
    acc, _ = trainer.micro_step(state, acc, b, text, "kinetics")
    summed = jax.device_get(acc["grads"])
    for s_, x, y in zip(*(jax.tree_util.tree_leaves(t) for t in (summed, ga, gb))):
        np.testing.assert_allclose(s_, x + y, rtol=1e-5, atol=1e-8)  # gA + gB (up to XLA's summation order)
    old_leaf = state["params"]["backbone"]["post_layernorm"]["scale"]
    new, zero, metrics = trainer.apply_step(state, acc)
    mean_norm = np.sqrt(sum(np.sum(((x + y) / 2).astype(np.float64) ** 2) for x, y in
                            zip(jax.tree_util.tree_leaves(ga), jax.tree_util.tree_leaves(gb))))
    assert float(metrics["loss"]) == pytest.approx((la + lb) / 2, rel=1e-6)
    assert float(metrics["grad_norm"]) == pytest.approx(mean_norm, rel=1e-5)
    assert int(new["step"]) == 1 and int(zero["count"]) == 0 and float(zero["loss"]) == 0
    assert all(not np.any(np.asarray(z)) for z in jax.tree_util.tree_leaves(zero["grads"]))
    assert old_leaf.is_deleted()  # the state was donated: its buffers now hold the new state


def _optim(**kw):
    import ml_collections

    return ml_collections.ConfigDict({"lr": 1e-3, "min_lr": 1e-5, "warmup_steps": 10, "warmup_lr": 0.0, "b1": 0.9,
                                      "b2": 0.999, "eps": 1e-8, "weight_decay": 0.0, "clip_grad_norm": 0.0,
                                      "mu_dtype": "", **kw})


def test_learning_rate_is_warm_up_then_one_cosine_over_the_whole_run():
    from streamformer_jax.train.optim import learning_rate_schedule

    schedule = learning_rate_schedule(_optim(), 110)
    lr = np.array([float(schedule(s)) for s in range(111)])
    np.testing.assert_allclose(lr[:11], np.linspace(0.0, 1e-3, 11), rtol=1e-5, atol=1e-12)
    t = (np.arange(10, 111) - 10) / 100  # one cosine from the end of warm-up to total_steps (no restarts)
    np.testing.assert_allclose(lr[10:], 1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + np.cos(np.pi * t)), rtol=1e-4)


def test_gradient_clipping_by_global_norm():
    """clip_grad_norm=1 scales a gradient of global norm 50 by 1/50 before AdamW (b1 = b2 = 0 and a huge eps make
    the AdamW update proportional to the gradient, so the scaling shows in the update)."""
    from streamformer_jax.train.optim import make_optimizer

    params = {"a": jnp.zeros(2), "b": jnp.zeros(2)}
    grads = {"a": jnp.array([30.0, 0.0]), "b": jnp.array([0.0, 40.0])}  # global norm 50

    def update(clip):
        tx, _ = make_optimizer(_optim(lr=1.0, min_lr=1.0, warmup_steps=0, b1=0.0, b2=0.0, eps=1e6,
                                      clip_grad_norm=clip), 10, {"a": True, "b": True})
        updates, _ = tx.update(grads, tx.init(params), params)
        return np.concatenate([np.asarray(updates["a"]), np.asarray(updates["b"])])

    plain, clipped = update(0.0), update(1.0)
    assert np.abs(plain).max() > 0
    np.testing.assert_allclose(clipped, plain / 50, rtol=1e-3)
    np.testing.assert_allclose(update(100.0), plain, rtol=1e-6)  # below the threshold: unchanged


def _cost_flops(lowered) -> float:
    cost = lowered.compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


def test_analytic_flops_match_xla_cost_analysis_and_remat_recomputes():
    cfg = model_configs.StreamFormerConfig(hidden_size=128, num_layers=2, num_heads=4, mlp_size=512, image_size=64,
                                           patch_size=16, num_frames=4, lora_rank=8)
    model = init_model(cfg, seed=0)
    graphdef, state = nnx.split(model)
    pixels = jnp.asarray(np.random.default_rng(0).standard_normal((2, 4, 64, 64, 3)), jnp.float32)

    def forward(state, x):
        return jnp.sum(nnx.merge(graphdef, state)(x)["pooler_output"])

    def loss(state, x, policy):
        return jnp.sum(apply_remat(nnx.merge(graphdef, state), policy)(x)["pooler_output"] ** 2)

    analytic = flops_lib.forward_flops_per_clip(cfg) * 2
    xla_fwd = _cost_flops(jax.jit(forward).lower(state, pixels))
    assert xla_fwd == pytest.approx(analytic, rel=0.08)
    grad = jax.jit(jax.grad(loss), static_argnums=2)
    xla_train = _cost_flops(grad.lower(state, pixels, "none"))
    assert xla_train == pytest.approx(3 * analytic, rel=0.12)  # MaxText's 3x forward
    xla_remat = _cost_flops(grad.lower(state, pixels, "nothing_saveable"))
    assert xla_remat > 1.2 * xla_train  # the blocks' forward runs again in the backward pass
    g0, g1 = grad(state, pixels, "none"), grad(state, pixels, "nothing_saveable")
    for a, b in zip(jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(g1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    # ViT-B/16 at 16 x 224²: the 801.6 GFLOP forward reference count, ~2.40 TFLOP per clip per step
    vitb = model_configs.vit_b16()
    assert flops_lib.forward_flops_per_clip(vitb) / 1e9 == pytest.approx(801.6, abs=0.1)
    assert flops_lib.train_flops_per_clip(vitb) / 1e12 == pytest.approx(2.40, abs=0.01)


def test_remat_policy_names():
    assert remat_policy("none") is None
    assert remat_policy("full") is jax.checkpoint_policies.nothing_saveable
    assert remat_policy("dots_with_no_batch_dims_saveable") is jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    with pytest.raises(ValueError, match="unknown remat policy"):
        remat_policy("save_everything_please")


def test_init_from_an_official_backbone_checkpoint(fixtures_dir, builtin_dir):  # noqa: F811
    from streamformer_jax.checkpoint import load_any
    from streamformer_jax.param_tree import flat_params

    ckpt = fixtures_dir / "tiny"
    cfg = tiny_config(builtin_dir, "", tasks=("kinetics",))
    cfg.model.init = str(ckpt)
    cfg.model.overrides.num_layers, cfg.model.overrides.lora_rank = 2, 32
    tm = build_task_model(ModelSettings.from_config(cfg), {"kinetics": ["red", "green", "blue", "yellow"]})
    _, ref = load_any(ckpt)
    got = flat_params(tm.model, None)
    for name, value in ref.items():
        np.testing.assert_array_equal(np.asarray(got[f"backbone.{name}"]), value, err_msg=name)
    assert tm.text["kinetics"].shape == (4, 64)
    assert any(n.startswith("text_encoder.") for n in got)  # random tiny tower (the fixture has no text tower)


def test_bfloat16_compute_keeps_float32_master_weights():
    import re

    cfg = model_configs.tiny(dtype="bfloat16")
    graphdef, state = nnx.split(init_model(cfg, seed=0))
    x = jnp.zeros((2, 4, 32, 32, 3), jnp.float32)

    def loss(state, x):
        return jnp.sum(apply_remat(nnx.merge(graphdef, state), "full")(x)["pooler_output"].astype(jnp.float32))

    hlo = jax.jit(jax.grad(loss)).lower(state, x).as_text()
    dots = re.findall(r"stablehlo\.dot_general.*", hlo)
    assert dots and all("bf16" in d for d in dots)  # every matmul runs in bfloat16 (fwd, remat and bwd)
    grads = jax.eval_shape(jax.grad(loss), state, x)
    assert {str(g.dtype) for g in jax.tree_util.tree_leaves(grads)} == {"float32"}
    assert {str(p.dtype) for p in jax.tree_util.tree_leaves(state)} == {"float32"}
