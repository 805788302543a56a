"""Training on the original datasets (converted from all.yaml, conftest `original_world`): per-dataset label
tables into the losses, the same losses on the dp / fsdp / fsdp_tp presets for all six tasks (retrieval's negatives
across shards included), accum_steps tied to the task cycle, no silent text-tower substitute, one-line CLI errors,
and (slow) an exact resume whose step crosses the epoch's last, shorter cycle."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipelines.records.sources import load_metadata
from data_pipelines.pipeline import label_tables, loader, transforms
from streamformer_jax import sharding as sharding_lib
from streamformer_jax.tasks.model import build_label_embeddings, task_loss
from streamformer_jax.tasks.templates import VIDEO_TEMPLATES
from streamformer_jax.text.model import SiglipTextConfig, init_text_model
from streamformer_jax.train import loop
from streamformer_jax.train.model_kinds import build_task_model
from streamformer_jax.train.multitask_kind import HashTokenizer
from streamformer_jax.train.step import Trainer
from streamformer_jax.train.task_model import ModelSettings
from test_train_support import (jax_cache, load_config, read_metrics, run_cli, run_readme_block,  # noqa: F401
                                set_overrides, subprocess_env)

TASKS = ("kinetics", "ssv2", "retrieval", "grounding", "localization", "vis")
# Micro-batches of 2 clips (two batch shards: data 1 x fsdp 2, tensor 4): the fixture's epoch is 25 micro-batches,
# 4 cycles of the six tasks and a shorter last one.
SMALL_MESH = {"micro_batch_size": 2, "mesh.data": 1, "mesh.fsdp": 2, "mesh.tensor": 4, "mesh.rules": "fsdp_tp"}


def _config(world, jax_cache, **overrides):  # noqa: F811
    """The tiny variant on the converted original data, all six tasks, one layer."""
    config = load_config("pretrain_multitask", "tiny")
    config.data_dir = str(world["out"])
    config.compilation_cache_dir = jax_cache
    config.model.overrides.num_layers = 1
    config.accum_steps = 0  # derived from the data's cycle
    config.progress_bar = False
    return set_overrides(config, overrides)


def _class_names(world):
    return {t: label_tables.label_sets(load_metadata(world["out"] / t)) for t in TASKS}


# ------------------------------------------------------------------------------------------- label tables
class RecordingTokenizer(HashTokenizer):
    def __init__(self):
        super().__init__(4096, 16)
        self.texts = []

    def __call__(self, texts, truncation=True):
        self.texts += list(texts)
        return super().__call__(texts, truncation)


def test_label_embeddings_per_dataset_from_bare_class_names(original_world):
    names = _class_names(original_world)
    assert names["localization"] == {"ActivityNet": ["Applying sunscreen", "Archery", "Ballet"],
                                     "FineAction": ["diving", "surfing"], "HACS": ["archery", "bowling"]}
    tower = init_text_model(SiglipTextConfig(vocab_size=4096, hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16,
                                             projection_size=32), seed=0)
    tok = RecordingTokenizer()
    text, datasets = build_label_embeddings(tower, tok, {"localization": names["localization"]}, batch_size=64)
    flat = [n for ds in names["localization"].values() for n in ds]
    assert tok.texts == [t.format(n) for n in flat for t in VIDEO_TEMPLATES]  # no "HACS/" prefix anywhere
    assert datasets["localization"] == ["ActivityNet", "FineAction", "HACS"]
    assert text["localization"].shape == (3, 3, 32)
    np.testing.assert_array_equal(text["localization_valid"], [[1, 1, 1], [1, 1, 0], [1, 1, 0]])
    # Row (HACS, 1) is "bowling" embedded on its own: the same vector as a one-class table of it.
    alone, _ = build_label_embeddings(tower, HashTokenizer(4096, 16), {"localization": ["bowling"]}, batch_size=64)
    np.testing.assert_allclose(text["localization"][2, 1], alone["localization"][0], atol=1e-6)


def test_vis_tables_keep_gaps_invalid(original_world):
    vis = _class_names(original_world)["vis"]
    assert list(vis) == ["COCOPseudoVIS", "LVVIS", "YoutubeVIS"]
    assert vis["COCOPseudoVIS"][0] == "person" and vis["YoutubeVIS"][0] == ""  # YouTube-VIS ids start at 1
    tower = init_text_model(SiglipTextConfig(vocab_size=4096, hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16,
                                             projection_size=32), seed=0)
    text, _ = build_label_embeddings(tower, HashTokenizer(4096, 16), {"vis": vis}, batch_size=64)
    assert text["vis"].shape == (3, 121, 32)
    assert text["vis_valid"].sum(axis=1).tolist() == [4, 120, 3]
    assert not text["vis_valid"][2, 0] and text["vis_valid"][0, 0]


# ------------------------------------------------------------------------------------------- presets
def _host_batches(world, config, batch=8):
    """One host batch of each task, from the converted original data (the model's clip shape)."""
    data = loop.data_config(config, world["root"])
    out = {}
    for task in TASKS:
        options = loader.task_options(data, task)
        ds = loader.task_dataset(loader.task_samples(world["out"] / task), transforms.make_transform(task, options),
                                 seed=3, host_batch_size=batch)
        out[task] = ds[0]
    return out


@pytest.fixture(scope="module")
def presets_setup(original_world, jax_cache):  # noqa: F811
    config = _config(original_world, jax_cache)
    loop.enable_compilation_cache(jax_cache)
    tm = build_task_model(ModelSettings.from_config(config), _class_names(original_world))
    return config, tm, _host_batches(original_world, config)


def _losses_on(config, tm, host_batches, rules, shape):
    mesh = sharding_lib.make_mesh(*shape)
    config = config.copy_and_resolve_references()
    config.mesh.rules = rules
    trainer = Trainer(tm, config.optim, 10, mesh, rules=config.mesh.rules)
    state = trainer.init_state(0)
    text = sharding_lib.replicate(tm.text, mesh)
    out = {}
    for task, host in host_batches.items():
        host = {k: v for k, v in host.items() if k != "task"}
        batch = loader.to_global_batch({**host, **tm.prepare_batch(host)}, mesh, ("data", "fsdp"))
        batch = {k: v for k, v in batch.items() if isinstance(v, jax.Array)}
        fn = jax.jit(lambda s, b, t, task=task: tm.loss(trainer.model_from(s["params"], s["frozen"]), task, b, t,
                                                        rng=jax.random.key(7))[0])
        out[task] = float(fn(state, batch, text))
    return out


PRESETS = [("dp", (8, 1, 1)), ("fsdp", (2, 4, 1)), ("fsdp_tp", (2, 2, 2))]


def _assert_same_across(results, tasks):
    for task in tasks:
        assert np.isfinite(results["dp"][task]), task
        for rules in results:
            assert results[rules][task] == pytest.approx(results["dp"][task], rel=2e-5), (rules, task)


def test_presets_agree_on_vis(presets_setup):
    """dp and fsdp_tp on VIS (per-dataset label tables by dataset id, the loss at input resolution frame by frame,
    LV-VIS class subsampling); every task on every preset is the slow test below."""
    config, tm, batches = presets_setup
    assert jax.device_count() == 8
    chosen = {"vis": batches["vis"]}
    _assert_same_across({rules: _losses_on(config, tm, chosen, rules, shape)
                         for rules, shape in PRESETS if rules != "fsdp"}, chosen)


@pytest.mark.slow
def test_presets_give_the_same_losses_on_all_six_tasks(presets_setup):
    config, tm, batches = presets_setup
    assert jax.device_count() == 8
    _assert_same_across({rules: _losses_on(config, tm, batches, rules, shape) for rules, shape in PRESETS}, TASKS)


def test_retrieval_negatives_come_from_every_shard(presets_setup):
    """The sharded retrieval loss (8 clips over 8 batch shards) is the loss over all 8 captions of the global batch:
    it equals the unsharded computation and differs from what each shard's own caption alone would give."""
    from flax import nnx

    config, tm, batches = presets_setup
    sharded = _losses_on(config, tm, {"retrieval": batches["retrieval"]}, "fsdp", (2, 4, 1))["retrieval"]
    host = {k: v for k, v in batches["retrieval"].items() if k != "task"}
    host = {**host, **tm.prepare_batch(host)}
    numeric = {k: jnp.asarray(v) for k, v in host.items() if isinstance(v, np.ndarray) and v.dtype.kind in "biuf"}
    loss = nnx.jit(lambda m, b, t: task_loss(m, "retrieval", b, t)[0])
    whole = float(loss(tm.model, numeric, tm.text))
    assert sharded == pytest.approx(whole, rel=2e-5)
    alone = [float(loss(tm.model, {k: v[i:i + 1] for k, v in numeric.items()}, tm.text)) for i in range(8)]
    # At init the sigmoid loss's bias (-10) makes each negative pair small, so the gap is compared with the sharded
    # computation's own rounding: leaving the other shards' captions out must move the loss far more than that.
    assert abs(np.mean(alone) - whole) > 10 * max(abs(sharded - whole), 1e-5)


# ------------------------------------------------------------------------------------------- no silent substitutes
def test_accum_steps_follow_the_task_cycle(original_world, jax_cache, tmp_path):  # noqa: F811
    config = _config(original_world, jax_cache, **SMALL_MESH)
    setup = loop.Setup(config, tmp_path / "a", log=lambda s: None)
    assert setup.accum_steps == 6 and setup.plan.cycle == TASKS  # f_k = 1 for each task with this data
    assert loop.resolve_accum_steps(_config(original_world, jax_cache, accum_steps=12), setup.plan) == 12
    with pytest.raises(ValueError, match=r"accum_steps=7 is not a whole number of the data's task cycle of 6 "):
        loop.Setup(_config(original_world, jax_cache, accum_steps=7, **SMALL_MESH), tmp_path / "b",
                   log=lambda s: None)


def test_epochs_count_the_samplers_micro_batches(original_world, jax_cache, tmp_path):  # noqa: F811
    config = _config(original_world, jax_cache, total_steps=-1, epochs=2.0, **SMALL_MESH)
    setup = loop.Setup(config, tmp_path, log=lambda s: None)
    assert len(setup.plan.order) == 25 and setup.total_steps == round(2 * (25 // 6))


def test_the_recipe_refuses_the_random_text_tower(original_world, jax_cache):  # noqa: F811
    config = _config(original_world, jax_cache, **{"text.allow_random": False})
    with pytest.raises(ValueError, match="no SigLIP text tower"):
        build_task_model(ModelSettings.from_config(config), _class_names(original_world))


def test_train_cli_user_errors_are_one_line(tmp_path):
    out = run_cli(["--config", "configs/pretrain_multitask.py", "--workdir", str(tmp_path / "w")], subprocess_env(1),
                  timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines[-1] == ("error: --config.data_dir is required by the pretrain_multitask config (docs/training.md; "
                         "the ':tiny' variant trains on the built-in dataset)")
    assert "Traceback" not in out.stderr


def test_the_recipe_requires_data_and_a_start_point():
    config = load_config("pretrain_multitask")
    with config.unlocked():
        config.data_dir = "/data/records"
    with pytest.raises(ValueError, match=r"^--config.model.init is required by the pretrain_multitask config"):
        loop.check_required(config)
    config.model.init = "/ckpt/siglip"
    loop.check_required(config)
    loop.check_required(load_config("pretrain_multitask", "tiny"))  # the tiny variant needs neither


# ------------------------------------------------------------------------------------------- resume
@pytest.mark.slow
def test_resume_across_the_epochs_last_cycle_is_exact(original_world, jax_cache, tmp_path):  # noqa: F811
    """Micro-batch 2 x (mesh 1 x 2 x 4, fsdp_tp), six-micro-batch steps over the 25-micro-batch epoch: step 4 ends
    in the middle of the epoch's last cycle and step 5 crosses into the next epoch. Stopping after step 4 and
    resuming gives the uninterrupted run's metrics bit for bit."""
    config = _config(original_world, jax_cache, total_steps=5, **{"checkpoint.every_steps": 2, "checkpoint.keep": 3},
                     **SMALL_MESH)
    full = loop.train(config, tmp_path / "full", log=lambda s: None)
    first = loop.train(config, tmp_path / "split", stop_at=4, log=lambda s: None)
    assert first["stopped"] == "preempted" and first["step"] == 4
    loop.train(config, tmp_path / "split", log=lambda s: None)
    a, b = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "split")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4, 5]
    for x, y in zip(a, b):
        for key in x:
            if key.startswith(("loss", "grad_norm", "lr")) or key.endswith("/accuracy"):
                assert x[key] == y[key], (x["step"], key)
    assert "loss/vis" not in a[4] and a[4]["loss/localization"]  # step 5: l | k s r g l (no VIS in it)
    for x, y in zip(jax.tree_util.tree_leaves(full["state"]["params"]),
                    jax.tree_util.tree_leaves(loop.train(config, tmp_path / "split", log=lambda s: None)["state"]
                                              ["params"])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
def test_readme_original_datasets_job(tmp_path):
    """The README's "Pretraining on the original datasets" block as written (/tmp/sf_orig moved into tmp_path), on
    one CPU device, and the numbers the README gives for it."""
    work = tmp_path / "sf_orig"
    proc = run_readme_block("### Pretraining on the original datasets", "/tmp/sf_orig", work, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert f"finished: step 20/20 (done); workdir {work / 'run'}" in proc.stdout
    metas = {t: json.loads((work / "records" / t / "metadata.json").read_text()) for t in TASKS}
    assert [metas[t]["num_samples"] for t in TASKS] == [4, 3, 8, 11, 5, 6]
    assert sum(m["num_examples"] for m in metas.values()) == 29 and sum(m["num_skipped"] for m in metas.values()) == 4
    inspected = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"video_id"')]
    assert [r["labels"] for r in inspected] == [["archery", "bowling"], ["surfing", "diving"]]
    rows = read_metrics(work / "run")
    assert {k.split("/", 1)[1] for r in rows for k in r if k.startswith("loss/")} == set(TASKS)
    assert rows[0]["loss"] == pytest.approx(12.4, abs=0.1) and rows[-1]["loss"] == pytest.approx(2.1, abs=0.1)
    config = json.loads((work / "run" / "config.json").read_text())
    assert config["accum_steps"] == 0 and rows[-1]["clips_seen"] == 20 * 6 * 2  # one 6-micro-batch cycle per step
