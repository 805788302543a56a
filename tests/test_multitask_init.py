"""MultiTaskModel.from_pretrained: SigLIP import (text tower, logit scale/bias), our checkpoints and the
official pretraining wrapper's head tensors."""
import math

import numpy as np
import pytest
from flax import nnx

from streamformer_jax.checkpoint import save_checkpoint
from streamformer_jax.convert.pretrain import write_extras
from streamformer_jax.convert.siglip import import_siglip
from streamformer_jax.tasks import model as mt

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TEXT = dict(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
            max_position_embeddings=16)
VISION = dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=128, image_size=32,
              patch_size=16)


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("siglip_full")
    torch.manual_seed(0)
    model = transformers.SiglipModel(transformers.SiglipConfig(text_config=TEXT, vision_config=VISION))
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    model.eval().save_pretrained(root)
    return root, model


def _flat(module):
    return {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(module, nnx.Param))}


def test_from_siglip_directory(siglip_dir):
    root, siglip = siglip_dir
    m = mt.MultiTaskModel.from_pretrained(root, ["kinetics", "retrieval", "vis"], num_frames=4, lora_rank=32, seed=5)
    # logit scale / bias: SigLIP's values in every head
    for t in m.tasks:
        assert float(m.heads[t].logit_scale[...]) == pytest.approx(siglip.logit_scale.item())
        assert float(m.heads[t].logit_bias[...]) == pytest.approx(siglip.logit_bias.item())
    # backbone = the spec §4 import (same seed), LoRA added
    _, params, _, _ = import_siglip(root, num_frames=4, lora_rank=32, seed=5)
    ours = _flat(m.backbone)
    assert set(ours) == set(params) and "layers.0.attention.qkv.lora_a.kernel" in ours
    for k in params:
        np.testing.assert_array_equal(ours[k], params[k], err_msg=k)
    # VIS projection = copies of the MAP head
    np.testing.assert_array_equal(_flat(m.heads["vis"])["w_v.kernel"], ours["head.value.kernel"])
    # the text tower is SigLIP's
    ids = np.random.default_rng(0).integers(0, 100, (3, 16)).astype(np.int32)
    with torch.no_grad():
        ref = siglip.text_model(input_ids=torch.from_numpy(ids).long()).pooler_output.numpy()
    np.testing.assert_allclose(np.asarray(m.text_encoder.encode(ids)), ref, rtol=0, atol=1e-5)
    # explicit values override
    m2 = mt.MultiTaskModel.from_pretrained(root, ["kinetics"], num_frames=4, init_logit_scale=math.log(10),
                                           init_logit_bias=-10.0)
    assert float(m2.heads["kinetics"].logit_bias[...]) == -10.0


def test_from_our_checkpoint_with_official_wrapper_extras(siglip_dir, tmp_path):
    root, siglip = siglip_dir
    config, params, extras, _ = import_siglip(root, num_frames=4, lora_rank=32, seed=0)
    rng = np.random.default_rng(3)
    d, mlp = 64, 128
    wrapper = {  # official pretraining-checkpoint tensors, torch layouts
        "task_heads.Kinetics.logit_scale": np.float32(1.5), "task_heads.Kinetics.logit_bias": np.float32(-4.0),
        "task_heads.TaskVIS.logit_scale": np.float32(2.5), "task_heads.TaskVIS.logit_bias": np.float32(-6.0),
        "task_heads.TaskVIS.w_v.weight": rng.standard_normal((d, d)), "task_heads.TaskVIS.w_v.bias": rng.standard_normal(d),
        "task_heads.TaskVIS.v_proj.weight": rng.standard_normal((d, d)), "task_heads.TaskVIS.v_proj.bias": rng.standard_normal(d),
        "task_heads.TaskVIS.head_layernorm.weight": rng.standard_normal(d),
        "task_heads.TaskVIS.head_layernorm.bias": rng.standard_normal(d),
        "task_heads.TaskVIS.head_mlp.fc1.weight": rng.standard_normal((mlp, d)),
        "task_heads.TaskVIS.head_mlp.fc1.bias": rng.standard_normal(mlp),
        "task_heads.TaskVIS.head_mlp.fc2.weight": rng.standard_normal((d, mlp)) * 0.1,
        "task_heads.TaskVIS.head_mlp.fc2.bias": rng.standard_normal(d),
    }
    wrapper = {k: np.asarray(v, np.float32) for k, v in wrapper.items()}
    save_checkpoint(tmp_path, config, params)
    plain = mt.MultiTaskModel.from_pretrained(tmp_path, ["kinetics", "vis"])
    assert plain.text_encoder is None and float(plain.heads["vis"].logit_bias[...]) == -10.0
    write_extras(tmp_path, {**wrapper, **extras}, {}, list(wrapper) + list(extras), "test")
    m = mt.MultiTaskModel.from_pretrained(tmp_path, ["kinetics", "vis"])
    assert float(m.heads["kinetics"].logit_scale[...]) == 1.5 and float(m.heads["vis"].logit_bias[...]) == -6.0
    assert m.text_encoder is not None
    # the VIS projection computes the torch-layout formula y = x Wᵀ + b, P = y + fc2(gelu(fc1(LN(y))))
    x = rng.standard_normal((2, 5, d)).astype(np.float32)
    w = {k.split("TaskVIS.")[1]: v.astype(np.float64) for k, v in wrapper.items() if "TaskVIS." in k}
    y = x @ w["w_v.weight"].T + w["w_v.bias"]
    y = y @ w["v_proj.weight"].T + w["v_proj.bias"]
    ln = (y - y.mean(-1, keepdims=True)) / np.sqrt(y.var(-1, keepdims=True) + 1e-6) * w["head_layernorm.weight"] \
        + w["head_layernorm.bias"]
    h = ln @ w["head_mlp.fc1.weight"].T + w["head_mlp.fc1.bias"]
    h = 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))
    ref = y + h @ w["head_mlp.fc2.weight"].T + w["head_mlp.fc2.bias"]
    np.testing.assert_allclose(np.asarray(m.heads["vis"].project(x)), ref, rtol=1e-4, atol=1e-4)
    # backbone replacement from flat backbone params
    other = {k: v + 1.0 for k, v in params.items()}
    m.load_backbone_params(other)
    np.testing.assert_array_equal(_flat(m.backbone)["post_layernorm.bias"], other["post_layernorm.bias"])
