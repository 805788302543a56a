"""Stream pool (continuous batching): streams that come and go equal single streams, one compile per pool size,
bad frames rejected per stream, untouched slots, official parity, several devices, bfloat16."""
import numpy as np
import pytest

import jax

from streamformer_jax import FeatureExtractor, PoolFullError, StreamFrameError
from streamformer_jax.models import streaming
from streamformer_jax.param_tree import flat_params

TOL = 1e-5  # official parity (project standard)
# Batched pools agree with a single stream to float32 rounding; measured up to 3.3e-6 on the small fixture
# (outputs up to 4.8), the same size as our distance from the official outputs. The batch-invariant pool
# (the default) is compared bit for bit.
BATCHED_TOL = 1e-5
KEYS = ("pooler_output", "last_hidden_state")


@pytest.fixture(scope="module")
def tiny(request):
    from conftest import FIXTURES, require_shared

    return FeatureExtractor.from_checkpoint(require_shared(FIXTURES / "tiny"))


def single_stream(fx, frames, window=None):
    stream = fx.stream(window)
    outs = [stream.push(f) for f in frames]
    return {k: np.stack([o[k] for o in outs]) for k in outs[0]}


def random_schedule(pool, videos, seed, reopen=()):
    """Opens each video when a slot is free, pushes random subsets of the open streams, closes a stream after
    its last frame; a stream in `reopen` is restarted (open again) after its first 3 frames. Returns per-video
    outputs (for a reopened stream: those after the restart) and the largest number of streams in one call."""
    rng = np.random.default_rng(seed)
    todo, pos, outs, widest = list(videos), {}, {k: [] for k in videos}, 0
    while todo or pos:
        if todo and pool.free_slots and rng.random() < 0.6:
            key = todo.pop(0)
            pool.open(key)
            pos[key] = 0
        live = [k for k in pos if rng.random() < 0.7]
        if not live:
            continue
        widest = max(widest, len(live))
        res = pool.push({k: videos[k][pos[k]] for k in live})
        assert set(res) == set(live)
        for k in live:
            outs[k].append(res[k])
            pos[k] += 1
            assert pool.frames_seen(k) == pos[k]
            if k in reopen and pos[k] == 3:
                pool.open(k)  # restart in place: frame 0 again
                pos[k], outs[k] = 0, []
                reopen = tuple(r for r in reopen if r != k)
            elif pos[k] == len(videos[k]):
                pool.close(k)
                del pos[k]
    return {k: {n: np.stack([o[n] for o in v]) for n in v[0]} for k, v in outs.items()}, widest


def _videos(fx, count, seed, lo=2, hi=13):
    rng = np.random.default_rng(seed)
    s = fx.config.image_size
    return {f"cam{i}": rng.integers(0, 256, (int(rng.integers(lo, hi)), s, s, 3), dtype=np.uint8)
            for i in range(count)}


@pytest.mark.parametrize("batch_invariant", [True, False])
def test_streams_opened_and_closed_at_random_equal_single_streams(tiny, batch_invariant):
    videos = _videos(tiny, 9, seed=3)
    refs = {k: single_stream(tiny, v) for k, v in videos.items()}
    before = tiny._pool_step._cache_size()
    for seed in (0, 1):
        pool = tiny.stream_pool(slots=4, batch_invariant=batch_invariant)
        got, widest = random_schedule(pool, videos, seed, reopen=("cam2",))
        assert widest >= 3  # streams really did share calls
        for k in videos:
            for n in KEYS:
                if batch_invariant:
                    np.testing.assert_array_equal(got[k][n], refs[k][n], err_msg=f"{k} {n}")
                else:
                    np.testing.assert_allclose(got[k][n], refs[k][n], rtol=0, atol=BATCHED_TOL, err_msg=k)
        assert len(pool) == 0 and pool.free_slots == 4
    # one compiled step for the pool size, whatever came and went (and a second pool of that size reuses it)
    assert tiny._pool_step._cache_size() - before == 1
    tiny.stream_pool(slots=2, batch_invariant=batch_invariant).push({})  # nothing pushed: nothing compiled
    assert tiny._pool_step._cache_size() - before == 1


def test_one_compilation_per_pool_size(tiny, monkeypatch):
    """Counted independently of jit's cache: the step's Python body runs once per trace (= compilation)."""
    traces = []
    original = streaming.pool_step

    def counting(model, cache, *args, **kwargs):
        traces.append(cache.keys.shape[1])
        return original(model, cache, *args, **kwargs)

    monkeypatch.setattr(streaming, "pool_step", counting)
    fx = FeatureExtractor(tiny.config, flat_params(tiny.model))  # a fresh extractor: nothing compiled yet
    videos = _videos(fx, 6, seed=4, hi=8)
    random_schedule(fx.stream_pool(slots=3, batch_invariant=False), videos, seed=2)
    random_schedule(fx.stream_pool(slots=3, batch_invariant=False), videos, seed=5)
    assert traces == [3]
    random_schedule(fx.stream_pool(slots=5, batch_invariant=False), videos, seed=2)
    assert traces == [3, 5]


def test_pool_matches_official_stream_and_window_outputs(fixtures_dir):
    """Both official references at once in one pool, started at different times, beside a third stream."""
    for name in ("tiny", "small"):
        fx = FeatureExtractor.from_checkpoint(fixtures_dir / name)
        short = np.load(fixtures_dir / name / "video.npy")
        long = np.load(fixtures_dir / name / "video_long.npy")  # 3 x num_frames: the sliding window
        refs = {"short": np.load(fixtures_dir / name / "outputs_stream.npz"),
                "long": np.load(fixtures_dir / name / "outputs_stream_window.npz")}
        for batch_invariant in (True, False):
            pool = fx.stream_pool(slots=3, batch_invariant=batch_invariant)
            pool.open("long")
            pool.open("noise")
            noise = np.random.default_rng(0).integers(0, 256, long.shape, dtype=np.uint8)
            outs = {"short": [], "long": []}
            for t in range(len(long)):
                if t == 5:
                    pool.open("short")
                frames = {"long": long[t], "noise": noise[t]}
                if 5 <= t < 5 + len(short):
                    frames["short"] = short[t - 5]
                res = pool.push(frames)
                for k in outs:
                    if k in res:
                        outs[k].append(res[k])
            for k, ref in refs.items():
                for n in KEYS:
                    got = np.stack([o[n] for o in outs[k]])
                    np.testing.assert_allclose(got, ref[n], rtol=0, atol=TOL, err_msg=f"{name} {k} {n}")


def test_unpushed_streams_are_untouched(tiny):
    videos = _videos(tiny, 3, seed=5, lo=6, hi=7)
    pool = tiny.stream_pool(slots=3)
    for k in videos:
        pool.open(k)
    pool.push({k: v[0] for k, v in videos.items()})
    slot_b = pool._slot_of["cam1"]
    keys_before = np.asarray(pool._cache.keys)[:, slot_b].copy()
    counters_before = np.asarray(pool._cache.next_frame).copy()
    for t in range(1, 4):  # cam1 sits out three calls
        pool.push({"cam0": videos["cam0"][t], "cam2": videos["cam2"][t]})
    np.testing.assert_array_equal(np.asarray(pool._cache.keys)[:, slot_b], keys_before)
    assert int(np.asarray(pool._cache.next_frame)[slot_b]) == counters_before[slot_b] == 1
    assert pool.frames_seen("cam1") == 1 and pool.frames_seen("cam0") == 4
    # and when it comes back it continues at its frame 1
    rest = [pool.push({"cam1": f})["cam1"] for f in videos["cam1"][1:]]
    ref = single_stream(tiny, videos["cam1"])
    np.testing.assert_array_equal(np.stack([r["pooler_output"] for r in rest]), ref["pooler_output"][1:])


def test_bad_frames_are_rejected_per_stream_and_the_others_go_on(tiny):
    videos = dict(zip(("good", "bad"), _videos(tiny, 2, seed=6, lo=5, hi=6).values()))
    s = tiny.config.image_size
    pool = tiny.stream_pool(slots=3)
    pool.open("good")
    pool.open("bad")
    pool.push({"good": videos["good"][0], "bad": videos["bad"][0]})
    bad_frames = [np.zeros((s, s, 3), np.float32), np.zeros((s + 16, s, 3), np.uint8), np.zeros((s, s), np.uint8)]
    reasons = ["dtype float32", f"shape [{s + 16}, {s}, 3]", f"shape [{s}, {s}]"]
    for t, (frame, reason) in enumerate(zip(bad_frames, reasons), start=1):
        with pytest.raises(StreamFrameError) as info:
            pool.push({"good": videos["good"][t], "bad": frame, "ghost": videos["good"][t]})
        err = info.value
        assert set(err.errors) == {"bad", "ghost"}
        assert f"stream 'bad': expected a uint8 RGB frame of shape [{s}, {s}, 3], got {reason}" in str(err)
        assert "stream 'ghost': not open" in str(err)
        assert set(err.outputs) == {"good"}  # the good stream was processed in the same call
        assert pool.frames_seen("bad") == 1 and pool.frames_seen("good") == t + 1
    rest = [pool.push({"bad": f})["bad"] for f in videos["bad"][1:]]  # "bad" goes on where it was
    ref = single_stream(tiny, videos["bad"])
    np.testing.assert_array_equal(np.stack([r["pooler_output"] for r in rest]), ref["pooler_output"][1:])
    assert pool.frames_seen("good") == 4


def test_open_close_errors_and_reuse_of_slots(tiny):
    pool = tiny.stream_pool(slots=2, return_tokens=False)
    assert pool.open("a") == 0 and pool.open("b") == 1
    with pytest.raises(PoolFullError, match="all 2 slots are in use"):
        pool.open("c")
    with pytest.raises(KeyError, match="'zz' is not open"):
        pool.close("zz")
    pool.close("a")
    assert pool.open("c") == 0 and pool.streams == ("b", "c")
    frame = np.zeros((32, 32, 3), np.uint8)
    out = pool.push({"c": frame})
    assert set(out["c"]) == {"pooler_output"} and out["c"]["pooler_output"].dtype == np.float32
    with pytest.raises(ValueError, match="slots must be >= 1"):
        tiny.stream_pool(slots=0)


def test_stream_is_the_one_slot_pool(tiny, fixtures_dir):
    video = np.load(fixtures_dir / "tiny" / "video_long.npy")
    ref = single_stream(tiny, video)
    pool = tiny.stream_pool(slots=1)
    pool.open(0)
    got = [pool.push({0: f})[0] for f in video]
    for n in KEYS:
        np.testing.assert_array_equal(np.stack([g[n] for g in got]), ref[n])


def test_pool_over_two_devices_equals_single_streams(tiny):
    devices = jax.devices()[:2]
    assert len(devices) == 2  # conftest: 8 fake CPU devices
    videos = _videos(tiny, 6, seed=7)
    refs = {k: single_stream(tiny, v) for k, v in videos.items()}
    pool = tiny.stream_pool(slots=4, devices=devices)
    assert len(pool._cache.keys.sharding.device_set) == 2
    got, _ = random_schedule(pool, videos, seed=3)
    for k in videos:
        for n in KEYS:
            np.testing.assert_array_equal(got[k][n], refs[k][n], err_msg=k)
    with pytest.raises(ValueError, match="cannot be split evenly"):
        tiny.stream_pool(slots=3, devices=devices)


# -- bfloat16 ----------------------------------------------------------------------------------------------------
# bfloat16 has an 8-bit significand (unit roundoff 2^-8 = 0.39 %); over the fixtures' layers the outputs' relative
# (Frobenius) error against float32 measured 0.65-0.99 % and the worst per-frame cosine similarity 0.99991 (tiny
# and small, clip and sliding-window stream). Tolerances with about 2x margin: 2 % relative, cosine >= 0.9995.
BF16_REL = 0.02
BF16_COS = 0.9995


def assert_bf16_close(got, ref, what):
    for n in KEYS:
        a, b = ref[n].reshape(len(ref[n]), -1), got[n].reshape(len(got[n]), -1)
        assert got[n].dtype == np.float32, what
        rel = np.linalg.norm(b - a) / np.linalg.norm(a)
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert 1e-4 < rel < BF16_REL, (what, n, rel)  # > 1e-4: bfloat16 really was used
        assert cos.min() > BF16_COS, (what, n, cos.min())


@pytest.mark.parametrize("name", ["tiny", pytest.param("small", marks=pytest.mark.slow)])
def test_bfloat16_within_tolerance_of_float32(fixtures_dir, name):
    f32 = FeatureExtractor.from_checkpoint(fixtures_dir / name)
    b16 = FeatureExtractor.from_checkpoint(fixtures_dir / name, dtype="bfloat16")
    assert b16.config.dtype == "bfloat16" and f32.astype("bfloat16").config.dtype == "bfloat16"
    video = np.load(fixtures_dir / name / "video.npy")
    long = np.load(fixtures_dir / name / "video_long.npy")
    assert_bf16_close(b16(video), np.load(fixtures_dir / name / "outputs_clip.npz"), f"{name} clip")
    official_window = np.load(fixtures_dir / name / "outputs_stream_window.npz")
    assert_bf16_close(single_stream(b16, long), official_window, f"{name} stream")
    pool = b16.stream_pool(slots=2)
    pool.open("x")
    got = [pool.push({"x": f})["x"] for f in long]
    assert_bf16_close({n: np.stack([g[n] for g in got]) for n in KEYS}, official_window, f"{name} pool")
    # The entries are bfloat16 values; on CPU they are stored as float32 (streaming.cache_dtype), exactly.
    keys = pool._cache.keys
    assert keys.dtype == streaming.cache_dtype("bfloat16")
    assert np.array_equal(np.asarray(keys), np.asarray(keys.astype(jax.numpy.bfloat16).astype(keys.dtype)))
    assert streaming.cache_dtype("bfloat16", "tpu") == jax.numpy.bfloat16
    assert streaming.cache_dtype("bfloat16", "cpu") == jax.numpy.float32
