"""COCO pseudo-videos in the VIS pipeline (spec §6.7): per-frame random rotation of image and masks."""
import math

import numpy as np
import pytest

from data_pipelines.records import frames as jpeg
from data_pipelines.records import schema
from data_pipelines.pipeline import augment, transforms
from data_pipelines.records.frames import JpegDecoder

S = 48  # stored image size (square) and output size: the training crop is then the whole rotated image
T = 8


def _square_image(size=S, box=(14, 34, 12, 30)):
    """Dark image with one bright square (rows box[0]:box[1], cols box[2]:box[3]) and its mask."""
    img = np.full((size, size, 3), 20, np.uint8)
    mask = np.zeros((size, size), np.uint8)
    r0, r1, c0, c1 = box
    img[r0:r1, c0:c1] = 235
    mask[r0:r1, c0:c1] = 1
    return img, mask


def _record(dataset, img, mask, category=3):
    lengths, counts = schema.encode_masks(mask[None, None])
    return schema.encode_record(dict(
        task="vis", video_id="000001", dataset=dataset, frames=[jpeg.encode_jpeg(img, quality=95)],
        frame_times=[0.0], fps=6.0, source_fps=6.0, height=img.shape[0], width=img.shape[1], duration=1 / 6,
        categories=np.array([category], np.int32), mask_rle_lengths=lengths, mask_rle_counts=counts))


def _transform(train=True, **kw):
    return transforms.make_transform("vis", transforms.ClipOptions(num_frames=T, size=S, train=train, flip=False,
                                                         patch_size=1, **kw))


def _mismatch(mask_target, frame):
    """Pixels where the (full-resolution) target and the bright pixels of the frame disagree."""
    return int(((mask_target >= 0) != (frame.mean(axis=-1) > 128)).sum())


# ------------------------------------------------------------------------------------------- the geometry
def test_rotation_matrix_is_cv2_get_rotation_matrix_2d():
    # cv2.getRotationMatrix2D((cx, cy), 90, 1) = [[0, 1, cx - cy], [-1, 0, cx + cy]] (written out by hand)
    np.testing.assert_allclose(augment.rotation_matrix(90, 5.0, 2.0), [[0, 1, 3], [-1, 0, 7]], atol=1e-12)
    a = math.radians(10)
    c, s = math.cos(a), math.sin(a)
    np.testing.assert_allclose(augment.rotation_matrix(10, 4.0, 6.0),
                               [[c, s, (1 - c) * 4 - s * 6], [-s, c, s * 4 + (1 - c) * 6]], atol=1e-12)


@pytest.mark.parametrize("angle,k", [(90, 1), (-90, -1), (180, 2)])
def test_quarter_turns_about_the_pixel_centre_are_rot90(angle, k):
    """Positive angles turn the image counter-clockwise as displayed (cv2), like np.rot90."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)
    masks = rng.random((10, 9, 9)) > 0.5  # 10 instances: two bytes of packed planes
    out, out_masks = augment.rotate_frame(img, masks, angle, 4.0, 4.0)  # (4, 4) = centre of pixel [4, 4]
    np.testing.assert_array_equal(out_masks, np.rot90(masks, k, axes=(1, 2)))
    assert np.abs(out.astype(int) - np.rot90(img, k)).max() <= 1  # bilinear weights 1 +- 1e-16, truncated


def test_off_centre_rotation_moves_a_blob_where_the_matrix_says():
    h, w = 40, 60
    img = np.zeros((h, w, 3), np.uint8)
    masks = np.zeros((1, h, w), bool)
    img[9:12, 44:47] = 255  # 3x3 blob centred on pixel (x=45, y=10)
    masks[0, 9:12, 44:47] = True
    angle, cx, cy = 30.0, 25.0, 22.0
    want = augment.rotation_matrix(angle, cx, cy) @ np.array([45.0, 10.0, 1.0])  # forward: source -> dest
    out, out_masks = augment.rotate_frame(img, masks, angle, cx, cy)
    ys, xs = np.nonzero(out_masks[0])
    assert abs(xs.mean() - want[0]) < 0.5 and abs(ys.mean() - want[1]) < 0.5
    weight = out[..., 0].astype(float)
    yy, xx = np.mgrid[0:h, 0:w]
    assert abs((weight * xx).sum() / weight.sum() - want[0]) < 0.3
    assert abs((weight * yy).sum() / weight.sum() - want[1]) < 0.3
    # A point above the centre moves left for a positive (counter-clockwise) angle.
    up = augment.rotation_matrix(angle, cx, cy) @ np.array([cx, cy - 10.0, 1.0])
    assert up[0] < cx and up[1] < cy


def test_zero_angle_reproduces_the_input():
    img, mask = _square_image()
    rng = np.random.default_rng(1)
    noisy = rng.integers(0, 256, img.shape, dtype=np.uint8)
    for centre in ((S / 2, S / 2), (S / 2 + 3, S / 2 - 3)):  # offset or not, a 0-degree turn changes nothing
        out, out_masks = augment.rotate_frame(noisy, mask[None].astype(bool), 0.0, *centre)
        np.testing.assert_array_equal(out, noisy)
        np.testing.assert_array_equal(out_masks[0], mask.astype(bool))
    frames, masks = augment.rotate_pseudo_video(np.stack([noisy] * 3), mask[None, None].repeat(3, 1), rng, 0.0)
    np.testing.assert_array_equal(frames, np.stack([noisy] * 3))
    np.testing.assert_array_equal(masks, mask[None, None].repeat(3, 1).astype(bool))


def test_random_rotation_draws_within_the_spec_ranges():
    rng = np.random.default_rng(2)
    draws = np.array([augment.random_rotation(rng, 48, 64) for _ in range(2000)])
    angle, cx, cy = draws.T
    assert angle.min() >= -15 and angle.max() <= 15 and angle.min() < -14 and angle.max() > 14
    assert np.all(np.abs(cx - 32) <= 6) and np.abs(cx - 32).max() > 5.9  # 64 // 10 = 6 px
    assert np.all(np.abs(cy - 24) <= 4) and np.abs(cy - 24).max() > 3.9  # 48 // 10 = 4 px


def test_which_datasets_are_pseudo_videos():
    assert augment.is_pseudo_video("COCO") and augment.is_pseudo_video("COCOPseudoVIS")
    assert not augment.is_pseudo_video("YoutubeVIS") and not augment.is_pseudo_video("LVVIS")
    assert not augment.is_pseudo_video("")


# ------------------------------------------------------------------------------------------- the transform
def test_coco_frames_are_rotated_independently_with_their_masks():
    img, mask = _square_image()
    rec = _record("COCOPseudoVIS", img, mask)
    out = _transform().random_map(rec, np.random.default_rng(7))
    video, target = out["video"], out["mask"]
    assert video.shape == (T, S, S, 3) and target.shape == (T, S, S)
    assert set(np.unique(target)) == {-1, 3}
    # every frame got its own rotation: no two frames are the same (bilinear shows any turn), and the masks
    # moved too (a turn of a degree or two can leave a nearest-neighbour mask unchanged at this size)
    assert len({f.tobytes() for f in video}) == T
    unrotated = np.where(mask > 0, 3, -1)
    moved = [not np.array_equal(m, unrotated) for m in target]
    assert sum(moved) >= T // 2 and len({m.tobytes() for m in target}) >= T // 2
    strongly_turned = 0
    for frame, m in zip(video, target):
        # the mask follows the bright square: they disagree only at a few edge pixels (bilinear vs nearest),
        # never more than the unrotated mask does, far less when the turn is large
        assert _mismatch(m, frame) <= 6, _mismatch(m, frame)
        assert _mismatch(m, frame) <= _mismatch(unrotated, frame)
        strongly_turned += _mismatch(unrotated, frame) > 3 * _mismatch(m, frame) + 10
        assert abs(int((m >= 0).sum()) - int(mask.sum())) <= 6  # a rotation keeps the area
    assert strongly_turned >= T // 2
    again = _transform().random_map(rec, np.random.default_rng(7))
    np.testing.assert_array_equal(again["video"], video)  # deterministic per seed
    np.testing.assert_array_equal(again["mask"], target)
    other = _transform().random_map(rec, np.random.default_rng(8))
    assert not np.array_equal(other["mask"], target)


def test_coco_rotation_comes_before_the_mask_aware_crop():
    """Output smaller than the image: the crop is drawn around the rotated masks, targets stay aligned."""
    img, mask = _square_image(64, (40, 56, 44, 60))  # object near the bottom-right corner
    rec = _record("COCO", img, mask)
    tr = transforms.make_transform("vis", transforms.ClipOptions(num_frames=T, size=32, train=True, flip=True, patch_size=1,
                                                       scale_jitter=(2.0, 2.0)))  # 32-px crop of a 64-px image
    in_view = 0
    for s in range(6):
        out = tr.random_map(rec, np.random.default_rng(s))
        in_view += bool((out["mask"] >= 0).any())
        for frame, m in zip(out["video"], out["mask"]):
            assert _mismatch(m, frame) <= 8
    assert in_view >= 4  # PairMaskCrop: the crop overlaps the rotated objects' bounding box


def test_youtube_vis_and_evaluation_are_not_rotated():
    img, mask = _square_image()
    unrotated = np.where(mask > 0, 3, -1)
    cases = [(_record("YoutubeVIS", img, mask), {}), (_record("COCOPseudoVIS", img, mask), {"train": False}),
             (_record("COCO", img, mask), {"pseudo_video_max_angle": 0.0})]
    for rec, kw in cases:
        out = _transform(**kw).random_map(rec, np.random.default_rng(7))
        decoded = JpegDecoder().decode(schema.decode_record(rec)["frames"][0])
        for frame, m in zip(out["video"], out["mask"]):
            np.testing.assert_array_equal(frame, decoded)  # the stored image, as it is
            np.testing.assert_array_equal(m, unrotated)


def test_config_key_sets_the_rotation_range():
    from data_pipelines.pipeline import loader
    from streamformer_jax.train.config_files import load_config

    config = load_config("data_pretrain")
    assert loader.task_options(config, "vis").pseudo_video_max_angle == 15.0  # on by default
    config.tasks.vis.pseudo_video_max_angle = 0.0
    assert loader.task_options(config, "vis").pseudo_video_max_angle == 0.0
