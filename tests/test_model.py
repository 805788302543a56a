"""The Flax model against the official PyTorch outputs, and its structural properties."""
import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import nnx

from streamformer_jax.convert.official import read_official_dir
from streamformer_jax.models import config as configs
from streamformer_jax.models.embeddings import clip_time_ids, resize_position_embeddings
from streamformer_jax.models.params import model_from_flat_params
from streamformer_jax.param_tree import flat_params
from streamformer_jax.models.streamformer import init_model, normalize_pixels

TOL = 1e-5


def _official(fixtures_dir, name):
    cfg, params = read_official_dir(fixtures_dir / name)
    return cfg, model_from_flat_params(cfg, params)


def _randomised(cfg, seed=0):
    """Every parameter non-trivial (the official init leaves the temporal branch and LoRA inert)."""
    params = flat_params(init_model(cfg, seed))
    rng = np.random.default_rng(seed)
    noisy = {}
    for k, v in params.items():
        v = np.asarray(v)
        if k.endswith("temporal_gate"):
            noisy[k] = rng.uniform(-1, 1, v.shape).astype(np.float32)
        elif k.endswith("scale"):
            noisy[k] = (1 + 0.1 * rng.standard_normal(v.shape)).astype(np.float32)
        else:
            fan_in = v.shape[0] if v.ndim >= 2 else 1
            std = 0.1 if v.ndim < 2 else (1 / np.sqrt(fan_in if not k.endswith("patch_kernel") else v[..., 0].size))
            noisy[k] = (std * rng.standard_normal(v.shape)).astype(np.float32)
    return model_from_flat_params(cfg, noisy)


def _jit(model, **kwargs):
    """The model as one jitted function of uint8 frames (eager NNX dispatch is slow on CPU)."""
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda s, x: nnx.merge(graphdef, s)(normalize_pixels(x), **kwargs))
    return lambda frames: fn(state, frames)


def _video(rng, t, size, batch=None):
    shape = (t, size, size, 3) if batch is None else (batch, t, size, size, 3)
    return jnp.asarray(rng.integers(0, 256, shape, dtype=np.uint8))


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_clip_forward_matches_official(fixtures_dir, name):
    cfg, model = _official(fixtures_dir, name)
    video = np.load(fixtures_dir / name / "video.npy")
    ref = np.load(fixtures_dir / name / "outputs_clip.npz")
    out = _jit(model)(jnp.asarray(video)[None])
    for key in ("pooler_output", "last_hidden_state"):
        assert out[key].shape == (1,) + ref[key].shape
        np.testing.assert_allclose(np.asarray(out[key][0]), ref[key], rtol=0, atol=TOL, err_msg=key)


@pytest.mark.parametrize("num_frames", [1, 7, 16, 48])
def test_any_clip_length(num_frames):
    cfg = configs.tiny(num_frames=4)
    model = _randomised(cfg)
    out = _jit(model)(_video(np.random.default_rng(num_frames), num_frames, 32, batch=2))
    assert out["pooler_output"].shape == (2, num_frames, cfg.hidden_size)
    assert out["last_hidden_state"].shape == (2, num_frames, cfg.num_patches, cfg.hidden_size)
    assert np.isfinite(np.asarray(out["pooler_output"])).all()


def test_time_ids_follow_official_rule():
    np.testing.assert_array_equal(clip_time_ids(3, 16), [0, 1, 2])  # T <= F: the first T rows
    np.testing.assert_array_equal(clip_time_ids(16, 16), np.arange(16))
    # T = 82: the float32 scale puts frame 41 on row 7, where the exact floor(41 * 16 / 82) would be 8.
    assert clip_time_ids(82, 16)[41] == 7


@pytest.mark.parametrize("table", [4, 16])
def test_time_ids_equal_torch_nearest_interpolation(table):
    """Every clip length 1..2000 against torch itself: the original slices the first T rows for T < F and calls
    `F.interpolate(time_embeddings, size=T, mode="nearest")` for T > F."""
    torch = pytest.importorskip("torch")
    rows = torch.arange(table, dtype=torch.float32).reshape(1, 1, table)
    for t in range(1, 2001):
        want = np.arange(t) if t <= table else \
            torch.nn.functional.interpolate(rows, size=t, mode="nearest")[0, 0].numpy().astype(np.int64)
        got = clip_time_ids(t, table)
        assert np.array_equal(got, want), f"T={t}: first mismatch at frame {np.flatnonzero(got != want)[:1]}"


def test_temporal_attention_is_causal():
    cfg = configs.tiny()
    model = _randomised(cfg, seed=1)
    rng = np.random.default_rng(0)
    video = _video(rng, 6, 32)
    perturbed = video.at[4].set(_video(rng, 1, 32)[0])
    forward = _jit(model)
    a, b = forward(video[None]), forward(perturbed[None])
    # frames before the perturbed one are bit-identical, the perturbed one and later ones change
    np.testing.assert_array_equal(np.asarray(a["pooler_output"][0, :4]), np.asarray(b["pooler_output"][0, :4]))
    assert np.abs(np.asarray(a["pooler_output"][0, 4:]) - np.asarray(b["pooler_output"][0, 4:])).min() > 0


def test_non_causal_config_sees_the_future():
    model = _randomised(configs.tiny(causal_temporal=False), seed=2)
    rng = np.random.default_rng(0)
    video = _video(rng, 4, 32)
    perturbed = video.at[3].set(_video(rng, 1, 32)[0])
    forward = _jit(model)
    a, b = forward(video[None])["pooler_output"], forward(perturbed[None])["pooler_output"]
    assert np.abs(np.asarray(a[0, 0]) - np.asarray(b[0, 0])).max() > 1e-4


def test_one_compile_per_input_shape():
    cfg = configs.tiny()
    graphdef, state = nnx.split(_randomised(cfg))
    forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(normalize_pixels(x)))
    rng = np.random.default_rng(0)
    for _ in range(3):
        forward(state, _video(rng, 4, 32, batch=1))
    assert forward._cache_size() == 1
    forward(state, _video(rng, 5, 32, batch=1))
    assert forward._cache_size() == 2


def test_bfloat16_compute_keeps_float32_params_and_stays_close():
    cfg = configs.tiny(hidden_size=128, num_heads=2)
    model32 = _randomised(cfg, seed=3)
    model16 = model_from_flat_params(cfg.replace(dtype="bfloat16"), flat_params(model32))
    assert all(v.dtype == jnp.float32 for v in flat_params(model16).values())
    frames = _video(np.random.default_rng(0), 3, 32, batch=1)
    a = np.asarray(_jit(model32)(frames)["pooler_output"])
    out16 = _jit(model16)(frames)
    assert out16["pooler_output"].dtype == jnp.bfloat16
    b = np.asarray(out16["pooler_output"], dtype=np.float32)
    rel = np.linalg.norm(a - b) / np.linalg.norm(a)
    assert rel < 0.05, rel


def test_position_embeddings_resize_matches_torch_antialiased_bicubic():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    grid, dim = 4, 8
    table = rng.standard_normal((grid * grid, dim)).astype(np.float32)
    assert resize_position_embeddings(jnp.asarray(table), grid, grid, grid) is not None
    for out_h, out_w in [(8, 8), (3, 3), (2, 6), (6, 3)]:
        ours = np.asarray(resize_position_embeddings(jnp.asarray(table), grid, out_h, out_w))
        t = torch.from_numpy(table.reshape(grid, grid, dim)).permute(2, 0, 1)[None]
        ref = torch.nn.functional.interpolate(t, size=(out_h, out_w), mode="bicubic", antialias=True,
                                              align_corners=False)
        ref = ref[0].permute(1, 2, 0).reshape(out_h * out_w, dim).numpy()
        np.testing.assert_allclose(ours, ref, atol=1e-5, err_msg=f"{out_h}x{out_w}")


def test_non_square_frames_use_a_row_major_grid():
    # a 32x64 frame: 2x4 patches; the position of patch (i, j) must come from row i, column j of the grid
    cfg = configs.tiny(image_size=64)  # 4x4 position grid
    model = _randomised(cfg, seed=4)
    out = _jit(model)(_video(np.random.default_rng(0), 2, 32, batch=1).repeat(2, axis=3))
    assert out["last_hidden_state"].shape == (1, 2, 8, cfg.hidden_size)
    pos = np.asarray(model.embeddings.position_embeddings[...]).reshape(4, 4, -1)
    resized = np.asarray(resize_position_embeddings(jnp.asarray(pos.reshape(16, -1)), 4, 2, 4)).reshape(2, 4, -1)
    # the transposed (official) grid would be resized to 4 rows x 2 columns instead
    transposed = np.asarray(resize_position_embeddings(jnp.asarray(pos.reshape(16, -1)), 4, 4, 2))
    assert np.abs(resized.reshape(8, -1) - transposed).max() > 1e-3


def test_params_count_of_released_configuration():
    from streamformer_jax.models.params import param_shapes

    shapes = param_shapes(configs.vit_b16())
    assert sum(int(np.prod(s)) for s in shapes.values()) == 130_119_948  # the official count (spec §1.8)
    no_lora = param_shapes(configs.vit_b16(lora_rank=0))
    assert sum(int(np.prod(s)) for s in no_lora.values()) == 128_350_476


def test_hf_config_round_trip(fixtures_dir):
    import json

    d = json.loads((fixtures_dir / "tiny" / "config.json").read_text())
    cfg = configs.StreamFormerConfig.from_hf_dict(d)
    assert cfg == configs.tiny()
    back = cfg.to_hf_dict()
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "image_size",
                "patch_size", "num_frames", "layer_norm_eps", "enable_causal_temporal", "add_lora_spatial",
                "hidden_act", "model_type", "qkv_bias"):
        assert back[key] == d[key], key


def test_bad_input_shape_is_a_clear_error():
    model = _randomised(configs.tiny())
    with pytest.raises(ValueError, match=r"expected pixels \[B, T, H, W, 3\]"):
        model(jnp.zeros((4, 32, 32, 3)))
    with pytest.raises(ValueError, match="smaller than one 16x16 patch"):
        model(jnp.zeros((1, 2, 8, 8, 3)))
