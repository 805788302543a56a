"""Feature extraction: `python -m streamformer_jax.extract`, `extract_features`, and the frame sources."""
import gc
import math
import os
import pathlib
import subprocess
import sys
import tracemalloc
import warnings

import av
import numpy as np
import pytest

from streamformer_jax.api import FeatureExtractor
from streamformer_jax.extract import extract_features, main
from streamformer_jax.models import config as model_config
from streamformer_jax.param_tree import flat_params
from streamformer_jax.models.streamformer import init_model
from streamformer_jax.video import TruncatedVideoWarning, VideoReader, VideoReadError, select_nearest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
KEYS = {"pooler_output", "last_hidden_state", "timestamps"}


def random_extractor(**overrides) -> FeatureExtractor:
    """A randomly initialised tiny model (no shared data needed)."""
    cfg = model_config.tiny(**overrides)
    return FeatureExtractor(cfg, flat_params(init_model(cfg)))


def encode_video(path, num_frames, width=96, height=72, fps=25, codec="mpeg4", options=None):
    """A moving-gradient test video written with PyAV."""
    yy, xx = np.mgrid[:height, :width]
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(num_frames):
            img = np.stack([(xx * 3 + i * 5) % 256, (yy * 3 + i * 2) % 256, ((xx + yy) + i * 7) % 256], -1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img.astype(np.uint8), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def tiny_fx():
    from conftest import FIXTURES

    return FeatureExtractor.from_checkpoint(FIXTURES / "tiny")


@pytest.fixture(scope="module")
def random_fx():
    return random_extractor(image_size=64)


def cli_env():
    env = dict(os.environ)
    env.setdefault("JAX_PLATFORMS", "cpu")
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# -- .npy input through the CLI: official parity --------------------------------------------------------------
def test_cli_subprocess_npy_stream_matches_official(fixtures_dir, tmp_path):
    tiny = fixtures_dir / "tiny"
    out = tmp_path / "feats.npz"
    proc = subprocess.run([sys.executable, "-m", "streamformer_jax.extract", "--checkpoint", str(tiny),
                           "--video", str(tiny / "video.npy"), "--out", str(out), "--mode", "stream",
                           "--no-progress"], cwd=REPO_ROOT, env=cli_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    ref = np.load(tiny / "outputs_stream.npz")
    with np.load(out) as got:
        assert set(got.files) == KEYS
        t = ref["pooler_output"].shape[0]
        assert got["pooler_output"].dtype == np.float32 and got["last_hidden_state"].dtype == np.float32
        assert got["timestamps"].dtype == np.float64 and got["timestamps"].shape == (t,)
        np.testing.assert_array_equal(got["timestamps"], np.arange(t))  # .npy default: 1 frame per second
        for key in ("pooler_output", "last_hidden_state"):
            assert got[key].shape == ref[key].shape
            np.testing.assert_allclose(got[key], ref[key], atol=1e-5, rtol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feats.npz"]  # no temporary left behind


def test_cli_npy_clip_matches_official(fixtures_dir, tmp_path, capsys):
    tiny = fixtures_dir / "tiny"
    out = tmp_path / "sub" / "clip.npz"
    rc = main(["--checkpoint", str(tiny), "--video", str(tiny / "video.npy"), "--out", str(out),
               "--mode", "clip", "--npy-fps", "4"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "4/4" in err and "wrote" in err  # the progress bar and the summary
    ref = np.load(tiny / "outputs_clip.npz")
    with np.load(out) as got:
        assert set(got.files) == KEYS
        np.testing.assert_allclose(got["timestamps"], np.arange(4) / 4.0)
        for key in ("pooler_output", "last_hidden_state"):
            np.testing.assert_allclose(got[key], ref[key], atol=1e-5, rtol=0)


# -- modes -----------------------------------------------------------------------------------------------------
def test_clip_mode_splits_into_consecutive_clips(fixtures_dir, tiny_fx, tmp_path):
    video = np.load(fixtures_dir / "tiny" / "video_long.npy")[:10]  # 2.5 x num_frames
    path = tmp_path / "ten.npy"
    np.save(path, video)
    got = extract_features(tiny_fx, path, mode="clip")
    want = [tiny_fx(video[a:b]) for a, b in ((0, 4), (4, 8), (8, 10))]  # the last clip is shorter
    for key in ("pooler_output", "last_hidden_state"):
        np.testing.assert_allclose(got[key], np.concatenate([w[key] for w in want]), atol=1e-6, rtol=0)
    np.testing.assert_array_equal(got["timestamps"], np.arange(10.0))
    # --window sets the clip length in clip mode.
    got = extract_features(tiny_fx, path, mode="clip", window=2)
    want = np.concatenate([tiny_fx(video[a:a + 2])["pooler_output"] for a in range(0, 10, 2)])
    np.testing.assert_allclose(got["pooler_output"], want, atol=1e-6, rtol=0)
    # Stream mode past num_frames, tokens off, to a file: the official sliding-window reference (W = 4).
    info = extract_features(tiny_fx, fixtures_dir / "tiny" / "video_long.npy", mode="stream",
                            return_tokens=False, out=tmp_path / "long.npz")
    assert info["num_frames"] == 12
    ref = np.load(fixtures_dir / "tiny" / "outputs_stream_window.npz")
    with np.load(tmp_path / "long.npz") as got:
        assert set(got.files) == {"pooler_output", "timestamps"}
        np.testing.assert_allclose(got["pooler_output"], ref["pooler_output"], atol=1e-5, rtol=0)


# -- real video ------------------------------------------------------------------------------------------------
def test_real_clip_fps_timestamps_and_stream_features(videos_dir, tiny_fx):
    path = videos_dir / "carphone_pristine.mp4"
    with VideoReader(path) as full_reader:  # every frame, native size: the reference clock
        duration, source_fps = full_reader.duration, full_reader.source_fps
        t_all = np.array([t for t, _ in full_reader])
    assert len(t_all) == 120 and t_all[0] == 0.0

    fps = 5.0
    selected = list(VideoReader(path, 32, fps=fps))
    ts = np.array([t for t, _ in selected])
    # One frame per 1/fps step up to the last frame; consistent with the duration.
    assert len(ts) == math.floor((t_all[-1] - t_all[0]) * fps) + 1 == 20
    assert abs(len(ts) - duration * fps) <= 1
    assert np.all(np.diff(ts) > 0)
    for k, t in enumerate(ts):  # each kept frame is the source frame nearest to its grid time
        grid = t_all[0] + k / fps
        assert t == t_all[np.argmin(np.abs(t_all - grid))]
        assert abs(t - grid) <= 0.5 / source_fps + 1e-9
    for _, frame in selected:
        assert frame.shape == (32, 32, 3) and frame.dtype == np.uint8

    got = extract_features(tiny_fx, path, fps=fps, mode="stream")
    np.testing.assert_array_equal(got["timestamps"], ts)

    # 12 fps -> 5 fps: grid and source clocks do not align, so "nearest" differs from "first at or after".
    drum = videos_dir / "water_bottle_drumming.mp4"
    t_drum = np.array([t for t, _ in VideoReader(drum)])
    ts_drum = np.array([t for t, _ in VideoReader(drum, 32, fps=fps)])
    assert len(ts_drum) == math.floor(t_drum[-1] * fps) + 1 == 42
    nearest = [t_drum[np.argmin(np.abs(t_drum - k / fps))] for k in range(len(ts_drum))]
    np.testing.assert_array_equal(ts_drum, nearest)
    assert ts_drum[1] == pytest.approx(2 / 12)  # grid 0.2 s: 0.1667 s is nearer than 0.25 s
    stream = tiny_fx.stream()
    want = [stream.push(frame) for _, frame in selected]
    for key in ("pooler_output", "last_hidden_state"):
        np.testing.assert_allclose(got[key], np.stack([w[key] for w in want]), atol=1e-6, rtol=0)


def test_resize_is_shorter_side_and_centre_crop(tmp_path):
    # Wide frames: red | green (two thirds) | blue. A centred crop of the short-side-resized frame sees only
    # green; a crop anchored left or right would catch red or blue.
    wide = np.zeros((3, 48, 96, 3), np.uint8)
    wide[:, :, :16] = (255, 0, 0)
    wide[:, :, 16:80] = (0, 255, 0)
    wide[:, :, 80:] = (0, 0, 255)
    tall = wide.transpose(0, 2, 1, 3).copy()  # red top, blue bottom
    for name, arr in (("wide", wide), ("tall", tall)):
        np.save(tmp_path / f"{name}.npy", arr)
        frames = [f for _, f in VideoReader(tmp_path / f"{name}.npy", 32)]
        assert len(frames) == 3
        for f in frames:
            assert f.shape == (32, 32, 3)
            assert f[..., 1].min() > 240 and f[..., 0].max() < 15 and f[..., 2].max() < 15, name
    # The same through an encoded video (lossy colours): the centre stays green.
    path = tmp_path / "wide.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 96, 48, "yuv420p"
        for _ in range(3):
            for packet in stream.encode(av.VideoFrame.from_ndarray(wide[0], format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    frames = [f for _, f in VideoReader(path, 32)]
    assert len(frames) == 3
    f = frames[0].astype(int)
    assert f.shape == (32, 32, 3) and f[..., 1].min() > 200 and f[..., 0].max() < 60 and f[..., 2].max() < 60


def test_select_nearest_rule():
    # Regular 30 fps clock down to 10 fps: every third frame, no drift.
    times = [i / 30 for i in range(30)]
    kept = [p for _, p in select_nearest(((t, i) for i, t in enumerate(times)), 10.0)]
    assert kept == list(range(0, 30, 3))
    # A target rate above the source rate (or gaps of a variable-rate video) never duplicates a frame.
    vfr = [0.0, 0.73, 1.13, 1.6, 3.0]
    kept = [p for _, p in select_nearest(((t, i) for i, t in enumerate(vfr)), 5.0)]
    assert kept == [0, 1, 2, 3, 4]
    # Ties go to the earlier frame: grid 0.5 is halfway between 0.25 and 0.75.
    kept = [t for t, _ in select_nearest(((t, t) for t in (0.0, 0.25, 0.75, 1.0)), 2.0)]
    assert kept == [0.0, 0.25, 1.0]


# -- bounded memory ----------------------------------------------------------------------------------------------
def _peak(fx, video, **kwargs) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        extract_features(fx, video, **kwargs)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.slow  # about 15 s
def test_long_video_streams_in_bounded_memory(random_fx, tmp_path):
    n = 64  # 16 windows; the long video is 4x that (64 windows)
    short, long_ = encode_video(tmp_path / "short.mp4", n), encode_video(tmp_path / "long.mp4", 4 * n)
    out = tmp_path / "out.npz"
    extract_features(random_fx, encode_video(tmp_path / "warm.mp4", 6), out=out)  # compile outside the trace
    slack = 64 * 1024
    for tokens in (False, True):
        p_short = _peak(random_fx, short, out=out, return_tokens=tokens)
        p_long = _peak(random_fx, long_, out=out, return_tokens=tokens)
        assert p_long < 1.5 * p_short + slack, (tokens, p_short, p_long)
        with np.load(out) as got:
            assert got["pooler_output"].shape == (4 * n, 64)
            assert ("last_hidden_state" in got.files) == tokens
            if tokens:
                assert got["last_hidden_state"].shape == (4 * n, 16, 64)
            np.testing.assert_allclose(got["timestamps"], np.arange(4 * n) / 25, atol=1e-9)
    # Control: collecting the outputs in memory (what the file mode avoids) breaks that bound, so the
    # measurement does see per-frame growth.
    p_short = _peak(random_fx, short, return_tokens=True)
    p_long = _peak(random_fx, long_, return_tokens=True)
    assert p_long > 1.5 * p_short + slack, (p_short, p_long)


# -- errors and atomic output --------------------------------------------------------------------------------------
def _bad_inputs(tmp_path):
    missing = tmp_path / "missing.mp4"
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    as_float = tmp_path / "float.npy"
    np.save(as_float, np.zeros((2, 32, 32, 3), np.float32))
    no_channels = tmp_path / "gray.npy"
    np.save(no_channels, np.zeros((2, 32, 32), np.uint8))
    rgba = tmp_path / "rgba.npy"
    np.save(rgba, np.zeros((2, 32, 32, 4), np.uint8))
    return [(missing, "missing file"), (corrupt, "cannot open container"), (empty, "empty file"),
            (as_float, "expected dtype uint8"), (no_channels, "expected shape [T, H, W, 3]"),
            (rgba, "expected shape [T, H, W, 3]")]


def test_cli_errors_are_clear(tmp_path, capsys):
    for path, reason in _bad_inputs(tmp_path):
        out = tmp_path / "out.npz"
        # The input is checked before the checkpoint is loaded, so any checkpoint path will do.
        rc = main(["--checkpoint", str(tmp_path / "no_ckpt"), "--video", str(path), "--out", str(out)])
        err = capsys.readouterr().err
        assert rc == 2, path
        assert err.startswith(f"error: {path}: ") and reason in err, err
        assert "Traceback" not in err and not out.exists()
    with pytest.raises(VideoReadError, match="float32"):
        extract_features(tmp_path / "no_ckpt", tmp_path / "float.npy")
    # A bad checkpoint, with a good input.
    good = tmp_path / "good.npy"
    np.save(good, np.zeros((2, 32, 32, 3), np.uint8))
    rc = main(["--checkpoint", str(tmp_path / "no_ckpt"), "--video", str(good), "--out", str(tmp_path / "o.npz")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "cannot load checkpoint" in err and str(tmp_path / "no_ckpt") in err and "Traceback" not in err
    # Bad option values are usage errors (exit 2).
    with pytest.raises(SystemExit) as exc:
        main(["--checkpoint", "x", "--video", str(good), "--out", "o.npz", "--window", "0"])
    assert exc.value.code == 2


def test_cli_subprocess_corrupt_file(tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    proc = subprocess.run([sys.executable, "-m", "streamformer_jax.extract", "--checkpoint", str(tmp_path),
                           "--video", str(corrupt), "--out", str(tmp_path / "o.npz")], cwd=REPO_ROOT,
                          env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert f"error: {corrupt}: cannot open container" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o.npz").exists()


def test_failed_run_leaves_previous_output_untouched(random_fx, tmp_path, monkeypatch):
    import streamformer_jax.extract as extract

    video = tmp_path / "v.npy"
    np.save(video, np.zeros((6, 64, 64, 3), np.uint8))
    out = tmp_path / "out.npz"
    out.write_bytes(b"previous")

    def failing(*args, **kwargs):
        yield 0.0, np.zeros(64, np.float32), np.zeros((16, 64), np.float32)
        raise RuntimeError("boom")

    monkeypatch.setattr(extract, "iter_features", failing)
    with pytest.raises(RuntimeError, match="boom"):
        extract_features(random_fx, video, out=out)
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npz", "v.npy"]  # spool directory removed


def test_truncated_video_warns(random_fx, tmp_path):
    # moov atom first (faststart), so a file cut in half still opens and announces the full duration.
    full = encode_video(tmp_path / "full.mp4", 50, 64, 64, options={"movflags": "faststart"})
    data = full.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.warns(TruncatedVideoWarning, match="cut.mp4.*truncated"):
        got = extract_features(random_fx, cut, return_tokens=False)
    assert 0 < len(got["timestamps"]) < 50
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the complete file does not warn
        assert len(extract_features(random_fx, full, return_tokens=False)["timestamps"]) == 50
