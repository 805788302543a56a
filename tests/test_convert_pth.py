"""Pretraining checkpoint (.pth) import/export: backbone, kept extras with aliases, config inference."""
import argparse
import json
import sys

import numpy as np
import pytest

from streamformer_jax.checkpoint import load_checkpoint
from streamformer_jax.convert.__main__ import main
from streamformer_jax.convert.keymap import official_to_ours
from streamformer_jax.convert.pretrain import ConversionError, infer_config, read_extras
from streamformer_jax.models.config import StreamFormerConfig, vit_b16

torch = pytest.importorskip("torch")
from torch_reference import ReferenceBackbone, randomize_  # noqa: E402


def fake_pretraining_checkpoint(fixture_config: dict, path, seed=0):
    """The wrapper's layout (§1.9): `timesformer.*` backbone, wrapper scalars, a text tower, task heads whose
    text encoder and VIS `head` are *aliases* (the same tensor objects, stored once by torch.save), VIS copies."""
    backbone = randomize_(ReferenceBackbone(fixture_config), seed).state_dict()
    g = torch.Generator().manual_seed(seed + 1)
    text = {f"text_encoder.text_model.{k}": torch.randn(shape, generator=g) for k, shape in (
        ("embeddings.token_embedding.weight", (11, 64)), ("final_layer_norm.weight", (64,)),
        ("head.weight", (64, 64)))}
    state = {"logit_scale": torch.tensor(2.3), "logit_bias": torch.tensor(-10.0)}
    state.update({"timesformer." + k: v for k, v in backbone.items()})
    state.update(text)
    for task in ("Kinetics", "TaskVIS"):
        state[f"task_heads.{task}.logit_scale"] = torch.tensor(2.5)
        state[f"task_heads.{task}.logit_bias"] = torch.tensor(-9.0)
        state.update({f"task_heads.{task}.{k}": v for k, v in text.items()})  # aliases
    state.update({f"task_heads.TaskVIS.{k}": v for k, v in backbone.items() if k.startswith("head.")})
    state["task_heads.TaskVIS.w_v.weight"] = backbone["head.attention.in_proj_weight"][128:].clone()  # a copy
    torch.save({"model": state, "optimizer": {"state": {}}, "epoch": 3, "args": argparse.Namespace(lr=1e-4)}, path)
    return state


@pytest.fixture(scope="module")
def pth_import(tmp_path_factory):
    from conftest import FIXTURES

    root = tmp_path_factory.mktemp("pth")
    cfg = json.loads((FIXTURES / "tiny" / "config.json").read_text())
    state = fake_pretraining_checkpoint(cfg, root / "checkpoint-epoch.pth")
    return root, cfg, state


def test_pth_import_backbone_extras_and_aliases(pth_import, capsys):
    root, cfg, state = pth_import
    assert main(["import-pytorch", "--src", str(root / "checkpoint-epoch.pth"), "--dst", str(root / "ckpt"),
                 "--num-heads", "4"]) == 0
    out = capsys.readouterr().out
    config, params = load_checkpoint(root / "ckpt")
    assert config == StreamFormerConfig.from_hf_dict(cfg)  # inferred from shapes (+ --num-heads)
    backbone = {k[len("timesformer."):]: v.numpy() for k, v in state.items() if k.startswith("timesformer.")}
    expected = official_to_ours(backbone, config)
    assert sorted(params) == sorted(expected)
    for k in expected:
        assert params[k].tobytes() == expected[k].tobytes(), k

    tensors, aliases, order = read_extras(root / "ckpt")
    assert order == list(state)
    text_keys = [k for k in state if k.startswith("text_encoder.")]
    # stored once: the wrapper's text tower, the scalars, the VIS copy; the task heads' copies are aliases
    assert sorted(tensors) == sorted(text_keys + ["logit_scale", "logit_bias", "task_heads.Kinetics.logit_scale",
                                                  "task_heads.Kinetics.logit_bias", "task_heads.TaskVIS.logit_scale",
                                                  "task_heads.TaskVIS.logit_bias", "task_heads.TaskVIS.w_v.weight"])
    assert aliases["task_heads.Kinetics.text_encoder.text_model.head.weight"] == "text_encoder.text_model.head.weight"
    assert aliases["task_heads.TaskVIS.head.probe"] == "timesformer.head.probe"  # canonical = the backbone copy
    assert len(aliases) == 2 * len(text_keys) + 11
    for k, v in tensors.items():
        assert v.tobytes() == state[k].numpy().tobytes(), k
    # printed: the inferred config and a per-prefix summary
    assert "config inferred from the tensor shapes" in out and '"num_hidden_layers": 2' in out
    assert "ignored top-level entries" in out and "optimizer" in out
    assert "task_heads.TaskVIS" in out and "text_encoder" in out


def test_pth_export_restores_the_wrapper_state_bit_exactly(pth_import):
    root, cfg, state = pth_import
    if not (root / "ckpt").exists():
        assert main(["import-pytorch", "--src", str(root / "checkpoint-epoch.pth"), "--dst", str(root / "ckpt"),
                     "--num-heads", "4"]) == 0
    assert main(["export-pytorch", "--src", str(root / "ckpt"), "--dst", str(root / "restored.pth")]) == 0
    restored = torch.load(root / "restored.pth", map_location="cpu", weights_only=True)["model"]
    assert list(restored) == list(state)  # same keys, same order
    for k, v in state.items():
        assert restored[k].dtype == v.dtype and restored[k].shape == v.shape, k
        assert restored[k].numpy().tobytes() == v.numpy().tobytes(), k
    ptr = lambda k: restored[k].untyped_storage().data_ptr()  # noqa: E731
    assert ptr("task_heads.TaskVIS.head.probe") == ptr("timesformer.head.probe")
    assert ptr("task_heads.Kinetics.text_encoder.text_model.head.weight") == ptr("text_encoder.text_model.head.weight")
    assert ptr("task_heads.TaskVIS.w_v.weight") != ptr("timesformer.head.attention.in_proj_weight")


def test_pth_with_explicit_config_and_unprefixed_state(pth_import, tmp_path):
    root, cfg, state = pth_import
    bare = {k[len("timesformer."):]: v for k, v in state.items() if k.startswith("timesformer.")}
    torch.save(bare, tmp_path / "backbone.pth")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert main(["import-pytorch", "--src", str(tmp_path / "backbone.pth"), "--dst", str(tmp_path / "ckpt"),
                 "--config", str(tmp_path / "config.json")]) == 0
    config, params = load_checkpoint(tmp_path / "ckpt")
    assert config == StreamFormerConfig.from_hf_dict(cfg)
    assert not (tmp_path / "ckpt" / "pretrain_extras.safetensors").exists()
    np.testing.assert_array_equal(params["layers.1.temporal_gate"],
                                  bare["encoder.layer.1.temporal_attention_gating"].numpy())


def test_infer_config_at_full_size():
    with torch.device("meta"):
        model = ReferenceBackbone(vit_b16().to_hf_dict())
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(shapes) == 329
    config, notes = infer_config(shapes)
    assert config == vit_b16()  # 12 heads = 768 / 64, LoRA 32, 16 frames, 224 px, causal
    assert any("num_heads=12" in n for n in notes)
    no_lora = {k: v for k, v in shapes.items() if "lora" not in k and not k.endswith(".mask")}
    config, notes = infer_config(no_lora, num_heads=6)
    assert config.lora_rank == 0 and config.num_heads == 6 and config.causal_temporal
    assert any("assuming" in n for n in notes)


def test_infer_config_errors_are_clear():
    with pytest.raises(ConversionError, match="--config"):
        infer_config({"head.probe": (1, 1, 64)})
    shapes = {"embeddings.patch_embeddings.projection.weight": (100, 3, 16, 16),
              "embeddings.position_embeddings": (1, 4, 100), "embeddings.time_embeddings": (1, 4, 100),
              "encoder.layer.0.intermediate.dense.weight": (200, 100)}
    with pytest.raises(ConversionError, match="--num-heads"):
        infer_config(shapes)
    assert infer_config(shapes, num_heads=4)[0].num_heads == 4


def test_unsafe_pickle_is_refused(tmp_path, capsys):
    torch.save({"model": {"x": torch.zeros(1)}, "evil": Exception("x")}, tmp_path / "evil.pth")
    assert main(["import-pytorch", "--src", str(tmp_path / "evil.pth"), "--dst", str(tmp_path / "ckpt")]) == 2
    err = capsys.readouterr().err
    assert "weights_only=True" in err and "Traceback" not in err


def test_missing_torch_is_a_clear_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "x.pth").write_bytes(b"not used")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    assert main(["import-pytorch", "--src", str(tmp_path / "x.pth"), "--dst", str(tmp_path / "ckpt")]) == 2
    err = capsys.readouterr().err
    assert "needs PyTorch" in err and len(err.strip().splitlines()) == 1
