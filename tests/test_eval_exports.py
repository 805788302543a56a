"""Exports for the PyTorch stacks: VideoQA vision tower, OVIS ViT-Adapter backbone keys, pretraining .pth."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import load_file  # noqa: E402
from torch_reference import ReferenceBackbone, randomize_, to_pixels  # noqa: E402

from eval import exports as E  # noqa: E402
from streamformer_jax.models.config import vit_b16  # noqa: E402

# Spec §1.8, per layer (D = hidden, r = 32 LoRA rank, F = time rows): key suffix -> shape
LAYER_TABLE = {
    "temporal_attention_gating": lambda D, F: (),
    "attention.attention.qkv.weight": lambda D, F: (3 * D, D),
    "attention.attention.qkv.bias": lambda D, F: (3 * D,),
    "attention.attention.qkv_lora_a.weight": lambda D, F: (32, D),
    "attention.attention.qkv_lora_b.weight": lambda D, F: (3 * D, 32),
    "attention.output.dense.weight": lambda D, F: (D, D),
    "attention.output.dense.bias": lambda D, F: (D,),
    "attention.output.dense_lora_a.weight": lambda D, F: (32, D),
    "attention.output.dense_lora_b.weight": lambda D, F: (D, 32),
    "intermediate.dense.weight": lambda D, F: (4 * D, D),
    "intermediate.dense.bias": lambda D, F: (4 * D,),
    "output.dense.weight": lambda D, F: (D, 4 * D),
    "output.dense.bias": lambda D, F: (D,),
    "layernorm_before.weight": lambda D, F: (D,),
    "layernorm_before.bias": lambda D, F: (D,),
    "layernorm_after.weight": lambda D, F: (D,),
    "layernorm_after.bias": lambda D, F: (D,),
    "temporal_layernorm.weight": lambda D, F: (D,),
    "temporal_layernorm.bias": lambda D, F: (D,),
    "temporal_attention.attention.mask": lambda D, F: (F, F),
    "temporal_attention.attention.qkv.weight": lambda D, F: (3 * D, D),
    "temporal_attention.attention.qkv.bias": lambda D, F: (3 * D,),
    "temporal_attention.output.dense.weight": lambda D, F: (D, D),
    "temporal_attention.output.dense.bias": lambda D, F: (D,),
    "temporal_dense.weight": lambda D, F: (D, D),
    "temporal_dense.bias": lambda D, F: (D,),
}
assert len(LAYER_TABLE) == 26  # spec: 4 + 12 x 26 + 2 + 11 = 329


def spec_backbone_table(layers=12, D=768, N=196, F=16, P=16):
    t = {"embeddings.position_embeddings": (1, N, D), "embeddings.time_embeddings": (1, F, D),
         "embeddings.patch_embeddings.projection.weight": (D, 3, P, P),
         "embeddings.patch_embeddings.projection.bias": (D,),
         "post_layernorm.weight": (D,), "post_layernorm.bias": (D,)}
    for l in range(layers):
        t.update({f"encoder.layer.{l}.{k}": f(D, F) for k, f in LAYER_TABLE.items()})
    return t


def _zero_params(config):
    from streamformer_jax.models.params import param_shapes

    return {k: np.zeros(s, np.float32) for k, s in param_shapes(config).items()}


def test_ovis_keys_and_shapes_match_the_spec_table():
    config = vit_b16(num_layers=2)  # full width, two layers (every per-layer shape of the table)
    state = E.ovis_state_dict(config, _zero_params(config))
    expected = {"timesformer." + k: v for k, v in spec_backbone_table(layers=2).items()}
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    assert not any(".head." in k or k.startswith("timesformer.head") for k in state)
    np.testing.assert_array_equal(state["timesformer.encoder.layer.1.temporal_attention.attention.mask"],
                                  np.tril(np.ones((16, 16))))
    # the full 12-layer key count: 329 - 11 head entries (on a narrow model: the count does not depend on width)
    from streamformer_jax.models.config import tiny

    cfg12 = tiny(num_layers=12)
    assert len(E.ovis_state_dict(cfg12, _zero_params(cfg12), prefix="backbone.")) == 329 - 11
    # a model without LoRA still exports LoRA keys (zeros), since the adapter adds LoRA before loading
    nolora = tiny(lora_rank=0)
    s = E.ovis_state_dict(nolora, _zero_params(nolora))
    assert s["timesformer.encoder.layer.0.attention.attention.qkv_lora_b.weight"].shape == (192, 32)


@pytest.fixture(scope="module")
def tiny_dir():
    from conftest import FIXTURES

    return FIXTURES / "tiny"


def _ref(cfg, state=None, strict=True, masks=True):
    ref = ReferenceBackbone(cfg)
    if not masks:  # the VideoQA copy registers no temporal mask buffers
        for layer in ref.encoder.layer:
            del layer.temporal_attention.attention._buffers["mask"]
    if state is not None:
        res = ref.load_state_dict(state, strict=strict)
        return ref, res
    return ref


def test_ovis_pth_loads_into_the_adapter_backbone_keys(tiny_dir, tmp_path):
    from streamformer_jax.checkpoint import load_any

    config, params = load_any(tiny_dir)
    E.export_ovis(config, params, tmp_path / "ovis.pth")
    model = torch.load(tmp_path / "ovis.pth", map_location="cpu", weights_only=True)["model"]
    assert all(k.startswith("timesformer.") for k in model)
    stripped = {k[len("timesformer."):]: v for k, v in model.items()}  # what the OVIS loader does
    ref, res = _ref(json.loads((tiny_dir / "config.json").read_text()), stripped, strict=False)
    assert res.unexpected_keys == []
    assert sorted(res.missing_keys) == sorted(k for k in ref.state_dict() if k.startswith("head."))
    official = load_file(str(tiny_dir / "model.safetensors"))
    for k, v in stripped.items():  # official -> ours -> OVIS export is bit exact
        assert v.numpy().tobytes() == official[k].numpy().tobytes(), k


def test_ovis_directory_folds_lora(tiny_dir, tmp_path):
    from streamformer_jax.checkpoint import load_any

    config, params = load_any(tiny_dir)
    E.export_ovis(config, params, tmp_path / "ovis_hf")
    cfg = json.loads((tmp_path / "ovis_hf" / "config.json").read_text())
    assert cfg["add_lora_spatial"] is False
    folded = load_file(str(tmp_path / "ovis_hf" / "model.safetensors"))
    assert not any("lora" in k or k.startswith("head.") for k in folded)
    full_cfg = json.loads((tiny_dir / "config.json").read_text())
    official = load_file(str(tiny_dir / "model.safetensors"))
    ref_lora = _ref(full_cfg, official)[0]
    head = {k: v for k, v in official.items() if k.startswith("head.")}
    ref_folded, _ = _ref(cfg, {**folded, **head})
    x = to_pixels(np.load(tiny_dir / "video.npy"))
    with torch.no_grad():
        a, b = ref_lora(x)["last_hidden_state"], ref_folded(x)["last_hidden_state"]
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-4, rtol=1e-4)


def test_videoqa_export_loads_without_mask_buffers_and_tokens_match(tiny_dir, tmp_path):
    from streamformer_jax.api import FeatureExtractor
    from streamformer_jax.checkpoint import load_any

    config, params = load_any(tiny_dir)
    E.export_videoqa(config, params, tmp_path / "vqa")
    cfg = json.loads((tmp_path / "vqa" / "config.json").read_text())
    assert cfg["num_frames"] == 4 and cfg["add_lora_spatial"] is True and cfg["model_type"] == "timesformer"
    state = load_file(str(tmp_path / "vqa" / "model.safetensors"))
    ref, _ = _ref(cfg, state, strict=True, masks=False)  # strict: no missing, no unexpected key
    video = np.load(tiny_dir / "video.npy")
    with torch.no_grad():
        tokens = ref(to_pixels(video))["last_hidden_state"][0].numpy()
    ours = FeatureExtractor(config, params)(video)["last_hidden_state"]
    assert ours.shape == tokens.shape == (4, 4, 64)
    np.testing.assert_allclose(ours, tokens, atol=2e-5, rtol=1e-5)
    # a model without LoRA gets zero LoRA tensors, so the always-LoRA class still loads strictly
    from streamformer_jax.models.config import tiny

    nolora = tiny(lora_rank=0)
    s = {k: torch.from_numpy(v) for k, v in E.videoqa_state_dict(nolora, _zero_params(nolora)).items()}
    _ref(E.videoqa_config(nolora), s, strict=True, masks=False)


def test_videoqa_full_size_patch_tokens_equal_ours(tmp_path):
    """[T, 196, 768] tokens at ViT-B width and 224 px (one layer, T = 2, random non-trivial weights)."""
    from streamformer_jax.api import FeatureExtractor
    from streamformer_jax.convert.keymap import official_to_ours

    config = vit_b16(num_layers=1)
    src = randomize_(ReferenceBackbone(config.to_hf_dict()), seed=1).state_dict()
    params = official_to_ours({k: v.numpy() for k, v in src.items()}, config)
    E.export_videoqa(config, params, tmp_path / "vqa")
    cfg = json.loads((tmp_path / "vqa" / "config.json").read_text())
    ref, _ = _ref(cfg, load_file(str(tmp_path / "vqa" / "model.safetensors")), strict=True, masks=False)
    video = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    with torch.no_grad():
        tokens = ref(to_pixels(video))["last_hidden_state"][0].numpy()
    ours = FeatureExtractor(config, params)(video)["last_hidden_state"]
    assert ours.shape == tokens.shape == (2, 196, 768)
    np.testing.assert_allclose(ours, tokens, atol=1e-4, rtol=1e-4)


def test_pretraining_pth_recipe_loads_strictly(tiny_dir, tmp_path):
    from streamformer_jax.convert.__main__ import main

    assert main(["export-pytorch", "--src", str(tiny_dir), "--dst", str(tmp_path / "checkpoint-epoch.pth")]) == 0
    model = torch.load(tmp_path / "checkpoint-epoch.pth", map_location="cpu", weights_only=True)["model"]
    assert len(model) == 69 and all(k.startswith("timesformer.") for k in model)
    _ref(json.loads((tiny_dir / "config.json").read_text()),
         {k[len("timesformer."):]: v for k, v in model.items()}, strict=True)


def test_cli(tiny_dir, tmp_path):
    assert E.main(["videoqa", "--src", str(tiny_dir), "--dst", str(tmp_path / "v")]) == 0
    assert (tmp_path / "v" / "model.safetensors").exists()
    assert E.main(["ovis", "--src", str(tiny_dir), "--dst", str(tmp_path / "o.pth"), "--prefix", "backbone."]) == 0
    assert all(k.startswith("backbone.") for k in torch.load(tmp_path / "o.pth", weights_only=True)["model"])
    assert E.main(["ovis", "--src", str(tmp_path / "missing"), "--dst", str(tmp_path / "x.pth")]) == 2
