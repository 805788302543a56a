"""MultiTaskModel + task_loss wiring (features, heads, VIS projection), masks and checkpoint loading."""
import math
import re

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from streamformer_jax.convert.keymap import backbone_rules, ours_to_official
from streamformer_jax.models.config import tiny
from streamformer_jax.models.streamformer import normalize_pixels
from streamformer_jax.text import SiglipTextConfig
from streamformer_jax.param_tree import flat_params
from streamformer_jax.tasks import model as mt
from streamformer_jax.tasks import registry
from streamformer_jax.train import param_groups

TEXT = SiglipTextConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                        num_attention_heads=4, max_position_embeddings=16)
CFG = tiny(num_layers=1)  # one layer: compile time dominates these tests
B, T = 2, 4
S0, B0 = 0.7, -3.0


def _n(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _sig(z, y):
    return np.logaddexp(0.0, -y * z)


def _randomize(model, seed):
    """Every parameter random (the official init leaves LoRA B, gates and time embeddings at 0)."""
    rng = np.random.default_rng(seed)
    flat = flat_params(model)
    model.set_params({k: (rng.standard_normal(v.shape) * (0.3 if v.ndim else 1.0)).astype(np.float32)
                      for k, v in flat.items() if not k.startswith("heads.")})


@pytest.fixture(scope="module")
def model():
    m = mt.MultiTaskModel(CFG, registry.names(), text_config=TEXT, init_logit_scale=S0, init_logit_bias=B0, rngs=0)
    _randomize(m, 1)
    m.heads["vis"].copy_from_map_head(m.backbone.head)
    return m


@pytest.fixture(scope="module")
def batch_and_text():
    rng = np.random.default_rng(2)
    d = 64
    text = {
        "kinetics": _n(rng.standard_normal((5, 28, d))).mean(1).astype(np.float32),
        "ssv2": _n(rng.standard_normal((3, 28, d))).mean(1).astype(np.float32),
        "localization": _n(rng.standard_normal((2, 4, d))).astype(np.float32) * 0.8,
        "localization_valid": np.array([[1, 1, 1, 1], [1, 1, 0, 0]], bool),
        "vis": _n(rng.standard_normal((6, d))).astype(np.float32),
    }
    batch = {
        "video": rng.integers(0, 256, (B, T, 32, 32, 3), dtype=np.uint8),
        "label_cls": np.array([4, 1], np.int32),
        "label_grd": np.array([[0, 1, 1, 0], [1, 0, 0, 0]], np.float32),
        "label_loc": np.array([[-1, 2, 2, 3], [1, -1, 0, 0]], np.int32),
        "dataset_id": np.array([0, 1], np.int32),
        "mask": rng.integers(-1, 6, (B, T, 2, 2)).astype(np.int32),
        "caption_ids": rng.integers(0, 100, (B, 16)).astype(np.int32),
    }
    return batch, text


def _task_batch(task, batch):
    out = {"video": batch["video"]}
    if task in ("kinetics", "ssv2"):
        out["label"] = batch["label_cls"] % (5 if task == "kinetics" else 3)
    elif task == "retrieval":
        out["caption_ids"] = batch["caption_ids"]
    elif task == "grounding":
        out["label"], out["caption_ids"] = batch["label_grd"], batch["caption_ids"]
    elif task == "localization":
        out["label"], out["dataset_id"] = batch["label_loc"], batch["dataset_id"]
    else:
        out["mask"] = batch["mask"]
    return out


# The backbone is compiled once; each task's head loss separately (small graphs); `task_loss` end to end once.
_backbone = nnx.jit(lambda model, video: model.backbone(normalize_pixels(video)))
_head_loss = nnx.jit(mt.head_loss, static_argnums=1)
_task_loss = nnx.jit(mt.task_loss, static_argnums=1)
_encode = nnx.jit(lambda model, ids: model.text_encoder.encode(ids))


def _np_params(module):
    return {".".join(map(str, p)): np.asarray(v.get_value(), np.float64)
            for p, v in nnx.to_flat_state(nnx.state(module, nnx.Param))}


def _vis_projection_np(p, x):
    """P(x) = y + MLP(LN(y)), y = out_proj(W_v x + b_v), exact GELU (the backbone's), from raw params."""
    d = x.shape[-1]
    y = np.einsum("...d,dhk->...hk", x, p["w_v.kernel"]) + p["w_v.bias"]
    y = np.einsum("...hk,hkd->...d", y, p["v_proj.kernel"]) + p["v_proj.bias"]
    mu, var = y.mean(-1, keepdims=True), y.var(-1, keepdims=True)
    ln = (y - mu) / np.sqrt(var + 1e-6) * p["head_layernorm.scale"] + p["head_layernorm.bias"]
    h = ln @ p["head_mlp.fc1.kernel"] + p["head_mlp.fc1.bias"]
    h = 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))
    assert y.shape[-1] == d
    return y + h @ p["head_mlp.fc2.kernel"] + p["head_mlp.fc2.bias"]


def test_task_losses_match_numpy_on_backbone_features(model, batch_and_text):
    batch, text = batch_and_text
    out = _backbone(model, batch["video"])
    pooled = np.asarray(out["pooler_output"], np.float64)  # [B, T, D]
    tokens = np.asarray(out["last_hidden_state"], np.float64)  # [B, T, N, D]
    caption = np.asarray(_encode(model, batch["caption_ids"]), np.float64)
    s = math.exp(S0)
    refs = {}
    for task in ("kinetics", "ssv2"):
        tb = _task_batch(task, batch)
        z = s * _n(pooled[:, -1]) @ text[task].T.astype(np.float64) + B0  # the LAST frame's pooled vector
        y = np.where(np.arange(z.shape[1])[None] == tb["label"][:, None], 1.0, -1.0)
        refs[task] = _sig(z, y).sum() / B
    z = s * _n(pooled[:, -1]) @ _n(caption).T + B0
    refs["retrieval"] = _sig(z, 2 * np.eye(B) - 1).sum() / B
    z = s * np.einsum("btd,bd->bt", _n(pooled), _n(caption)) + B0
    refs["grounding"] = _sig(z, np.where(batch["label_grd"] > 0, 1.0, -1.0)).sum() / B
    tot = 0.0
    for i in range(B):
        c = int(text["localization_valid"][batch["dataset_id"][i]].sum())
        e = text["localization"][batch["dataset_id"][i], :c].astype(np.float64)
        z = s * _n(pooled[i]) @ e.T + B0
        lab = batch["label_loc"][i]
        y = np.where((np.arange(c)[None] == lab[:, None]) & (lab[:, None] >= 0), 1.0, -1.0)
        tot += _sig(z, y).sum() / T
    refs["localization"] = tot / B
    proj = _vis_projection_np({k: v for k, v in _np_params(model.heads["vis"]).items()}, tokens)
    logits = s * _n(proj) @ text["vis"].T.astype(np.float64) + B0  # [B, T, 4, C] on the 2x2 grid
    logits = logits.reshape(B, T, 2, 2, -1)
    m = batch["mask"]
    per = []
    for i in range(B):
        ok = m[i] >= 0
        lse = np.log(np.exp(logits[i]).sum(-1))
        picked = np.take_along_axis(logits[i], np.maximum(m[i], 0)[..., None], -1)[..., 0]
        per.append(((lse - picked) * ok).sum() / max(ok.sum(), 1))
    refs["vis"] = np.mean(per)
    with_captions = {**text, "caption_embedding": caption.astype(np.float32)}  # no text-tower compile per task
    for task in registry.names():
        loss, metrics = _head_loss(model, task, out, _task_batch(task, batch), with_captions)
        np.testing.assert_allclose(float(loss), refs[task], rtol=2e-5, err_msg=task)
        assert float(metrics["loss"]) == float(loss) and float(metrics["logit_scale"]) == pytest.approx(S0)
        assert 0.0 <= float(metrics["accuracy"]) <= 1.0
    # precomputed caption embeddings give the same retrieval loss as encoding caption_ids in the step
    # end to end (uint8 video normalised inside, captions encoded from caption_ids by the frozen tower inside)
    loss, _ = _task_loss(model, "grounding", _task_batch("grounding", batch), text)
    np.testing.assert_allclose(float(loss), refs["grounding"], rtol=2e-5)


def test_vis_projection_starts_as_a_copy_of_the_map_head():
    m = mt.MultiTaskModel(CFG, ["vis"], rngs=3)
    head, vis = _np_params(m.backbone.head), _np_params(m.heads["vis"])
    for ours, theirs in [("w_v", "value"), ("v_proj", "out"), ("head_layernorm", "layernorm"), ("head_mlp", "mlp")]:
        for k, v in vis.items():
            if k.startswith(ours + "."):
                np.testing.assert_array_equal(v, head[theirs + k[len(ours):]], err_msg=k)
    # separate trainable copies, not aliases
    assert "heads.vis.w_v.kernel" in flat_params(m)
    m.heads["vis"].w_v.kernel[...] = m.heads["vis"].w_v.kernel[...] + 1.0
    assert not np.array_equal(_np_params(m.backbone.head)["value.kernel"], _np_params(m.heads["vis"])["w_v.kernel"])


def test_gradients_reach_only_trainable_parameters_under_the_masks(model, batch_and_text):
    batch, text = batch_and_text
    model = nnx.clone(model)

    def total(m):  # one backbone pass, two heads
        features = mt.backbone_features(m, batch["video"])
        r = mt.head_loss(m, "retrieval", features, _task_batch("retrieval", batch), text)[0]
        return r + mt.head_loss(m, "vis", features, _task_batch("vis", batch), text)[0]

    grads = nnx.jit(nnx.grad(total))(model)
    g = {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(grads)}
    # frozen text tower: stop_gradient, exactly zero
    assert all(not np.any(v) for k, v in g.items() if k.startswith("text_encoder."))
    nonzero = {k for k, v in g.items() if np.any(v)}
    for k in ("backbone.layers.0.attention.qkv.lora_b.kernel", "backbone.layers.0.mlp.fc1.kernel",
              "heads.retrieval.logit_scale", "heads.retrieval.logit_bias", "heads.vis.w_v.kernel",
              "heads.vis.head_mlp.fc2.kernel", "backbone.embeddings.patch_kernel", "backbone.layers.0.temporal_gate"):
        assert k in nonzero, k
    assert not any(k.startswith(("heads.kinetics", "heads.ssv2")) for k in nonzero)
    # one optimizer step with the masks: frozen parameters do not move, trainable ones do
    params = nnx.state(model, nnx.Param)
    names = [".".join(map(str, p)) for p, _ in nnx.to_flat_state(params)]
    labels = param_groups.mask_tree(params, {n: "train" if t else "frozen" for n, t in param_groups.trainable_mask(names).items()})
    decay = param_groups.mask_tree(params, param_groups.weight_decay_mask(names))
    tx = optax.multi_transform({"train": optax.adamw(1e-2, weight_decay=0.05, mask=decay),
                                "frozen": optax.set_to_zero()}, labels)
    new = jax.jit(lambda g, p: optax.apply_updates(p, tx.update(g, tx.init(p), p)[0]))(grads, params)
    before = {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(params)}
    after = {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(new)}
    mask = param_groups.trainable_mask(names)
    assert sum(not t for t in mask.values()) == CFG.num_layers * 4 + len([n for n in names if n.startswith("text_encoder.")])
    for n in names:
        if not mask[n]:
            np.testing.assert_array_equal(after[n], before[n], err_msg=n)
        elif n in nonzero or param_groups.weight_decay_mask(names)[n]:
            assert not np.array_equal(after[n], before[n]), n
    # the nnx filter selects the same set
    diff = nnx.state(model, param_groups.trainable_filter(lora=True))
    assert {".".join(map(str, p)) for p, _ in nnx.to_flat_state(diff)} == {n for n, t in mask.items() if t}


def test_masks_reproduce_the_original_parameter_groups():
    cfg = tiny()
    m = mt.MultiTaskModel(cfg, registry.names(), text_config=TEXT, rngs=None)
    flat = flat_params(m)
    decay, train = param_groups.weight_decay_mask(flat), param_groups.trainable_mask(flat)
    official = ours_to_official({k[len("backbone."):]: np.asarray(v) for k, v in flat.items()
                                 if k.startswith("backbone.")}, cfg, include_buffers=False)
    frozen_re = re.compile(r"^encoder\.layer\.\d+\.attention\.(attention\.qkv|output\.dense)\.(weight|bias)$")
    for r in backbone_rules(cfg):
        shape = official[r.theirs].shape
        name = "backbone." + r.ours
        assert decay[name] == (not (len(shape) == 1 or r.theirs.endswith(".bias"))), (name, r.theirs, shape)
        assert train[name] == (not frozen_re.match(r.theirs)), (name, r.theirs)
    for t in registry.names():  # per-head 0-dim scale and bias: trainable and decayed (spec §5.5)
        assert decay[f"heads.{t}.logit_scale"] and decay[f"heads.{t}.logit_bias"] and train[f"heads.{t}.logit_bias"]
    vis = {"w_v.kernel": True, "w_v.bias": False, "v_proj.kernel": True, "head_layernorm.scale": False,
           "head_layernorm.bias": False, "head_mlp.fc1.kernel": True, "head_mlp.fc2.bias": False}
    for k, want in vis.items():
        assert decay[f"heads.vis.{k}"] == want and train[f"heads.vis.{k}"], k
    assert not any(v for k, v in train.items() if k.startswith("text_encoder."))
    # without LoRA nothing in the backbone is frozen
    no_lora = flat_params(mt.MultiTaskModel(tiny(lora_rank=0), ["kinetics"], rngs=None))
    assert all(param_groups.trainable_mask(no_lora).values())


def test_label_ids_order_rows_by_id_and_dataset_ids():
    assert mt.class_names_by_id({"b": 1, "c": 2, "a": 0}) == ["a", "b", "c"]
    assert mt.class_names_by_id({"HACS": {"y": 1, "x": 0}, "FA": {"z": 0}}) == {"HACS": ["x", "y"], "FA": ["z"]}
    with pytest.raises(ValueError, match="0..1"):
        mt.class_names_by_id({"a": 0, "b": 2})
    np.testing.assert_array_equal(mt.dataset_ids(["FA", "HACS", "FA"], ["HACS", "FA"]), [1, 0, 1])
    with pytest.raises(ValueError, match="no label set"):
        mt.dataset_ids(["COCO"], ["HACS"])
