"""The Flax SigLIP text tower against transformers' SiglipTextModel, and its loaders."""
import numpy as np
import pytest

from streamformer_jax.param_tree import flat_params
from streamformer_jax.text import SiglipTextConfig, load_text_model
from streamformer_jax.text.model import TextLoadError, hf_to_ours, ours_to_hf

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from torch_reference import saved_random_model  # noqa: E402

TOL = 1e-5
TEXT = dict(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=16)




@pytest.fixture(scope="module")
def hf_text(tmp_path_factory):
    root = tmp_path_factory.mktemp("siglip_text")
    config = transformers.SiglipConfig(text_config=TEXT, vision_config=dict(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=16))
    full = saved_random_model(lambda: transformers.SiglipModel(config), root / "siglip", 1)
    return root, full.text_model  # SiglipTextTransformer (same weights as SiglipTextModel.text_model)


def _ids(seed, n=5, length=16):
    return np.random.default_rng(seed).integers(0, TEXT["vocab_size"], (n, length)).astype(np.int32)


def test_config_reads_hidden_act_from_siglip():
    assert transformers.SiglipTextConfig().hidden_act == "gelu_pytorch_tanh"
    assert SiglipTextConfig().hidden_act == "gelu_pytorch_tanh"
    cfg = SiglipTextConfig.from_hf_dict({"model_type": "siglip", "text_config": dict(TEXT, hidden_act="gelu")})
    assert cfg.hidden_act == "gelu" and cfg.num_hidden_layers == 2


def test_parity_with_transformers_siglip_text_model(hf_text, length=16):
    root, theirs = hf_text
    ours = load_text_model(root / "siglip")
    assert ours.config.hidden_act == "gelu_pytorch_tanh"
    ids = _ids(length, length=length)
    out = ours(ids)
    with torch.no_grad():
        ref = theirs(input_ids=torch.from_numpy(ids).long())  # input_ids only, no attention mask
    np.testing.assert_allclose(np.asarray(out["last_hidden_state"]), ref.last_hidden_state.numpy(), rtol=0, atol=TOL)
    np.testing.assert_allclose(np.asarray(out["pooler_output"]), ref.pooler_output.numpy(), rtol=0, atol=TOL)
    # The pooled vector is the head of the LAST position: changing only the first token changes it too
    # (bidirectional attention), and it is not the head of position 0.
    head0 = theirs.head(ref.last_hidden_state[:, 0]).detach().numpy()
    assert np.abs(np.asarray(out["pooler_output"]) - head0).max() > 1e-3


def test_exact_gelu_would_not_match(hf_text):
    """The tanh GELU matters at this tolerance (guards against a silently wrong activation)."""
    root, theirs = hf_text
    ours = load_text_model(root / "siglip", config=SiglipTextConfig(**TEXT, hidden_act="gelu"))
    ids = _ids(1)
    with torch.no_grad():
        ref = theirs(input_ids=torch.from_numpy(ids).long()).pooler_output.numpy()
    assert np.abs(np.asarray(ours.encode(ids)) - ref).max() > TOL


def test_load_from_extras_file_and_key_table_round_trip(hf_text, tmp_path):
    root, theirs = hf_text
    from safetensors.numpy import save_file

    state = {k: v.detach().numpy().copy() for k, v in theirs.state_dict().items()}
    # Our checkpoints keep the text tower under the pretraining wrapper's names.
    save_file({f"text_encoder.text_model.{k}": v for k, v in state.items()},
              str(tmp_path / "pretrain_extras.safetensors"))
    ours = load_text_model(tmp_path, num_heads=TEXT["num_attention_heads"])
    assert ours.config == SiglipTextConfig(**TEXT, projection_size=TEXT["hidden_size"])
    ids = _ids(2)
    with torch.no_grad():
        ref = theirs(input_ids=torch.from_numpy(ids).long()).pooler_output.numpy()
    np.testing.assert_allclose(np.asarray(ours.encode(ids)), ref, rtol=0, atol=TOL)
    # our -> HF names is the exact inverse
    back = ours_to_hf({k: np.asarray(v) for k, v in flat_params(ours).items()}, ours.config)
    assert set(back) == set(state) - {"embeddings.position_ids"}
    for k, v in back.items():
        np.testing.assert_array_equal(v, state[k], err_msg=k)


def test_loader_errors(hf_text, tmp_path):
    root, theirs = hf_text
    state = {k: v.detach().numpy() for k, v in theirs.state_dict().items()}
    cfg = SiglipTextConfig(**TEXT)
    bad = dict(state)
    del bad["encoder.layers.1.mlp.fc2.bias"]
    bad["encoder.layers.0.self_attn.q_proj.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(TextLoadError, match=r"missing \(1\).*fc2.bias.*\n.*wrong shape.*q_proj"):
        hf_to_ours(bad, cfg)
    with pytest.raises(FileNotFoundError):
        load_text_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TextLoadError, match="neither"):
        load_text_model(tmp_path / "empty")
