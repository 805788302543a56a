"""grain pipelines end to end: records -> per-task transforms -> mixture -> host batches -> global arrays.

Frames of the test records encode their index in the green channel and the horizontal position in the red
channel (a left-to-right ramp), so a test can tell which stored frame a decoded frame is and whether the clip
was flipped, after any crop.
"""
import json
import multiprocessing

import grain
import jax
import numpy as np
import pytest

from data_pipelines.records import frames as jpeg
from data_pipelines.records import schema
from data_pipelines.pipeline import builtin, loader, mixture, sampling, transforms
from data_pipelines.records import sources
from streamformer_jax.models.streamformer import normalize_pixels
from streamformer_jax.tasks import registry
from streamformer_jax.train.config_files import load_config

W, H, N = 40, 32, 24  # stored frame size and frame count of the test records
FPS = 4.0
SIZE, T = 16, 8  # output clip: T frames of SIZE x SIZE


def green_level(i):
    return 20 + 9 * i


def frame_rgb(i):
    img = np.empty((H, W, 3), np.uint8)
    img[..., 0] = np.linspace(0, 255, W).astype(np.uint8)[None, :]
    img[..., 1] = green_level(i)
    img[..., 2] = 128
    return img


def index_of(frame):
    return int(round((float(np.median(frame[..., 1])) - 20) / 9))


def is_flipped(clip):
    red = clip[..., 0].astype(float).mean(axis=(0, 1))  # mean over frames and rows, per column
    return red[0] > red[-1]


def square_mask(i):
    m = np.zeros((H, W), np.uint8)
    m[8:24, 4 + i % 8 : 20 + i % 8] = 1
    return m


def make_record(task, k, n=N):
    times = np.arange(n) / FPS
    ex = dict(task=task, video_id=f"{task}{k:03d}", frames=[jpeg.encode_jpeg(frame_rgb(i)) for i in range(n)],
              frame_times=times, fps=FPS, source_fps=FPS, height=H, width=W, duration=n / FPS, dataset="test")
    if task in ("kinetics", "ssv2"):
        ex["label"] = k % 5
    elif task == "retrieval":
        ex["captions"] = [f"caption {k} a", f"caption {k} b"]
    elif task == "grounding":
        ex["captions"] = [f"query {k}"]
        ex["windows"] = np.array([[1.0, 3.0]], np.float32)
    elif task == "localization":
        ex["segments"] = np.array([[0.5, 2.0], [4.0, 5.0]], np.float32)
        ex["segment_labels"] = np.array([k % 3, 7], np.int32)
    elif task == "vis":
        ex["categories"] = np.array([k % 4], np.int32)
        masks = np.stack([square_mask(i) for i in range(n)])[None]
        ex["mask_rle_lengths"], ex["mask_rle_counts"] = schema.encode_masks(masks)
    return schema.encode_record(ex)


@pytest.fixture(scope="module")
def records():
    return {t: [make_record(t, k) for k in range(12)] for t in registry.names()}


def options(train=True, **kw):
    return transforms.ClipOptions(num_frames=T, size=SIZE, train=train, patch_size=4, clip_seconds=2.0, **kw)


def crop_for(task):
    return "rrc" if task in ("kinetics", "ssv2") else "short_side"


def mixed(records, batch=2, process_index=0, process_count=1, seed=3):
    per_task = {
        t: loader.task_dataset(recs, transforms.make_transform(t, options(crop=crop_for(t))), seed=seed,
                               host_batch_size=batch, process_index=process_index, process_count=process_count)
        for t, recs in records.items()
    }
    return loader.mixed_dataset(per_task, mixture.make_cycle({t: 1 for t in records}))


def assert_batches_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)


# ------------------------------------------------------------------------------------------- host slicing
def test_host_slices_are_disjoint_and_cover_each_epoch(records):
    recs = records["kinetics"]
    hosts = 3
    per_host = []
    for p in range(hosts):
        ds = loader.task_dataset(recs, transforms.make_transform("kinetics", options()), seed=1, host_batch_size=2,
                                 process_index=p, process_count=hosts)
        ids = [str(v) for i in range(4) for v in ds[i]["video_id"]]  # 8 examples per host = 2 epochs in all
        per_host.append(ids)
    for epoch in range(2):
        # Elements are dealt round-robin, so epoch e is each host's examples [4e, 4e + 4).
        chunks = [set(ids[4 * epoch : 4 * epoch + 4]) for ids in per_host]
        assert sum(len(c) for c in chunks) == 12
        assert set.union(*chunks) == {f"kinetics{k:03d}" for k in range(12)}
    assert per_host[0][:4] != per_host[0][4:]  # and the next epoch is reshuffled


def test_eval_dataset_reads_each_record_once_in_order(records):
    recs = records["localization"][:5]
    ds = loader.task_dataset(recs, transforms.make_transform("localization", options(train=False)), seed=0,
                             host_batch_size=2, train=False)
    assert len(ds) == 3  # 2 + 2 + 1: the last, partial batch is kept
    ids = [str(v) for i in range(len(ds)) for v in ds[i]["video_id"]]
    assert ids == [f"localization{k:03d}" for k in range(5)]


def test_task_seeds_differ_between_tasks_and_stages():
    seeds = {loader.derive_seed(42, t, stage) for t in registry.names() for stage in ("shuffle", "augment")}
    assert len(seeds) == 12 and all(0 <= s < 2**32 for s in seeds)


def test_same_example_same_augmentation_whatever_the_host_count(records):
    # RNG is keyed by the global stream position: host 1 of 2 sees global elements 1, 3, 5, ...
    one = loader.task_dataset(records["kinetics"], transforms.make_transform("kinetics", options()), seed=5,
                              host_batch_size=1)
    two = loader.task_dataset(records["kinetics"], transforms.make_transform("kinetics", options()), seed=5,
                              host_batch_size=1, process_index=1, process_count=2)
    for i in range(3):
        assert_batches_equal(one[2 * i + 1], two[i])


# ------------------------------------------------------------------------------------------- iterator state
def test_restored_iterator_yields_exactly_the_next_batches(records):
    ds = mixed(records)
    it = loader.BatchIterator(ds)
    for _ in range(5):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # must survive a JSON checkpoint
    expected = [next(it) for _ in range(7)]
    assert [b["task"] for b in expected] == list(registry.names()[5:]) + list(registry.names())
    restored = loader.BatchIterator(mixed(records))  # a fresh pipeline, as after a restart
    restored.set_state(state)
    for want in expected:
        assert_batches_equal(next(restored), want)
    assert restored.get_state() == {"next_batch": 12}


def test_grain_checkpoint_handler_round_trip(records, tmp_path):
    import etils.epath

    it = loader.BatchIterator(mixed(records))
    for _ in range(3):
        next(it)
    grain.checkpoint.CheckpointHandler().save(etils.epath.Path(tmp_path), item=it)
    expected = [next(it) for _ in range(2)]
    restored = grain.checkpoint.CheckpointHandler().restore(etils.epath.Path(tmp_path),
                                                           item=loader.BatchIterator(mixed(records)))
    for want in expected:
        assert_batches_equal(next(restored), want)


def test_worker_processes_run_and_give_identical_batches(records):
    ds = mixed(records)
    reference = [next(it) for it in [loader.BatchIterator(ds)] for _ in range(8)]
    got, workers = [], set()
    with loader.BatchIterator(ds, worker_count=2) as it:
        for _ in range(4):
            got.append(next(it))
            workers |= {p.pid for p in multiprocessing.active_children() if "grain" in p.name}
        state = it.get_state()
    assert len(workers) >= 2, "grain did not start (at least) two worker processes"
    for want, have in zip(reference, got):
        assert_batches_equal(have, want)
    # A state saved with 2 workers restores with 0 workers (and vice versa: it is just a batch counter).
    with loader.BatchIterator(ds, worker_count=0) as it:
        it.set_state(state)
        for want in reference[4:]:
            assert_batches_equal(next(it), want)


# ------------------------------------------------------------------------------------------- content
@pytest.mark.parametrize("task", registry.names())
def test_eval_clips_and_targets_read_back(records, task):
    rec = records[task][4]
    out = transforms.make_transform(task, options(train=False)).random_map(rec, np.random.default_rng(0))
    idx = out["frame_index"]
    assert out["video"].shape == (T, SIZE, SIZE, 3) and out["video"].dtype == np.uint8
    assert [index_of(f) for f in out["video"]] == list(idx)  # the decoded frames are the sampled ones
    assert not is_flipped(out["video"])
    np.testing.assert_allclose(out["timestamps"], idx / FPS)
    if task == "kinetics":
        np.testing.assert_array_equal(idx, sampling.sparse_segment_indices(N, T, None, False))
        assert out["label"] == 4
    elif task == "ssv2":
        np.testing.assert_array_equal(idx, sampling.strided_segment_indices(N, T, None, False))
        assert out["label"] == 4
    elif task == "retrieval":
        assert out["caption"] == "caption 4 a"
    elif task == "grounding":
        # window [1, 3] s, 2 s clip -> frames 4..12 at 4 fps; label 1 exactly where 1 <= t <= 3
        assert out["caption"] == "query 4"
        assert idx.min() >= 4 and idx.max() <= 12
        np.testing.assert_array_equal(out["label"], ((idx / FPS >= 1) & (idx / FPS <= 3)).astype(np.float32))
    elif task == "localization":
        # The element is the record's row 0: only that row's class (4 % 3 = 1), in its window; row 1's
        # segment [4, 5] (class 7) is another sample's.
        t = idx / FPS
        np.testing.assert_array_equal(out["label"], np.where((t >= 0.5) & (t <= 2.0), 1, -1))
    elif task == "vis":
        assert out["mask"].shape == (T, SIZE, SIZE)  # the input resolution (the original's loss)
        # Eval crop = centre 32 x 32 box (columns 4..35) resized to 16: pixel centres at source offsets 1, 3, ...
        rows = 2 * np.arange(SIZE) + 1
        cols = 4 + rows
        for f, i in zip(out["mask"], idx):
            want = np.where(square_mask(i)[rows][:, cols] > 0, 0, -1)  # category 4 % 4 = 0, background -1
            np.testing.assert_array_equal(f, want)


def test_grounding_with_several_relevant_windows_uses_all_of_them():
    ex = schema.decode_record(make_record("grounding", 0))
    ex.update(captions=["q0", "q1"], windows=np.array([[1.0, 3.0], [0.0, 1.0]], np.float32),
              relevant_windows=np.array([[1.0, 1.5], [2.5, 3.0], [0.0, 1.0]], np.float32),
              relevant_window_caption=np.array([0, 0, 1], np.int32))
    out = transforms.make_transform("grounding", options(train=False)).random_map(schema.encode_record(ex), None)
    t = out["frame_index"] / FPS
    want = ((t >= 1.0) & (t <= 1.5)) | ((t >= 2.5) & (t <= 3.0))  # caption 0's two windows, not [1, 3]
    assert want.any() and not want.all()
    np.testing.assert_array_equal(out["label"], want.astype(np.float32))


def test_train_frames_match_their_indices_after_random_crops(records):
    for task in ("kinetics", "retrieval", "vis"):
        tr = transforms.make_transform(task, options(crop=crop_for(task)))
        for s in range(4):
            out = tr.random_map(records[task][s], np.random.default_rng(s))
            assert [index_of(f) for f in out["video"]] == list(out["frame_index"])


def test_randaugment_runs_after_the_crop_in_training_only(records):
    ra = "rand-m9-n2-mstd0-p1.0-inc1"  # always two ops, so every clip changes
    plain = transforms.make_transform("kinetics", options(crop="rrc", flip=False))
    augmented = transforms.make_transform("kinetics", options(crop="rrc", flip=False, randaugment=ra))
    for s in range(4):
        a = augmented.random_map(records["kinetics"][s], np.random.default_rng(s))
        b = plain.random_map(records["kinetics"][s], np.random.default_rng(s))
        np.testing.assert_array_equal(a["frame_index"], b["frame_index"])  # same sampling and crop draws
        assert (a["video"] != b["video"]).any()
    evaluation = transforms.make_transform("kinetics", options(train=False, randaugment=ra))
    reference = transforms.make_transform("kinetics", options(train=False))
    np.testing.assert_array_equal(evaluation.random_map(records["kinetics"][0], np.random.default_rng(0))["video"],
                                  reference.random_map(records["kinetics"][0], np.random.default_rng(0))["video"])


def test_ssv2_is_never_flipped_but_kinetics_is(records):
    flips = {}
    for task in ("ssv2", "kinetics"):
        tr = transforms.make_transform(task, options(crop="rrc", flip=True))  # ssv2 ignores flip=True
        flips[task] = [is_flipped(tr.random_map(records[task][s % 12], np.random.default_rng(s))["video"])
                       for s in range(40)]
    assert not any(flips["ssv2"])
    assert 5 < sum(flips["kinetics"]) < 35


def test_vis_mask_is_flipped_with_the_frames(records):
    # Same RNG stream with and without flipping: the flip is the last draw, so crops are identical.
    flipping = transforms.make_transform("vis", options(flip=True))
    plain = transforms.make_transform("vis", options(flip=False))
    seen = set()
    for s in range(12):
        out = flipping.random_map(records["vis"][s], np.random.default_rng(s))
        ref = plain.random_map(records["vis"][s], np.random.default_rng(s))
        flipped = is_flipped(out["video"])
        seen.add(flipped)
        want_video, want_mask = ref["video"], ref["mask"]
        if flipped:
            want_video, want_mask = want_video[:, :, ::-1], want_mask[..., ::-1]
        np.testing.assert_array_equal(out["video"], want_video)
        np.testing.assert_array_equal(out["mask"], want_mask)
        assert (ref["mask"] >= 0).any()  # the mask-aware crop keeps the object in view
    assert seen == {True, False}


# ------------------------------------------------------------------------------------------- global arrays
def test_global_batch_is_sharded_over_the_data_axes(records):
    assert jax.device_count() == 8
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    host = next(loader.BatchIterator(mixed(records, batch=8)))
    out = loader.to_global_batch(host, mesh, ("data",))
    video = out["video"]
    assert isinstance(video, jax.Array) and video.shape == (8, T, SIZE, SIZE, 3) and video.dtype == np.uint8
    assert video.sharding.spec == jax.sharding.PartitionSpec(("data",))
    assert {s.data.shape[0] for s in video.addressable_shards} == {2}  # 8 rows over 4 data shards
    np.testing.assert_array_equal(np.asarray(video), host["video"])
    assert out["task"] == "kinetics" and isinstance(out["video_id"], np.ndarray)  # strings stay on host
    normed = jax.jit(normalize_pixels)(video)
    np.testing.assert_allclose(np.asarray(normed), host["video"] / 127.5 - 1.0, atol=1e-6)


def test_normalize_frames_range():
    x = np.array([0, 255, 128], np.uint8)
    np.testing.assert_allclose(np.asarray(normalize_pixels(x)), [-1.0, 1.0, 128 / 127.5 - 1], atol=1e-6)


# ------------------------------------------------------------------------------------------- built-in data
def _centroid_x(clip):
    sat = clip.max(axis=-1).astype(int) - clip.min(axis=-1).astype(int) > 80  # the coloured square
    return [np.nonzero(f.any(axis=0))[0].mean() for f in sat if f.any()]


def test_builtin_dataset_through_the_config(tmp_path):
    config = load_config("data_builtin", str(tmp_path / "builtin"))
    it = loader.make_train_iterator(config)
    batches = [next(it) for _ in range(6)]
    assert [b["task"] for b in batches] == list(registry.names())  # equal sizes -> one batch each
    for b in batches:
        assert b["video"].shape == (8, 8, 32, 32, 3)
    ssv2 = batches[1]
    for clip, label in zip(ssv2["video"], ssv2["label"]):
        xs = _centroid_x(clip)  # direction of motion must still match the label: no flip on ssv2
        assert (xs[-1] > xs[0]) == (label == 0)
    assert batches[5]["mask"].shape == (8, 8, 32, 32) and (batches[5]["mask"] >= 0).any()


def test_builtin_tfrecord_and_arrayrecord_read_the_same(tmp_path):
    a = builtin.build_builtin_dataset(tmp_path / "a", videos_per_task=2, tasks=("grounding",))
    b = builtin.build_builtin_dataset(tmp_path / "b", videos_per_task=2, tasks=("grounding",), fmt="tfrecord")
    sa, sb = sources.open_source(a["grounding"]), sources.open_source(b["grounding"])
    assert len(sa) == len(sb) == 2 and [sa[i] for i in range(2)] == [sb[i] for i in range(2)]
    assert sources.load_metadata(b["grounding"])["format"] == "tfrecord"


def test_vis_patch_resolution_option(records):
    """mask_resolution="patch": one target per patch, the source pixel under each patch centre."""
    out = transforms.make_transform("vis", options(train=False, mask_resolution="patch")).random_map(
        records["vis"][4], np.random.default_rng(0))
    assert out["mask"].shape == (T, SIZE // 4, SIZE // 4)
    # Eval crop = centre 32 x 32 box (columns 4..35); patch centres sit at source offsets 4, 12, 20, 28.
    rows = np.array([4, 12, 20, 28])
    for f, i in zip(out["mask"], out["frame_index"]):
        np.testing.assert_array_equal(f, np.where(square_mask(i)[rows][:, 4 + rows] > 0, 0, -1))
    with pytest.raises(ValueError, match="mask_resolution"):
        transforms.make_transform("vis", options(train=False, mask_resolution="pixel")).random_map(
            records["vis"][4], np.random.default_rng(0))
