"""Streaming with the ring-buffer KV cache: official parity, window semantics, batching, one compile."""
import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import nnx

from streamformer_jax import FeatureExtractor
from streamformer_jax.models import config as configs
from streamformer_jax.param_tree import flat_params
from streamformer_jax.models.streamformer import normalize_pixels
from test_model import _randomised

TOL = 1e-5


def _stream_all(stream, frames):
    outs = [stream.push(f) for f in frames]
    return {k: np.stack([o[k] for o in outs]) for k in outs[0]}


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_stream_matches_official_kv_cache(fixtures_dir, name):
    fx = FeatureExtractor.from_checkpoint(fixtures_dir / name)
    video = np.load(fixtures_dir / name / "video.npy")
    ref = np.load(fixtures_dir / name / "outputs_stream.npz")
    got = _stream_all(fx.stream(), video)
    for key in ("pooler_output", "last_hidden_state"):
        np.testing.assert_allclose(got[key], ref[key], rtol=0, atol=TOL, err_msg=key)
    # up to the frame count, streaming equals one causal clip forward
    clip = fx(video)
    for key in ("pooler_output", "last_hidden_state"):
        np.testing.assert_allclose(got[key], clip[key], rtol=0, atol=TOL, err_msg=key)


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_sliding_window_past_frame_count_matches_reference(fixtures_dir, name):
    fx = FeatureExtractor.from_checkpoint(fixtures_dir / name)
    video = np.load(fixtures_dir / name / "video_long.npy")
    assert video.shape[0] == 3 * fx.config.num_frames
    ref = np.load(fixtures_dir / name / "outputs_stream_window.npz")
    got = _stream_all(fx.stream(window=fx.config.num_frames), video)
    for key in ("pooler_output", "last_hidden_state"):
        np.testing.assert_allclose(got[key], ref[key], rtol=0, atol=TOL, err_msg=key)


@pytest.mark.parametrize("window", [4, 3, 6])
def test_stream_equals_banded_causal_forward(window):
    """Streaming semantics: banded mask t-W < s <= t in every layer and time row min(t, F-1)."""
    cfg = configs.tiny(num_frames=4)
    model = _randomised(cfg, seed=5)
    fx = FeatureExtractor(cfg, flat_params(model))
    frames = np.random.default_rng(window).integers(0, 256, (11, 32, 32, 3), dtype=np.uint8)
    got = _stream_all(fx.stream(window=window), frames)
    time_ids = jnp.minimum(jnp.arange(11), cfg.num_frames - 1)
    ref = model(normalize_pixels(jnp.asarray(frames))[None], time_ids=time_ids, temporal_window=window)
    for key in ("pooler_output", "last_hidden_state"):
        np.testing.assert_allclose(got[key], np.asarray(ref[key][0]), rtol=0, atol=TOL, err_msg=key)
    # and it is not the unbounded causal forward: frames past the window differ
    unbounded = model(normalize_pixels(jnp.asarray(frames))[None], time_ids=time_ids)
    assert np.abs(got["pooler_output"][-1] - np.asarray(unbounded["pooler_output"][0, -1])).max() > 1e-4


def test_stream_compiles_once_and_keeps_constant_state():
    cfg = configs.tiny()
    fx = FeatureExtractor(cfg, flat_params(_randomised(cfg)))
    stream = fx.stream(window=3)
    frames = np.random.default_rng(0).integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    shapes = set()
    for f in frames:
        stream.push(f)
        shapes.add(tuple(stream._cache.keys.shape))
    assert fx._step._cache_size() == 1
    assert shapes == {(cfg.num_layers, 1, 3, cfg.num_patches, cfg.num_heads, cfg.head_dim)}
    assert stream.frames_seen == 20


def test_batched_streams_equal_single_streams():
    cfg = configs.tiny()
    fx = FeatureExtractor(cfg, flat_params(_randomised(cfg, seed=6)))
    frames = np.random.default_rng(1).integers(0, 256, (2, 9, 32, 32, 3), dtype=np.uint8)
    batched = fx.stream()
    outs = [batched.push(frames[:, t]) for t in range(9)]
    for b in range(2):
        single = _stream_all(fx.stream(), frames[b])
        got = np.stack([o["pooler_output"][b] for o in outs])
        np.testing.assert_allclose(got, single["pooler_output"], rtol=0, atol=TOL)


def test_stream_rejects_bad_frames():
    cfg = configs.tiny()
    stream = FeatureExtractor(cfg, flat_params(_randomised(cfg))).stream()
    with pytest.raises(TypeError, match="uint8"):
        stream.push(np.zeros((32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        stream.push(np.zeros((32, 32), np.uint8))
    stream.push(np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="reset"):
        stream.push(np.zeros((48, 48, 3), np.uint8))
    with pytest.raises(ValueError, match="causal"):
        cfg2 = configs.tiny(causal_temporal=False)
        FeatureExtractor(cfg2, flat_params(_randomised(cfg2))).stream().push(np.zeros((32, 32, 3), np.uint8))


def test_extractor_batched_clip_equals_unbatched(fixtures_dir):
    fx = FeatureExtractor.from_checkpoint(fixtures_dir / "tiny")
    video = np.load(fixtures_dir / "tiny" / "video.npy")
    single = fx(video)
    batched = fx(np.stack([video, video[::-1]]))
    np.testing.assert_allclose(batched["pooler_output"][0], single["pooler_output"], atol=TOL)
    assert batched["last_hidden_state"].shape == (2,) + single["last_hidden_state"].shape
    assert set(fx(video, return_tokens=False)) == {"pooler_output"}
