"""The "classifier" model kind (train/classifier.py): head and pooling equal to eval.action_recognition's, the
finetuning loss against NumPy, the export that `eval.action_recognition evaluate` reads (and the original AR
checkpoint layout), the trainable / weight-decay split, initialisation from checkpoints, and the configs."""
import json

import jax
import numpy as np
import pytest
from flax import nnx

from eval import action_recognition as AR
from streamformer_jax.models.config import tiny
from streamformer_jax.models.streamformer import normalize_pixels
from streamformer_jax.convert import classifier_io
from streamformer_jax.models import classifier
from streamformer_jax.train import classifier_kind as CL
from streamformer_jax.train import regularisation as augment
from test_train_support import load_config, set_overrides

CFG = tiny(num_layers=1, lora_rank=4)  # one layer: compile time dominates on CPU
NUM_CLASSES = 5


def _flat(model):
    return {".".join(str(p) for p in path): np.asarray(v.get_value())
            for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _randomize(model, seed):
    """Every parameter random (the official init leaves LoRA B, the temporal gates and time embeddings at 0)."""
    rng = np.random.default_rng(seed)
    state = nnx.state(model, nnx.Param)
    for _, var in nnx.to_flat_state(state):
        v = var.get_value()
        var.set_value((rng.standard_normal(v.shape) * (0.3 if v.ndim else 1.0)).astype(np.float32))
    nnx.update(model, state)
    return model


def _video(seed, b=4):
    return np.random.default_rng(seed).integers(0, 256, (b, CFG.num_frames, 32, 32, 3), dtype=np.uint8)


def _finetune_config(**overrides):
    config = load_config("finetune_k400", "tiny")
    config.model.overrides.num_layers = 1
    return set_overrides(config, overrides)


@pytest.mark.parametrize("pooling", ["mean", "official_bug"])
def test_logits_are_eval_head_on_eval_pooling(pooling):
    model = _randomize(classifier.VideoClassifier(CFG, NUM_CLASSES, pooling=pooling, rngs=0), 1)
    pixels = normalize_pixels(_video(0))
    logits = np.asarray(model(pixels))
    head = classifier.head_from_flat(_flat(model))
    assert head["classifier"]["kernel"].shape == (64, NUM_CLASSES)
    feats = classifier.pool_clip(model.backbone, pixels, pooling)
    np.testing.assert_allclose(logits, np.asarray(classifier.head_logits(head, feats)), atol=1e-5, rtol=1e-5)
    if pooling == "mean":  # per-frame MAP vectors averaged over the clip's frames
        per_frame = np.asarray(model.backbone(pixels)["pooler_output"], np.float64)
        np.testing.assert_allclose(np.asarray(feats), per_frame.mean(1), atol=1e-5)


def test_loss_equals_numpy_cross_entropy_on_numpy_mixed_clips():
    model = _randomize(classifier.VideoClassifier(CFG, NUM_CLASSES, rngs=0), 2)
    video = _video(1)
    labels = np.array([0, 3, 4, 1])
    batch = {"video": video, "label": labels}

    def numpy_ce(logits, targets):
        z = np.asarray(logits, np.float64)
        logp = z - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)) - z.max(1, keepdims=True)
        return float(np.mean(-(targets * logp).sum(1)))

    # mixing on (each kind once), erasing off: the loss sees the clips mixed with the draw of the key's mixing half
    y = np.full((4, NUM_CLASSES), 0.1 / NUM_CLASSES)
    y[np.arange(4), labels] += 0.9  # label smoothing 0.1
    for reg in (augment.Regularisation(mixup=0.0, random_erasing=0.0),
                augment.Regularisation(cutmix=0.0, random_erasing=0.0)):
        k = jax.random.key(4)
        loss, metrics = CL.ClassifierLoss(reg)(model, "kinetics", batch, rng=k)
        p = augment.draw_mix(jax.random.split(k)[1], reg, 32, 32)
        lam, (yl, yh, xl, xh) = float(p.lam), np.asarray(p.box)
        assert bool(p.cutmix) == (reg.cutmix > 0) and lam < 1
        x = np.asarray(normalize_pixels(video), np.float64)
        if reg.cutmix:
            x[:, :, yl:yh, xl:xh] = x[::-1, :, yl:yh, xl:xh]
            lam = 1 - (yh - yl) * (xh - xl) / 32**2
        else:
            x = lam * x + (1 - lam) * x[::-1]
        targets = lam * y + (1 - lam) * y[::-1]
        logits = model(np.asarray(x, np.float32))
        assert float(loss) == pytest.approx(numpy_ce(logits, targets), rel=1e-4)
        assert float(metrics["accuracy"]) == pytest.approx(np.mean(np.argmax(logits, 1) == np.argmax(targets, 1)))
    # without a key (evaluation): label-smoothed cross-entropy on the clean clips
    clean, _ = CL.ClassifierLoss(augment.Regularisation())(model, "kinetics", batch)
    assert float(clean) == pytest.approx(numpy_ce(model(normalize_pixels(video)), y), rel=1e-4)
    # random erasing alone (every frame) changes what the model sees
    erase = CL.ClassifierLoss(augment.Regularisation(mix_prob=0.0, random_erasing=1.0))
    assert abs(float(erase(model, "kinetics", batch, rng=jax.random.key(5))[0]) - float(clean)) > 1e-4


def test_trainable_and_weight_decay_split():
    from streamformer_jax.train.model_kinds import build_task_model
    from streamformer_jax.train.task_model import ModelSettings

    settings = ModelSettings.from_config(_finetune_config())
    tm = build_task_model(settings, {"kinetics": ["red", "green", "blue", "yellow"]})
    names = list(_flat(tm.model))
    frozen = sorted(n for n in names if not tm.trainable(n))
    assert frozen == sorted(f"backbone.layers.0.attention.{p}.base.{w}" for p in ("qkv", "out")
                            for w in ("kernel", "bias"))  # the spatial base projections, nothing else
    for name in ("backbone.layers.0.attention.qkv.lora_a.kernel", "backbone.layers.0.attention.out.lora_b.kernel",
                 "backbone.embeddings.patch_kernel", "backbone.head.probe", "fc_norm.scale", "classifier.kernel"):
        assert tm.trainable(name), name
    assert [n for n in names if n.startswith(("fc_norm.", "classifier."))] == \
        ["classifier.bias", "classifier.kernel", "fc_norm.bias", "fc_norm.scale"]
    assert tm.decay("classifier.kernel") and tm.decay("backbone.head.probe")
    assert not tm.decay("classifier.bias") and not tm.decay("fc_norm.scale") and not tm.decay("fc_norm.bias")
    assert tm.model.num_classes == 4 and tm.model.pooling == "mean"
    kernel = _flat(tm.model)["classifier.kernel"]
    assert 0.01 < kernel.std() < 0.03  # N(0, 0.02^2), fresh


def test_export_is_what_eval_reads(tmp_path):
    """WORKDIR/export as the trainer writes it -> `eval.action_recognition` gives the model's own softmax."""
    from streamformer_jax.checkpoint import load_any, save_checkpoint
    from streamformer_jax.train.model_kinds import build_task_model
    from streamformer_jax.train.task_model import ModelSettings

    settings = ModelSettings.from_config(_finetune_config())
    tm = build_task_model(settings, {"kinetics": ["red", "green", "blue", "yellow"]})
    _randomize(tm.model, 3)
    flat = _flat(tm.model)
    out = tmp_path / "export"
    backbone = {k[len("backbone."):]: v for k, v in flat.items() if k.startswith("backbone.")}
    save_checkpoint(out, tm.backbone.replace(dtype="float32"), backbone)
    tm.export(flat, out)
    info = json.loads((out / CL.INFO_FILE).read_text())
    assert info == {"task": "kinetics", "num_classes": 4, "class_names": ["red", "green", "blue", "yellow"],
                    "pooling": "mean", "head": CL.HEAD_FILE}
    config, params = load_any(out)
    clf = AR.ClipClassifier(config, params, classifier_io.load_head(out / info["head"]), pooling=info["pooling"])
    frames = _video(5, b=8)  # 8 fake devices
    want = np.asarray(jax.nn.softmax(tm.model(normalize_pixels(frames)), -1))
    np.testing.assert_allclose(clf.probs(frames), want, atol=1e-5)

    pytest.importorskip("torch")  # the original AR checkpoint layout, read back by load_ar_checkpoint
    path = CL.export_ar_checkpoint(out, config, flat)
    got_params, got_head = classifier_io.load_ar_checkpoint(path, config)
    assert sorted(got_params) == sorted(params)
    for k, v in params.items():
        np.testing.assert_array_equal(got_params[k], v, err_msg=k)
    for part in ("fc_norm", "classifier"):
        for k, v in classifier.head_from_flat(flat)[part].items():
            np.testing.assert_array_equal(got_head[part][k], v)


def test_init_from_checkpoints_with_and_without_lora(tmp_path):
    from streamformer_jax.checkpoint import save_checkpoint
    from streamformer_jax.param_tree import flat_params
    from streamformer_jax.models.streamformer import init_model

    for rank in (0, 4):
        src_cfg = CFG.replace(lora_rank=rank)
        src = {k: np.asarray(v) for k, v in flat_params(_randomize(init_model(src_cfg, seed=9), 9)).items()}
        path = save_checkpoint(tmp_path / f"rank{rank}", src_cfg, src)
        backbone = CL.load_backbone(str(path), CFG.replace(dtype="bfloat16"), seed=0)
        assert backbone.config.lora_rank == 4 and backbone.config.dtype == "bfloat16"
        got = {k: np.asarray(v) for k, v in flat_params(backbone).items()}
        for k, v in src.items():
            np.testing.assert_array_equal(got[k], v, err_msg=k)
        lora = [k for k in got if ".lora_" in k]
        assert len(lora) == 4  # qkv and out, A and B
        if rank == 0:  # fresh LoRA: B = 0, so the model computes what the checkpoint computes
            assert all(not got[k].any() for k in lora if ".lora_b." in k)
            assert all(got[k].std() > 0.01 for k in lora if ".lora_a." in k)


def test_finetune_configs_follow_the_original_recipe():
    for name, task in (("finetune_k400", "kinetics"), ("finetune_ssv2", "ssv2")):
        c = load_config(name)
        assert c.model.kind == "classifier" and c.model.classifier.task == task and c.tasks == task
        assert c.model.classifier.pooling == "mean" and c.model.trainable == "original"
        assert dict(c.augment) == {"mixup": 0.8, "cutmix": 1.0, "mix_prob": 1.0, "switch_prob": 0.5,
                                   "label_smoothing": 0.1, "random_erasing": 0.25}
        assert c.data.tasks[task].randaugment == "rand-m7-n4-mstd0.5-inc1"
        assert c.optim.weight_decay == 0.05 and c.epochs == 30 and c.optim.warmup_epochs == 5
        tiny_cfg = load_config(name, "tiny")
        assert tiny_cfg.model.kind == "classifier" and tiny_cfg.total_steps == 40
        assert tiny_cfg.data.tasks[task].randaugment == "" and dict(tiny_cfg.augment) == dict(c.augment)
