"""Pretraining on the original datasets, exactly as the original: the original metadata file (all.yaml) and
annotation files of all 18 datasets (`original_formats`) -> `convert from-metadata` -> samples -> the original
sampler's epochs -> per-task transforms -> batches, compared with an independent reference of the original's
semantics (`original_reference`, which imports nothing from the package): sample counts per dataset, the paths
the original opens, label ids, names and tables, frame-index ranges and targets, and the mixture's epoch.
"""
import collections
import importlib.util
import json
import os
import pathlib

import av
import grain
import numpy as np
import pytest

import original_formats as formats
import original_reference as ref
from data_pipelines.records import schema
from data_pipelines.pipeline import label_tables, loader, transforms
from data_pipelines.records import sources
from data_pipelines.records.sources import load_metadata
from data_pipelines.pipeline.samples import TaskStream
from streamformer_jax.tasks import registry

TASKS = ("kinetics", "ssv2", "retrieval", "grounding", "localization", "vis")
DATASETS = {  # every dataset all.yaml names, by task
    "kinetics": [""], "ssv2": [""],
    "retrieval": ["MSRVTT", "MSVD", "ActivityNet", "DiDeMo", "LSMDC", "VATEX"],
    "grounding": ["CharadesSTA", "QVHighlights", "TaCoS", "ActivityNetCaptions", "DiDeMo", "QuerYD"],
    "localization": ["HACS", "FineAction", "ActivityNet"],
    "vis": ["YoutubeVIS", "LVVIS", "COCOPseudoVIS"],
}
T = 16  # the original's frame count (the grounding window is T seconds)
REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(original_world):
    """The converted original-format tree (conftest `original_world`) and the reference's view of it."""
    blocks = ref.load_metadata(original_world["metadata"])
    oracle = {ref.TASK_NAMES[k]: ref.task_samples(k, b) for k, b in blocks.items()}
    tables = {ref.TASK_NAMES[k]: ref.label_tables(k, b) for k, b in blocks.items() if "label2id_path" in b}
    return dict(original_world, blocks=blocks, oracle=oracle, tables=tables)


def _video_info(path):
    """(frames, fps) of a video as decord sees it: every decoded frame, the stream's average rate."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        return sum(1 for _ in c.decode(stream)), float(stream.average_rate)


def _records(out, task):
    src = sources.open_source(out / task)
    return [schema.decode_record(src[i]) for i in range(len(src))]


def _source_of(sample: ref.Sample) -> str:
    """What our record stores as its decoded source: the video, COCO's image, a YTVIS frame folder."""
    return os.path.dirname(sample.frame_paths[0]) if len(sample.frame_paths) > 1 else sample.path


def _bad(world) -> set[str]:
    """The reference samples the converter must skip: their file is missing or their masks are malformed."""
    bad = set()
    for task, samples in world["oracle"].items():
        for s in samples:
            if not all(os.path.exists(p) for p in (s.frame_paths or (s.path,))):
                bad.add(_source_of(s))
    bad.add(str(world["root"] / "src" / "ytvis19/train/JPEGImages/005a527edd"))  # malformed segmentation
    return bad


def _kept(world, task):
    bad = _bad(world)
    return [s for s in world["oracle"][task] if _source_of(s) not in bad]


def _rows(samples):
    """(dataset, source) -> that video's samples in annotation order (row k = the k-th)."""
    out = collections.defaultdict(list)
    for s in samples:
        out[(s.dataset, _source_of(s))].append(s)
    return out


# ------------------------------------------------------------------------------------------- conversion
def test_every_task_and_dataset_of_all_yaml_is_converted(world):
    assert list(world["summaries"]) == list(TASKS)  # the file's order = the original's mixture order
    assert not world["notes"]
    for task in TASKS:
        meta = load_metadata(world["out"] / task)
        assert sorted(meta["datasets"]) == sorted(DATASETS[task]), task


def test_sample_counts_per_dataset_are_the_originals(world):
    for task in TASKS:
        meta = load_metadata(world["out"] / task)
        kept = _kept(world, task)
        want = ref.sample_counts(kept)
        got = {ds: {"videos": c["videos"], "samples": c["samples"]} for ds, c in meta["datasets"].items()
               if c["videos"]}
        assert got == want, task
        assert meta["num_samples"] == len(kept) == sum(meta.get("record_samples", [1] * meta["num_examples"]))
    # Several rows of one video stay several samples (TaCoS: 5 queries of one video; an MSRVTT video: 2 rows).
    grounding = load_metadata(world["out"] / "grounding")["datasets"]["TaCoS"]
    assert grounding == {"videos": 1, "samples": 5, "skipped": 0, "skipped_samples": 0}
    assert load_metadata(world["out"] / "retrieval")["datasets"]["MSRVTT"]["samples"] == 3


def test_bad_inputs_are_skipped_listed_and_the_rest_converted(world):
    root = world["root"] / "src"
    skipped = {t: {(s["path"], s["dataset"], s["reason"]) for s in load_metadata(world["out"] / t)["skipped"]}
               for t in TASKS}
    assert skipped["kinetics"] == {(str(root / "kinetics400/videos_train" / formats.KINETICS_MISSING), "",
                                    "missing file")}
    yt = root / "ytvis19/train/JPEGImages"
    vis = sorted(skipped["vis"])
    assert [(p, d) for p, d, _ in vis] == [
        (str(root / "COCO2017/images/train2017/000000000030.jpg"), "COCOPseudoVIS"),  # no annotation
        (str(yt / "0043f083b5/00000.jpg"), "YoutubeVIS"),  # no annotation (the original pops the wrong video)
        (str(yt / "005a527edd/00000.jpg"), "YoutubeVIS")]  # malformed segmentation
    assert vis[0][2] == "image has no annotations" and vis[1][2] == "video has no annotations"
    assert vis[2][2].startswith("malformed segmentation")
    assert not any(skipped[t] for t in ("ssv2", "retrieval", "grounding", "localization"))
    report = (world["out"] / "vis" / "report.txt").read_text()
    assert "(YoutubeVIS): video has no annotations" in report


def test_paths_are_the_files_the_original_opens(world):
    for task in TASKS:
        got = {(r["dataset"], r["source"]) for r in _records(world["out"], task)}
        want = {(s.dataset, _source_of(s)) for s in _kept(world, task)}
        assert got == want, task
        assert all(os.path.exists(p) for _, p in got)


def _first_rows():
    """(task, dataset, annotation id) of every dataset's real-shaped ids in the fixture."""
    out = [("kinetics", "", p) for p, _, _ in formats.KINETICS] + [("ssv2", "", p) for p, _, _ in formats.SSV2]
    out += [("retrieval", ds, v) for v, ds, *_ in formats.RETRIEVAL]
    out += [("grounding", ds, v) for v, _, _, _, _, ds, *_ in formats.GROUNDING]
    out += [("localization", ds, v) for v, _, _, _, _, ds, *_ in formats.LOCALIZATION]
    return out


@pytest.mark.parametrize("task, dataset, video_id", _first_rows())
def test_path_rule_per_dataset(world, task, dataset, video_id):
    """An id of each dataset's real shape (dotted LSMDC ids, ids already ending in .mp4, TaCoS, HACS) resolves to
    the file the original loader opens, and that file exists in the original layout."""
    block = world["blocks"][registry.get(task).official_name]
    if task in ("kinetics", "ssv2"):
        want = os.path.join(block["prefix"], video_id)
        got = registry.get(task).read_original(dict(block, _key=task))
        assert want in {it.source for it in got.items}
    else:
        rule = {"retrieval": ref.retrieval_file, "grounding": ref.grounding_file,
                "localization": ref.localization_file}[task]
        want = os.path.join(block["data_dict"]["root_dir"][dataset], rule(video_id, dataset))
        got = os.path.join(block["data_dict"]["root_dir"][dataset], registry.get(task).video_file(video_id, dataset))
        assert got == want
    assert os.path.exists(want)


def test_vis_frame_folders_per_dataset(world):
    vis = {r["video_id"]: r for r in _records(world["out"], "vis")}
    roots = world["blocks"]["TaskVIS"]["data_dict"]["root_dir"]
    assert vis["003234408d"]["source"] == os.path.join(roots["YoutubeVIS"], "003234408d")
    assert vis["00007"]["source"] == os.path.join(roots["LVVIS"], "00007")
    assert vis["000000000009"]["source"] == os.path.join(roots["COCOPseudoVIS"], "000000000009.jpg")


# ------------------------------------------------------------------------------------------- labels
def test_label_tables_are_per_dataset_and_ordered_by_id(world):
    for task in ("kinetics", "ssv2"):
        table = world["tables"][task]
        assert load_metadata(world["out"] / task)["class_names"] == [table[i] for i in range(len(table))]
    for task in ("localization", "vis"):
        meta = load_metadata(world["out"] / task)
        assert meta["class_names"] == []  # no flattened "HACS/archery" union
        want = {ds: [t.get(i, "") for i in range(max(t) + 1)] for ds, t in world["tables"][task].items()}
        assert meta["label_tables"] == want
        assert label_tables.dataset_order(meta) == tuple(sorted(want))
    # LV-VIS has more classes than the original's subsampling threshold; COCO and YouTube-VIS do not.
    sizes = {ds: sum(1 for n in t if n) for ds, t in load_metadata(world["out"] / "vis")["label_tables"].items()}
    assert [ref.vis_subsampled(sizes[d]) for d in ("LVVIS", "COCOPseudoVIS", "YoutubeVIS")] == [True, False, False]


def test_label_ids_per_record_row(world):
    for task in ("kinetics", "ssv2"):
        want = {s.path: s.fields["label"] for s in _kept(world, task)}
        for r in _records(world["out"], task):
            assert r["label"] == want[r["source"]]
    rows = _rows(_kept(world, "localization"))
    for r in _records(world["out"], "localization"):
        want = rows[(r["dataset"], r["source"])]
        assert list(r["segment_labels"]) == [s.fields["label"] for s in want]
        np.testing.assert_allclose(r["segments"], [[s.fields["start"], s.fields["end"]] for s in want])
    rows = _rows(_kept(world, "vis"))
    for r in _records(world["out"], "vis"):
        (s,) = rows[(r["dataset"], r["source"])]
        assert list(r["categories"]) == [v for v, _, _ in s.fields["instances"]]
    # COCO's first category (person) keeps its class: value 0, a real row of the COCO table.
    coco = load_metadata(world["out"] / "vis")["label_tables"]["COCOPseudoVIS"]
    assert coco[0] == "person"


def test_inspect_prints_what_the_original_reads(world, capsys):
    from data_pipelines import inspect

    tables = world["tables"]
    for task in TASKS:
        assert inspect.main([str(world["out"] / task)]) == 0
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        rows = _rows(_kept(world, task))
        assert len(lines) == len(rows)
        for line in lines:
            samples = rows[(line["dataset"], line["path"])]
            assert line["samples"] == len(samples)
            n, _ = _video_info(line["path"]) if task != "vis" else (len(samples[0].frame_paths), None)
            assert line["num_frames"] == n
            if task in ("kinetics", "ssv2"):
                assert line["labels"] == [samples[0].fields["label_name"]]
            elif task == "retrieval":
                assert line["rows"] == [s.fields["captions"] for s in samples]
            elif task == "grounding":
                assert line["captions"] == [s.fields["text"] for s in samples]
                want = [{"label": s.fields["text"], "start": a, "end": b} for s in samples
                        for a, b in (s.fields["relevant_windows"] if len(s.fields["relevant_windows"]) > 1
                                     else [(s.fields["start"], s.fields["end"])])]
                assert line["segments"] == want
            elif task == "localization":
                names = [tables["localization"][line["dataset"]][s.fields["label"]] for s in samples]
                assert line["labels"] == names == [s.fields["text"] for s in samples]  # bare class names
            else:
                table = tables["vis"][line["dataset"]]
                assert line["categories"] == [table[v] for v, _, _ in samples[0].fields["instances"]]


# ------------------------------------------------------------------------------------------- targets
def _options(task, world, train=True, size=32):
    meta = load_metadata(world["out"] / task)
    return transforms.ClipOptions(num_frames=T, size=size, train=train, flip=False, crop="short_side",
                                  clip_seconds=float(T), datasets=label_tables.dataset_order(meta))


def _check_sample(task, out, s: ref.Sample, n: int, fps: float):
    """One transformed sample against the reference: frame indices within the original sampler's ranges,
    targets computed by the reference from those indices."""
    idx = [int(i) for i in out["frame_index"]]
    assert all(0 <= i < n for i in idx)
    ts = ref.timestamps(idx, fps) if fps else None
    if task in ("kinetics", "ssv2", "localization", "grounding", "vis"):
        ranges = {"kinetics": lambda: ref.kinetics_ranges(n, T), "ssv2": lambda: ref.ssv2_ranges(n, T),
                  "localization": lambda: ref.localization_ranges(n, T), "vis": lambda: ref.vis_ranges(n, T),
                  "grounding": lambda: ref.fixfps_ranges(s.fields["start"], s.fields["end"], n, fps, T)}[task]()
        assert all(lo <= i <= hi for i, (lo, hi) in zip(idx, ranges)), (task, s.path, idx, ranges)
    if task == "retrieval":
        vlen = ref.retrieval_vlen(n, fps, s.fields["trimmed30s"])
        ranges = ref.retrieval_ranges(vlen, T)
        if ranges is None:  # a sorted random subset of min(T, vlen) frames, padded with the last
            k = min(T, vlen)
            assert idx[:k] == sorted(set(idx[:k])) and all(i < vlen for i in idx) and set(idx[k:]) <= {idx[k - 1]}
        else:
            assert all(lo <= i <= hi for i, (lo, hi) in zip(idx, ranges)), (s.path, idx, ranges)
        assert out["caption"] in s.fields["captions"]
    if ts is not None:
        np.testing.assert_allclose(out["timestamps"], ts, atol=1e-6)
    if task in ("kinetics", "ssv2"):
        assert out["label"] == s.fields["label"]
    elif task == "grounding":
        assert out["caption"] == s.fields["text"]
        np.testing.assert_array_equal(out["label"], ref.grounding_labels(ts, s.fields["start"], s.fields["end"],
                                                                         s.fields["relevant_windows"]))
    elif task == "localization":
        np.testing.assert_array_equal(out["label"], ref.localization_labels(
            ts, s.fields["start"], s.fields["end"], s.fields["relevant_windows"], s.fields["label"]))


@pytest.mark.parametrize("task", TASKS)
def test_every_sample_transforms_to_the_originals_targets(world, task):
    """Every sample (annotation row) of every dataset, several draws each, against the reference."""
    samples = loader.task_samples(world["out"] / task)
    meta = load_metadata(world["out"] / task)
    assert len(samples) == meta["num_samples"] == len(_kept(world, task))
    rows = _rows(_kept(world, task))
    transform = transforms.make_transform(task, _options(task, world))
    src = sources.open_source(world["out"] / task)
    infos, seen = {}, collections.Counter()
    for k in range(len(samples)):
        r, row = samples.locate(k)
        rec = schema.decode_record(src[r])
        s = rows[(rec["dataset"], rec["source"])][row]
        if s.path not in infos:
            infos[s.path] = (len(s.frame_paths), 0.0) if task == "vis" else _video_info(s.path)
        for draw in range(4):
            out = transform.random_map(samples[k], np.random.default_rng([k, draw]))
            assert out["row"] == row and out["dataset"] == s.dataset
            _check_sample(task, out, s, *infos[s.path])
            if task in ("localization", "vis"):
                assert out["dataset_id"] == label_tables.dataset_order(meta).index(s.dataset)
            seen[(s.dataset, s.path, row)] += 1
    assert len(seen) == len(_kept(world, task))  # each annotation row is its own sample


def test_retrieval_trims_didemo_to_30_seconds(world):
    samples = loader.task_samples(world["out"] / "retrieval")
    transform = transforms.make_transform("retrieval", _options("retrieval", world))
    src = sources.open_source(world["out"] / "retrieval")
    didemo = [k for k in range(len(samples)) if schema.decode_record(src[samples.locate(k)[0]])["dataset"] == "DiDeMo"]
    (k,) = didemo  # a 40 s video at 1 fps: frames >= 30 are never drawn; other datasets are not trimmed
    top = max(int(transform.random_map(samples[k], np.random.default_rng(d))["frame_index"].max()) for d in range(50))
    assert top <= 29 and ref.retrieval_vlen(40, 1.0, True) == 30


def test_vis_masks_are_the_originals_at_input_resolution(world):
    """Evaluation crop (centre 48 x 48 of the 48 x 64 frames, no resize): the mask equals the reference's
    category map on those columns, background -1, COCO's person class 0 kept."""
    meta = load_metadata(world["out"] / "vis")
    samples = loader.task_samples(world["out"] / "vis")
    rows = _rows(_kept(world, "vis"))
    transform = transforms.make_transform("vis", _options("vis", world, train=False, size=formats.VIS_SIZE[0]))
    src = sources.open_source(world["out"] / "vis")
    left = (formats.VIS_SIZE[1] - formats.VIS_SIZE[0]) // 2
    values = set()
    for k in range(len(samples)):
        rec = schema.decode_record(src[samples.locate(k)[0]])
        (s,) = rows[(rec["dataset"], rec["source"])]
        out = transform.random_map(samples[k], np.random.default_rng(0))
        assert out["mask"].shape == (T, formats.VIS_SIZE[0], formats.VIS_SIZE[0])
        want = ref.vis_target(s, out["frame_index"])[:, :, left:left + formats.VIS_SIZE[0]]
        np.testing.assert_array_equal(out["mask"], want)
        assert out["dataset_id"] == label_tables.dataset_order(meta).index(s.dataset)
        values |= set(np.unique(out["mask"]).tolist())
    assert 0 in values and {57, 101} <= values  # COCO person (0) and LV-VIS raw ids


# ------------------------------------------------------------------------------------------- mixture
def _data_config(world, batch, **kw):
    spec = importlib.util.spec_from_file_location("_cfg_data_pretrain", REPO / "configs" / "data_pretrain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.global_batch_size, c.num_frames, c.image_size, c.worker_count = batch, T, 32, 0
    for t in TASKS:
        c.tasks[t].data_dir = str(world["out"] / t)
        c.tasks[t].randaugment = ""
    for k, v in kw.items():
        c[k] = v
    return c


@pytest.mark.parametrize("batch, replicas", [(1, 2), (2, 1), (1, 3)])
def test_mixture_epoch_is_the_original_samplers(world, batch, replicas):
    """Balancing, batches per task, cycles and the epoch's tail, against the reference sampler (B per rank, R
    ranks = our global batch B * R)."""
    plan = loader.mixture_plan(_data_config(world, batch * replicas))
    lengths = {t: len(_kept(world, t)) for t in TASKS}
    assert dict(plan.samples) == lengths
    balanced = ref.balanced_lengths(lengths)
    assert {t: plan.samples[t] * plan.copies[t] for t in TASKS} == balanced
    assert list(plan.order) == ref.sampler_epoch(balanced, batch, replicas)
    factors = ref.cycle_factors(balanced, batch, replicas)
    assert plan.cycle == tuple(t for t in TASKS for _ in range(factors[t]))


def test_each_epoch_draws_every_balanced_sample_once_and_reshuffles(world):
    """Within an epoch a task's draws are distinct balanced positions (each sample at most `copies` times, exactly
    that when the epoch uses all positions); the next epoch is another permutation."""
    config = _data_config(world, 2)
    plan = loader.mixture_plan(config)
    for task in TASKS:
        samples = loader.task_samples(world["out"] / task)
        per_epoch = plan.batches[task] * 2
        stream = TaskStream(grain.MapDataset.source(samples), seed=1, copies=plan.copies[task],
                            epoch_elements=per_epoch)
        epochs = [[stream.sample_index(e * per_epoch + u) for u in range(per_epoch)] for e in range(3)]
        for drawn in epochs:
            counts = collections.Counter(drawn)
            assert max(counts.values()) <= plan.copies[task]
            if per_epoch == len(samples) * plan.copies[task]:
                assert set(counts.values()) == {plan.copies[task]} and len(counts) == len(samples)
        assert epochs[0] != epochs[1] != epochs[2]


def test_batches_of_all_six_tasks_through_the_iterator(world):
    """One epoch of micro-batches from the trainer's iterator: each is task-pure in the original's order and every
    row matches the reference."""
    config = _data_config(world, 2)
    plan = loader.mixture_plan(config)
    it = loader.make_train_iterator(config)
    rows = {t: _rows(_kept(world, t)) for t in TASKS}
    by_id = {t: {(r["dataset"], r["video_id"]): r["source"] for r in _records(world["out"], t)} for t in TASKS}
    infos = {}
    for m, want_task in enumerate(plan.order):
        batch = next(it)
        assert batch["task"] == want_task, m
        task = want_task
        assert batch["video"].shape == (2, T, 32, 32, 3) and batch["video"].dtype == np.uint8
        for b in range(2):
            source = by_id[task][(str(batch["dataset"][b]), str(batch["video_id"][b]))]
            s = rows[task][(str(batch["dataset"][b]), source)][int(batch["row"][b])]
            if s.path not in infos:
                infos[s.path] = (len(s.frame_paths), 0.0) if task == "vis" else _video_info(s.path)
            _check_sample(task, {k: v[b] for k, v in batch.items() if k != "task"}, s, *infos[s.path])
    it.close()


def test_resume_in_the_middle_of_a_six_task_cycle_is_exact(world):
    """Stop after micro-batch 9 (the middle of the second six-task cycle), restore into a fresh pipeline, and get
    bit-identical batches through the end of the epoch and into the next (reshuffled) one."""
    config = _data_config(world, 2)
    plan = loader.mixture_plan(config)
    assert len(plan.cycle) == 6 and len(plan.order) % 6  # the epoch ends with shorter cycles
    it = loader.make_train_iterator(config)
    for _ in range(9):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    stop = len(plan.order) + 8
    expected = [next(it) for _ in range(9, stop)]
    it.close()
    restored = loader.make_train_iterator(config)
    restored.set_state(state)
    for want in expected:
        got = next(restored)
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]), err_msg=key)
    assert [b["task"] for b in expected] == list((plan.order * 2)[9:stop])
    restored.close()


def test_command_line_errors_are_one_line(world, tmp_path, capsys):
    from data_pipelines import inspect
    from data_pipelines.convert.__main__ import main as convert_main

    assert inspect.main([str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nope'}: no such directory"
    assert inspect.main([str(world["out"] / "kinetics"), "--index", "99"]) == 2
    assert "--index 99 out of range (it holds 4 records)" in capsys.readouterr().err
    # A grounding row of a dataset without a root_dir entry: the file and line, before anything is written.
    text = pathlib.Path(world["metadata"]).read_text().replace("          QuerYD: ", "          Other: ")
    bad = tmp_path / "all.yaml"
    bad.write_text(text)
    assert convert_main(["from-metadata", "--metadata", str(bad), "--out", str(tmp_path / "out"),
                         "--tasks", "grounding", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: malformed annotation: ") and "train.csv:12:" in err[0]
    assert "dataset 'QuerYD' has no data_dict.root_dir entry" in err[0] and not (tmp_path / "out").exists()
    assert convert_main(["from-metadata", "--metadata", str(bad), "--out", str(tmp_path / "out"),
                         "--tasks", "nope"]) == 2
    assert "--tasks nope: not in" in capsys.readouterr().err
