"""Pure-numpy parts of the data pipeline: frame sampling, targets, crop boxes, task mixture."""
import numpy as np
import pytest

from data_pipelines.pipeline import augment, mixture, sampling, targets


def rng(seed=0):
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("n", [1, 7, 16, 17, 100, 301])
def test_sparse_segments_stay_in_their_segment(n):
    seg = max(0.0, (n - 1) / 16)
    lo = np.rint(seg * np.arange(16)).astype(int)
    hi = np.minimum(np.rint(seg * np.arange(1, 17)).astype(int), n - 1)
    for s in range(20):
        idx = sampling.sparse_segment_indices(n, 16, rng(s), train=True)
        assert idx.shape == (16,) and idx.dtype == np.int64
        assert np.all(idx >= lo) and np.all(idx <= hi)
    centres = sampling.sparse_segment_indices(n, 16, None, train=False)
    np.testing.assert_array_equal(centres, np.minimum((lo + np.rint(seg * np.arange(1, 17)).astype(int)) // 2, n - 1))


def test_sparse_segments_train_uses_the_whole_segment():
    seen = np.stack([sampling.sparse_segment_indices(161, 16, rng(s), True) for s in range(200)])
    # seg = 10: segment 0 is [0, 10] inclusive, so both ends must come up.
    assert seen[:, 0].min() == 0 and seen[:, 0].max() == 10


def test_strided_segments_ssv2_rule():
    idx = np.stack([sampling.strided_segment_indices(70, 16, rng(s), True) for s in range(100)])
    base = np.arange(16) * 4  # avg = 70 // 16 = 4
    assert np.all(idx >= base) and np.all(idx <= base + 3)
    assert set(np.unique(idx[:, 0])) == {0, 1, 2, 3}
    np.testing.assert_array_equal(sampling.strided_segment_indices(70, 16, None, False), base + 1)
    short = sampling.strided_segment_indices(5, 16, rng(), True)
    np.testing.assert_array_equal(short, [0] * 11 + [0, 1, 2, 3, 4])


def test_interval_indices_retrieval_rule():
    n = 100
    edges = np.linspace(0, n, 17).astype(int)
    for s in range(50):
        idx = sampling.interval_indices(n, 16, rng(s), True)
        assert np.all(idx >= edges[:-1]) and np.all(idx <= edges[1:] - 2)
    short = sampling.interval_indices(10, 16, rng(), True)  # intervals empty -> sorted random + last-index pad
    assert list(short[:10]) == list(range(10)) and np.all(short[10:] == 9)


def test_fixfps_window_centres_and_clamps():
    assert sampling.fixfps_window(10.0, 12.0, 100.0, 16) == (3.0, 19.0)
    assert sampling.fixfps_window(1.0, 3.0, 100.0, 16) == (0.0, 16.0)  # shifted to [0, 16]
    assert sampling.fixfps_window(95.0, 99.0, 100.0, 16) == (84.0, 100.0)  # shifted to [dur-16, dur]
    assert sampling.fixfps_window(5.0, 40.0, 100.0, 16) == (5.0, 40.0)  # long GT kept as is


def test_fixfps_indices_segments_include_their_end():
    # 4 fps, window [10, 26] s -> frames s = 40, e = 104, 16 segments of 4: [40 + 4i, 44 + 4i], both ends drawn.
    draws = np.stack([sampling.fixfps_indices(200, 4.0, (10.0, 26.0), 16, rng(s), True) for s in range(300)])
    lo, hi = 40 + 4 * np.arange(16), 44 + 4 * np.arange(16)
    assert np.all(draws >= lo) and np.all(draws <= hi)
    assert np.all(draws.min(axis=0) == lo) and np.all(draws.max(axis=0) == hi)  # randint(a, b) is inclusive
    tail = sampling.fixfps_indices(20, 4.0, (0.0, 16.0), 16, rng(), True)
    assert tail.max() <= 19  # the window runs past the video: clipped to the last frame


# ----------------------------------------------------------------------------------------------- targets
def test_window_membership_inclusive_any():
    t = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    np.testing.assert_array_equal(targets.window_membership(t, [[1.0, 2.0]]), [0, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(targets.window_membership(t, [[1.0, 1.5], [4.0, 9.0]]), [0, 1, 0, 0, 1, 1])
    assert targets.window_membership(t, np.zeros((0, 2))).sum() == 0


def test_frame_segment_labels_background_and_overlap():
    t = np.arange(6.0)
    labels = targets.frame_segment_labels(t, [[0.5, 3.0], [2.5, 4.0]], [7, 0])
    np.testing.assert_array_equal(labels, [-1, 7, 7, 0, 0, -1])  # class 0 is a real class, not background


def test_category_map_later_instance_wins():
    m = np.zeros((2, 1, 3, 3), bool)
    m[0, 0, :2, :2] = True
    m[1, 0, 1:, 1:] = True
    out = targets.category_map(m, [5, 0])
    np.testing.assert_array_equal(out[0], [[5, 5, -1], [5, 0, 0], [-1, 0, 0]])


def test_select_caption():
    caps = ["a", "b", "c"]
    assert targets.select_caption(caps, None, train=False) == "a"
    assert {targets.select_caption(caps, rng(s), True) for s in range(50)} == set(caps)


# ----------------------------------------------------------------------------------------------- augment
def test_random_resized_crop_box_bounds_and_ranges():
    areas, aspects = [], []
    for s in range(300):
        b = augment.random_resized_crop_box(240, 320, rng(s))
        assert 0 <= b.top and b.top + b.height <= 240 and 0 <= b.left and b.left + b.width <= 320
        areas.append(b.height * b.width / (240 * 320))
        aspects.append(b.width / b.height)
    assert min(areas) < 0.2 and max(areas) > 0.8
    assert 0.7 < min(aspects) and max(aspects) < 1.4


def test_random_resized_crop_fallback_is_central():
    # An impossible scale range forces the fallback: the central crop with aspect clamped to 4/3.
    b = augment.random_resized_crop_box(100, 400, rng(), scale=(2.0, 3.0))
    assert b == augment.Box(0, (400 - 133) // 2, 100, 133)


def test_short_side_boxes():
    assert augment.short_side_crop_box(240, 320, None, train=False) == augment.Box(0, 40, 240, 240)
    lefts = {augment.short_side_crop_box(240, 320, rng(s), True).left for s in range(200)}
    assert min(lefts) == 0 and max(lefts) == 80
    zoom = augment.short_side_crop_box(240, 320, rng(), True, scale_jitter=(2.0, 2.0))
    assert zoom.height == zoom.width == 120


def test_focus_crop_overlaps_object():
    focus = augment.Box(10, 300, 20, 15)  # object at the far right of a 240 x 640 frame
    for s in range(100):
        b = augment.short_side_crop_box(240, 640, rng(s), True, focus=focus)
        assert b.left <= 314 and b.left + b.width > 300


def test_mask_bbox_and_nearest_grid():
    m = np.zeros((2, 8, 10), bool)
    m[1, 2:5, 3:9] = True
    assert augment.mask_bbox(m) == augment.Box(2, 3, 3, 6)
    assert augment.mask_bbox(np.zeros((3, 4), bool)) is None
    rows, cols = augment.nearest_grid(augment.Box(0, 10, 64, 64), out_size=32, stride=8)
    np.testing.assert_array_equal(rows, [8, 24, 40, 56])  # cell centres 4,12,20,28 px * 2 (64/32)
    np.testing.assert_array_equal(cols, [18, 34, 50, 66])


def test_flips():
    clip = np.arange(2 * 3 * 4 * 3).reshape(2, 3, 4, 3)
    np.testing.assert_array_equal(augment.maybe_flip(clip, True)[:, :, 0], clip[:, :, -1])
    assert augment.maybe_flip(clip, False) is clip
    mask = np.arange(12).reshape(1, 3, 4)
    np.testing.assert_array_equal(augment.flip_mask(mask, True)[..., 0], mask[..., -1])


# ----------------------------------------------------------------------------------------------- mixture
def test_balanced_cycle_follows_the_original_rule():
    sizes = {"kinetics": 240, "ssv2": 169, "retrieval": 180, "grounding": 100, "localization": 60, "vis": 120}
    assert mixture.balanced_sizes(sizes) == {"kinetics": 240, "ssv2": 169, "retrieval": 180, "grounding": 200,
                                             "localization": 240, "vis": 120}
    counts = mixture.balanced_cycle_counts(sizes)
    assert counts == {"kinetics": 2, "ssv2": 1, "retrieval": 1, "grounding": 1, "localization": 2, "vis": 1}
    cycle = mixture.make_cycle(counts)
    assert cycle == ("kinetics", "kinetics", "ssv2", "retrieval", "grounding", "localization", "localization", "vis")


def test_make_cycle_weights_and_errors():
    assert mixture.make_cycle({"vis": 1, "kinetics": 3, "ssv2": 0}) == ("kinetics",) * 3 + ("vis",)
    with pytest.raises(ValueError):
        mixture.make_cycle({"ssv2": 0})


def test_cycle_mix_reads_each_task_stream_in_order():
    import grain

    parents = {t: grain.MapDataset.range(100).map(lambda x, t=t: {"i": np.int64(x), "t": t}) for t in ("a", "b")}
    mixed = mixture.CycleMixMapDataset(parents, ("a", "a", "b"))
    got = [(mixed[i]["task"], int(mixed[i]["i"])) for i in range(9)]
    assert got == [("a", 0), ("a", 1), ("b", 0), ("a", 2), ("a", 3), ("b", 1), ("a", 4), ("a", 5), ("b", 2)]
    assert len(mixed) == 150  # a runs out first: 2 per cycle -> 50 cycles of 3


# ----------------------------------------------------------------------------------------------- RandAugment
def test_randaugment_spec_parsing():
    from data_pipelines.pipeline import randaugment as ra

    spec = ra.RandAugmentSpec.parse("rand-m7-n4-mstd0.5-inc1")
    assert (spec.num_ops, spec.magnitude, spec.magnitude_std, spec.prob) == (4, 7.0, 0.5, 0.5)
    with pytest.raises(ValueError):
        ra.RandAugmentSpec.parse("rand-m9-n2-inc0")


def test_randaugment_sampling_statistics():
    from data_pipelines.pipeline import randaugment as ra

    spec = ra.RandAugmentSpec.parse("rand-m7-n4-mstd0.5-inc1")
    draws = [ra.sample_ops(spec, rng(s)) for s in range(400)]
    assert 1.8 < np.mean([len(d) for d in draws]) < 2.2  # 4 ops, each kept with p = 0.5
    names = {n for d in draws for n, _ in d}
    assert names == set(ra.INCREASING_OPS)
    rotations = [a for d in draws for n, a in d if n == "Rotate"]
    assert min(rotations) < -15 and max(rotations) > 15 and max(abs(a) for a in rotations) <= 30
    assert ra.sample_ops(spec, rng(3)) == ra.sample_ops(spec, rng(3))


def test_randaugment_ops_apply_the_same_way_to_every_frame():
    from data_pipelines.pipeline import randaugment as ra

    frame = (rng(0).random((24, 24, 3)) * 200 + 20).astype(np.uint8)
    clip = np.stack([frame, frame, frame])
    for name in ra.INCREASING_OPS:
        arg = ra._argument(name, 7.0, rng(1))
        out = ra.apply_ops(clip, [(name, arg)])
        assert out.shape == clip.shape and out.dtype == np.uint8
        assert (out[0] == out[1]).all() and (out[1] == out[2]).all(), name
        assert (out != clip).any(), f"{name} did nothing at magnitude 7"
    np.testing.assert_array_equal(ra.apply_ops(clip, [("Invert", None)]), 255 - clip)
    shifted = ra.apply_ops(clip, [("TranslateXRel", 0.25)], ra.RandAugmentSpec(interpolation="nearest"))
    np.testing.assert_array_equal(shifted[0, :, :18], frame[:, 6:])  # content moves left by 6 px
    assert (shifted[0, :, 18:] == 128).all()  # filled with grey
