"""import-siglip: a tiny random SigLIP (built with transformers) -> StreamFormer (spec §4)."""
import numpy as np
import pytest

from streamformer_jax import FeatureExtractor
from streamformer_jax.checkpoint import load_checkpoint
from streamformer_jax.convert.__main__ import main
from streamformer_jax.convert.pretrain import read_extras

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from torch_reference import saved_random_model  # noqa: E402

VISION = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=32,
              patch_size=16)
TOL = 1e-5




@pytest.fixture(scope="module")
def siglip_vision(tmp_path_factory):
    root = tmp_path_factory.mktemp("siglip")
    config = transformers.SiglipVisionConfig(**VISION, hidden_act="gelu")
    return root, saved_random_model(lambda: transformers.SiglipVisionModel(config), root / "src", 1)


def _frames(seed, t=3):
    return np.random.default_rng(seed).integers(0, 256, (t, 32, 32, 3), dtype=np.uint8)


def test_gate_zero_and_zero_time_embeddings_reproduce_siglip_frame_by_frame(siglip_vision, capsys):
    root, model = siglip_vision
    assert main(["import-siglip", "--src", str(root / "src"), "--dst", str(root / "exact"), "--num-frames", "4",
                 "--lora-rank", "32", "--zero-time-embeddings"]) == 0
    assert "gelu_pytorch_tanh" not in capsys.readouterr().out  # hidden_act="gelu" already: no GELU note
    fx = FeatureExtractor.from_checkpoint(root / "exact")
    video = _frames(0)
    ours = fx(video)
    pixels = torch.from_numpy((video.astype(np.float32) / 255 - 0.5) / 0.5).permute(0, 3, 1, 2)
    with torch.no_grad():
        theirs = model(pixel_values=pixels)  # each frame is an independent image
    np.testing.assert_allclose(ours["last_hidden_state"], theirs.last_hidden_state.numpy(), rtol=0, atol=TOL)
    np.testing.assert_allclose(ours["pooler_output"], theirs.pooler_output.numpy(), rtol=0, atol=TOL)


def test_new_parameters_follow_the_official_initialisation(siglip_vision, tmp_path):
    root, model = siglip_vision
    assert main(["import-siglip", "--src", str(root / "src"), "--dst", str(tmp_path / "a"), "--seed", "3"]) == 0
    assert main(["import-siglip", "--src", str(root / "src"), "--dst", str(tmp_path / "b"), "--seed", "4"]) == 0
    config, params = load_checkpoint(tmp_path / "a")
    _, other = load_checkpoint(tmp_path / "b")
    assert config.num_frames == 16 and config.lora_rank == 0 and config.causal_temporal
    assert not config.gelu_approximate
    random_names = [k for k in params if ".temporal_attention." in k or ".temporal_dense." in k] + [
        "embeddings.time_embeddings"]
    assert any(k.endswith("qkv.bias") for k in random_names) and any(k.endswith("out.bias") for k in random_names)
    for k in random_names:  # biases included: N(0, 0.02²)
        v = params[k]
        assert v.std() > 0.01 and v.std() < 0.03 and abs(v.mean()) < 0.01, k
        assert not np.array_equal(v, other[k]), f"{k} does not depend on the seed"
    pooled = np.concatenate([params[k].ravel() for k in random_names])
    assert abs(pooled.std() - 0.02) < 0.001 and abs(pooled.mean()) < 0.001
    for l in range(config.num_layers):
        assert params[f"layers.{l}.temporal_gate"] == 0.0
        np.testing.assert_array_equal(params[f"layers.{l}.temporal_layernorm.scale"], 1.0)
        np.testing.assert_array_equal(params[f"layers.{l}.temporal_layernorm.bias"], 0.0)
    # everything copied from SigLIP is the same whatever the seed
    for k in params:
        if k not in random_names:
            np.testing.assert_array_equal(params[k], other[k], err_msg=k)


def test_qkv_is_concatenated_in_q_k_v_order(siglip_vision, tmp_path):
    from safetensors.numpy import load_file

    root, model = siglip_vision
    assert main(["import-siglip", "--src", str(root / "src"), "--dst", str(tmp_path / "ckpt")]) == 0
    assert main(["export-pytorch", "--src", str(tmp_path / "ckpt"), "--dst", str(tmp_path / "hf")]) == 0
    exported = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert len(exported) == 4 + 2 * 22 + 2 + 11  # no LoRA: 22 entries per layer (mask included)
    src = {k: v.numpy() for k, v in model.state_dict().items()}
    d = VISION["hidden_size"]
    for l in range(VISION["num_hidden_layers"]):
        for part in ("weight", "bias"):
            fused = exported[f"encoder.layer.{l}.attention.attention.qkv.{part}"]
            for i, name in enumerate("qkv"):
                np.testing.assert_array_equal(fused[i * d:(i + 1) * d],
                                              src[f"vision_model.encoder.layers.{l}.self_attn.{name}_proj.{part}"])
        np.testing.assert_array_equal(exported[f"encoder.layer.{l}.intermediate.dense.weight"],
                                      src[f"vision_model.encoder.layers.{l}.mlp.fc1.weight"])
        np.testing.assert_array_equal(exported[f"encoder.layer.{l}.temporal_attention.attention.mask"],
                                      np.tril(np.ones((16, 16), np.float32)))
    np.testing.assert_array_equal(exported["embeddings.position_embeddings"][0],
                                  src["vision_model.embeddings.position_embedding.weight"])
    np.testing.assert_array_equal(exported["head.attention.in_proj_weight"],
                                  src["vision_model.head.attention.in_proj_weight"])


def test_siglip_model_with_text_tower_and_tanh_gelu(tmp_path, capsys):
    config = transformers.SiglipConfig(
        text_config=dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=128,
                         vocab_size=50, max_position_embeddings=8),
        vision_config=dict(VISION))  # hidden_act defaults to gelu_pytorch_tanh, as in real SigLIP
    model = saved_random_model(lambda: transformers.SiglipModel(config), tmp_path / "src", 2)
    assert main(["import-siglip", "--src", str(tmp_path / "src"), "--dst", str(tmp_path / "ckpt"),
                 "--num-frames", "8"]) == 0
    out = capsys.readouterr().out
    assert "gelu_pytorch_tanh" in out and "exact erf GELU" in out
    ours, params = load_checkpoint(tmp_path / "ckpt")
    assert (ours.hidden_size, ours.num_layers, ours.num_heads, ours.mlp_size, ours.num_frames) == (64, 2, 4, 128, 8)
    assert not ours.gelu_approximate  # the official switch to exact GELU
    state = model.state_dict()
    np.testing.assert_array_equal(params["layers.1.mlp.fc2.bias"], state["vision_model.encoder.layers.1.mlp.fc2.bias"])
    tensors, aliases, _ = read_extras(tmp_path / "ckpt")
    text = {k for k in state if k.startswith("text_model.")}
    assert set(tensors) == {"text_encoder." + k for k in text} | {"logit_scale", "logit_bias"} and not aliases
    assert tensors["logit_scale"].shape == () and tensors["logit_scale"] == state["logit_scale"].item()
    for k in text:
        np.testing.assert_array_equal(tensors["text_encoder." + k], state[k].numpy())


def test_bad_siglip_inputs(tmp_path, siglip_vision, capsys):
    from safetensors.numpy import load_file, save_file

    root, _ = siglip_vision
    assert main(["import-siglip", "--src", str(tmp_path), "--dst", str(tmp_path / "x")]) == 2
    assert "no config.json" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((root / "src" / "config.json").read_text())
    state = load_file(str(root / "src" / "model.safetensors"))
    del state["vision_model.encoder.layers.1.self_attn.k_proj.bias"]
    state["vision_model.extra.weight"] = np.zeros(2, np.float32)
    save_file(state, str(broken / "model.safetensors"))
    assert main(["import-siglip", "--src", str(broken), "--dst", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "encoder.layers.1.self_attn.k_proj.bias" in err and "extra.weight" in err and "Traceback" not in err
