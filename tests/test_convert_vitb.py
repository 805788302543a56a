"""Full-depth (12-layer, 329-key) official format: strict round trip, and the ViT-B/16 forward vs torch."""
import json

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from streamformer_jax.convert.__main__ import main
from streamformer_jax.convert.keymap import official_to_ours
from streamformer_jax.models.config import StreamFormerConfig, vit_b16
from streamformer_jax.models.params import model_from_flat_params
from streamformer_jax.models.streamformer import normalize_pixels

torch = pytest.importorskip("torch")
from safetensors.numpy import load_file, save_file  # noqa: E402
from torch_reference import ReferenceBackbone, randomize_, to_pixels  # noqa: E402

TOL = 1e-5
RELEASED_KEYS = 329


def _reference(config: StreamFormerConfig, seed=0):
    return randomize_(ReferenceBackbone(config.to_hf_dict()), seed).eval()


def _jax_vs_torch(config, ref, video):
    params = official_to_ours({k: v.numpy() for k, v in ref.state_dict().items()}, config)
    model = model_from_flat_params(config, params)
    ours = jax.jit(lambda m, x: m(normalize_pixels(x)))(model, jnp.asarray(video)[None])
    with torch.no_grad():
        theirs = ref(to_pixels(video))
    for key in ("pooler_output", "last_hidden_state"):
        assert ours[key].shape == tuple(theirs[key].shape), key
        np.testing.assert_allclose(np.asarray(ours[key]), theirs[key].numpy(), rtol=0, atol=TOL, err_msg=key)


def test_twelve_layer_narrow_checkpoint_has_329_keys_and_round_trips(tmp_path):
    """The released layout (12 layers, LoRA, causal, 16 frames) at a narrow width."""
    config = vit_b16(hidden_size=64, num_heads=2, mlp_size=96, image_size=32)
    ref = _reference(config)
    state = {k: v.numpy() for k, v in ref.state_dict().items()}
    assert len(state) == RELEASED_KEYS
    src = tmp_path / "official"
    src.mkdir()
    save_file(state, str(src / "model.safetensors"), metadata={"format": "pt"})
    (src / "config.json").write_text(json.dumps(config.to_hf_dict()))
    assert main(["import-pytorch", "--src", str(src), "--dst", str(tmp_path / "ckpt")]) == 0
    assert main(["export-pytorch", "--src", str(tmp_path / "ckpt"), "--dst", str(tmp_path / "hf")]) == 0
    exported = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert len(exported) == RELEASED_KEYS and sorted(exported) == sorted(state)
    for k in state:
        assert exported[k].tobytes() == state[k].tobytes(), k
    fresh = ReferenceBackbone(json.loads((tmp_path / "hf" / "config.json").read_text()))
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)


@pytest.mark.slow
def test_vit_b16_forward_matches_torch_reference():
    """Random non-trivial weights at the released size; a 2-frame 224² clip (~75 s on 2 CPU cores)."""
    config = vit_b16()
    ref = _reference(config, seed=1)
    assert len(ref.state_dict()) == RELEASED_KEYS
    video = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    _jax_vs_torch(config, ref, video)


@pytest.mark.slow
def test_twelve_layer_narrow_forward_matches_torch_reference():
    """Full depth at a narrow width, 3 frames (the default run covers the forward with the fixtures)."""
    config = vit_b16(hidden_size=64, num_heads=2, mlp_size=96, image_size=32)
    video = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    _jax_vs_torch(config, _reference(config, seed=2), video)
