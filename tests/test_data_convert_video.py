"""PyAV decoding used by the converters: rate, cap, resize, errors; real clips when ../shared is present."""
import av
import numpy as np
import pytest

from data_helpers import frame_index_of, frame_pattern, make_test_video, truncate_file
from data_pipelines.records import frames as jpeg
from streamformer_jax import video


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_test_video(tmp_path_factory.mktemp("v") / "clip.mp4", 24, (64, 48), 8)


def test_all_frames_in_order(clip):
    times, frames = video.read_video(clip)
    np.testing.assert_allclose(times, np.arange(24) / 8)
    assert frames.shape == (24, 48, 64, 3) and frames.dtype == np.uint8
    assert [frame_index_of(f) for f in frames] == list(range(24))


def test_target_fps_keeps_first_frame_at_each_tick(clip):
    times, frames = video.read_video(clip, fps=3)
    # ticks 0, 1/3, 2/3, 1, ... -> first source frame (multiples of 1/8) at or after each tick
    expected = [0, 3, 6, 8, 11, 14, 16, 19, 22]
    np.testing.assert_allclose(times, np.asarray(expected) / 8)
    assert [frame_index_of(f) for f in frames] == expected
    # a target above the source rate never duplicates frames
    assert len(video.read_video(clip, fps=30)[0]) == 24


def test_max_frames_lowers_rate_to_cover_whole_video(clip):
    times, _ = video.read_video(clip, max_frames=6)  # 3 s video -> 2 fps grid
    np.testing.assert_allclose(times, [0, 0.5, 1.0, 1.5, 2.0, 2.5])
    assert video.plan(video.probe(clip), None, 6, None).fps == pytest.approx(2.0)


def test_short_side_resize_keeps_aspect_and_never_upscales(clip):
    _, frames = video.read_video(clip, short_side=24)
    assert frames.shape[1:] == (24, 32, 3)
    assert [frame_index_of(f) for f in frames] == list(range(24))
    assert video.read_video(clip, short_side=480)[1].shape[1:3] == (48, 64)
    assert video.downscale_size(640, 272, 224) == (528, 224)
    assert video.downscale_size(272, 640, 224) == (224, 528)


def test_errors_name_the_file(tmp_path, clip):
    missing = tmp_path / "nope.mp4"
    with pytest.raises(video.VideoReadError, match="nope.mp4: missing file"):
        video.read_video(missing)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(video.VideoReadError, match="empty.mp4: empty file"):
        video.read_video(empty)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 100)
    with pytest.raises(video.VideoReadError, match="junk.mp4: cannot open"):
        video.read_video(junk)


def test_truncated_faststart_file_is_detected(tmp_path):
    # moov at the front: the container opens fine and frames decode until the data runs out.
    path = tmp_path / "fast.mp4"
    with av.open(str(path), "w", options={"movflags": "faststart"}) as out:
        s = out.add_stream("mpeg4", rate=8)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(40):
            frame = av.VideoFrame.from_ndarray(frame_pattern(i, (64, 48)), format="rgb24")
            frame.pts = i
            for p in s.encode(frame):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    assert len(video.read_video(path)[0]) == 40
    truncate_file(path, 0.6)
    with pytest.raises(video.VideoReadError, match="fast.mp4: truncated"):
        video.read_video(path)


def test_read_image(tmp_path):
    img = frame_pattern(5, (64, 48))
    path = tmp_path / "f.jpg"
    path.write_bytes(jpeg.encode_jpeg(img))
    out = video.read_image(path)
    assert out.shape == (48, 64, 3) and frame_index_of(out) == 5
    assert video.read_image(path, short_side=24).shape == (24, 32, 3)


@pytest.mark.parametrize("name,fps_src,dur", [("bikes.mp4", 25, 10.0), ("water_bottle_drumming.mp4", 12, 8.33),
                                              ("tree.avi", 15, 29.6), ("carphone_pristine.mp4", 29.97, 4.0)])
def test_real_clips(videos_dir, name, fps_src, dur):
    info = video.probe(videos_dir / name)
    assert info.source_fps == pytest.approx(fps_src, rel=1e-3) and info.duration == pytest.approx(dur, abs=0.05)
    times, frames = video.read_video(videos_dir / name, fps=4, short_side=112)
    assert min(frames.shape[1:3]) == 112 and np.all(np.diff(times) > 0)
    # tree.avi has AVI "drop frames" (68 decoded of 444 announced): not truncated, its times stay sparse
    assert times[-1] >= 0.85 * dur
    assert len(times) <= 4 * dur + 1
