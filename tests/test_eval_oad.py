"""Online action detection feature extraction: resampling, chunking, chunk vs stream modes, sharding, resume."""
import json

import numpy as np
import pytest

from eval import oad_extract as O


def test_resample_indices_hand_computed():
    # n = 10 frames at 12 fps -> int(10 / 12 * 24) = 20 samples of linspace(0, 9, 20) = 0, .47, .95, 1.42, ...
    assert O.resample_indices(10, 12.0).tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9]
    # 30 fps -> 24 fps: 60 frames -> 48 samples, first 0, last 59, strictly fewer than the source
    idx = O.resample_indices(60, 30.0)
    assert len(idx) == 48 and idx[0] == 0 and idx[-1] == 59


def test_chunk_ends_hand_computed():
    # N24 = 20: 20 // 6 = 3 starts linspace(0, 20, 3) = 0, 10, 20 -> ends 6, 16, and 20 (20 + 6 > 20: last 6)
    assert O.chunk_ends(20).tolist() == [6, 16, 20]
    # N24 = 13: starts 0, 13 -> ends 6, 13
    assert O.chunk_ends(13).tolist() == [6, 13]
    assert O.chunk_ends(5).tolist() == []  # shorter than one chunk: no feature (reported as too short)
    frames = [np.full((1,), j) for j in range(20)]
    chunks = [c[:, 0].tolist() for c in O.iter_chunks(frames, 20)]
    assert chunks == [[0, 1, 2, 3, 4, 5], [10, 11, 12, 13, 14, 15], [14, 15, 16, 17, 18, 19]]


def test_output_name_follows_the_original():
    assert O.output_name("test/video_test_0001292.mp4") == "video_test_0001292.npy"
    assert O.output_name("/x/y/abc.def.mkv") == "abc.npy"


@pytest.fixture(scope="module")
def tiny_fx():
    from conftest import FIXTURES
    from streamformer_jax.api import FeatureExtractor
    from streamformer_jax.checkpoint import load_any

    # the tiny official fixture, with 8 time-embedding rows (4 more, random) so that the protocol's 6-frame
    # chunks use rows 0..5 as at full size (16 rows) instead of a resized table
    config, params = load_any(FIXTURES / "tiny")
    rows = np.random.default_rng(0).normal(0, 0.5, (4, config.hidden_size)).astype(np.float32)
    params = dict(params, **{"embeddings.time_embeddings": np.concatenate([params["embeddings.time_embeddings"],
                                                                           rows])})
    return FeatureExtractor(config.replace(num_frames=8), params)


@pytest.fixture(scope="module")
def clip_mp4(tmp_path_factory):
    from data_pipelines.pipeline.builtin import write_clip

    d = tmp_path_factory.mktemp("oad")
    # 16 frames at 8 fps -> N24 = int(16 / 8 * 24) = 48 -> 8 chunks
    write_clip(d / "clip_a.mp4", 16, (48, 40), 8, (220, 40, 40), False, (0, 16))
    write_clip(d / "clip_b.mp4", 12, (40, 40), 8, (40, 200, 60), True, (2, 10))
    return d


def _direct_chunk_features(fx, path):
    """Reference: decode everything, index with the protocol formulas, one forward per chunk."""
    from streamformer_jax.video import VideoReader

    with VideoReader(path, fx.config.image_size) as r:
        fps = r.source_fps
        frames = np.stack([f for _, f in r])
    n = len(frames)
    data = frames[np.linspace(0, n - 1, int(n / fps * 24)).astype(int)]
    n24 = len(data)
    feats = []
    for s in np.linspace(0, n24, n24 // 6).astype(int):
        clip = data[n24 - 6:] if s + 6 > n24 else data[s:s + 6]
        feats.append(fx(clip, return_tokens=False)["pooler_output"][-1])
    return np.stack(feats), data


def test_chunk_mode_equals_direct_protocol(tiny_fx, clip_mp4):
    # batch 1: the same compiled shape as the reference's single-clip forwards (saves a compilation)
    feats = O.extract_video(tiny_fx, clip_mp4 / "clip_a.mp4", mode="chunks", batch_size=1)
    ref, data = _direct_chunk_features(tiny_fx, clip_mp4 / "clip_a.mp4")
    assert len(data) == 48 and feats.shape == (8, 64) and feats.dtype == np.float32
    np.testing.assert_allclose(feats, ref, atol=1e-5, rtol=1e-5)


def test_stream_mode_carries_context(tiny_fx, clip_mp4):
    path = clip_mp4 / "clip_a.mp4"
    stream = O.extract_video(tiny_fx, path, mode="stream", window=48)
    chunks = O.extract_video(tiny_fx, path, mode="chunks", batch_size=1)
    _, data = _direct_chunk_features(tiny_fx, path)
    s = tiny_fx.stream(48)
    per_frame = np.stack([s.push(f)["pooler_output"] for f in data])
    ends = O.chunk_ends(48)
    assert stream.shape == chunks.shape == (8, 64)
    np.testing.assert_allclose(stream, per_frame[ends - 1], atol=1e-6)
    # chunk 0 = frames 0..5 in both modes (same context, time rows 0..5); later chunks see the whole past
    np.testing.assert_allclose(stream[0], chunks[0], atol=2e-5)
    assert np.abs(stream[1:] - chunks[1:]).max() > 1e-3


def test_extract_all_shards_resume_and_failures(tiny_fx, clip_mp4, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 definitely not a video")
    short = tmp_path / "short.npy"
    np.save(short, np.zeros((2, 32, 32, 3), np.uint8))  # 2 frames at 24 fps: < 6
    videos = [str(clip_mp4 / "clip_a.mp4"), str(clip_mp4 / "clip_b.mp4"), str(bad), str(short)]
    out = tmp_path / "feats"
    reps = [O.extract_all(tiny_fx, videos, out, num_shards=2, shard_index=h, progress=False,
                            batch_size=1) for h in (0, 1)]
    assert sorted(p.name for p in out.glob("*.npy")) == ["clip_a.npy", "clip_b.npy"]
    assert [r["extracted"] for r in reps] == [1, 1]
    failed = {f["video"]: f["error"] for r in reps for f in r["failed"]}
    assert set(failed) == {str(bad), str(short)} and "too short" in failed[str(short)]
    assert json.loads((out / "failed.shard1.json").read_text())["failed"][0]["video"] in (str(bad), str(short))
    # clip_b: 12 frames at 8 fps -> N24 = 36 -> 6 features
    assert np.load(out / "clip_b.npy").shape == (6, 64)
    # resume: nothing is recomputed
    mtime = (out / "clip_a.npy").stat().st_mtime_ns
    rep = O.extract_all(tiny_fx, videos, out, num_shards=1, shard_index=0, progress=False, batch_size=1)
    assert rep["extracted"] == 0 and rep["skipped_existing"] == 2
    assert (out / "clip_a.npy").stat().st_mtime_ns == mtime
    assert not list(out.glob(".*.tmp"))


def test_cli_and_annotation_folder(tmp_path, clip_mp4, capsys):
    from conftest import FIXTURES

    ann = tmp_path / "ann"
    ann.mkdir()
    (ann / "train.json").write_text(json.dumps({"clip_a.mp4": {}}))
    (ann / "val.json").write_text(json.dumps({"clip_b.mp4": {}}))
    assert O.video_list_from_annotations(ann, "THUMOS14") == ["clip_a.mp4", "clip_b.mp4",
                                                              "test/video_test_0001292.mp4"]
    assert O.video_list_from_annotations(ann, "TVSeries") == ["clip_a.mp4", "clip_b.mp4"]
    rc = O.main(["--checkpoint", str(FIXTURES / "tiny"), "--annotation-folder", str(ann), "--dataset", "TVSeries",
                 "--data-path", str(clip_mp4), "--out", str(tmp_path / "f"), "--no-progress"])
    assert rc == 0
    assert np.load(tmp_path / "f" / "clip_a.npy").shape == (8, 64)
    assert "2 extracted" in capsys.readouterr().err
