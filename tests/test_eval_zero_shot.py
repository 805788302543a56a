"""Zero-shot evaluation of the pretraining tasks, end to end on built-in data.

One tiny pretraining run (retrieval, grounding, localization, VIS; 2 steps; `eval_every=1`) serves every test:
the periodic evaluation it logs, the export it writes (heads and text tower in the original layout), the three
CLIs on its export over held-out records and over original annotation files, resuming, errors, and the
`.pth` round trip. References are computed independently (record frames decoded and resized here, the
backbone run through `FeatureExtractor`, ranks by sorting)."""
import csv
import io
import json
import pathlib

import numpy as np
import pytest

from test_train_support import builtin_dir, jax_cache, read_metrics, tiny_config  # noqa: F401

TASKS = ("retrieval", "grounding", "localization", "vis")


@pytest.fixture(scope="module")
def run(builtin_dir, jax_cache, tmp_path_factory):  # noqa: F811
    from streamformer_jax.train import loop, zero_shot_eval

    workdir = tmp_path_factory.mktemp("zero_shot_run")
    # LoRA rank 32: the official class's rank, so the exported .pth loads into the reference backbone strictly
    config = tiny_config(builtin_dir, jax_cache, tasks=TASKS, total_steps=2, eval_every=1,
                         **{"model.overrides.lora_rank": 32, "checkpoint.every_steps": 2})
    calls = []

    def evaluator(setup):  # the callback seam of train(): a factory of `.every` + `(step, state) -> metrics`
        zero_shot = zero_shot_eval.make_evaluator(setup)

        class Recording:
            every = zero_shot.every

            def __call__(self, step, state):
                calls.append(step)
                return zero_shot(step, state)

        return Recording()

    summary = loop.train(config, workdir, log=lambda s: None, evaluator=evaluator)
    assert summary["stopped"] == "done"
    summary["evaluated_steps"] = calls
    return workdir, pathlib.Path(builtin_dir) / "heldout" / "records", summary


# ---------------------------------------------------------------------------------------- during training
def test_periodic_evaluation_is_logged(run):
    workdir, records, summary = run
    rows = [r for r in read_metrics(workdir) if any(k.startswith("eval/") for k in r)]
    assert [r["step"] for r in rows] == [1, 2] and summary["evaluated_steps"] == [1, 2]
    for r in rows:
        assert 0 <= r["eval/retrieval/builtin/t2v_R@1"] <= 1
        assert "eval/grounding/builtin/factor_0.7/R@1,IoU=0.5" in r
        assert "eval/localization/builtin/average_mAP" in r
    assert (records / "retrieval" / "metadata.json").is_file()  # held-out built-in records, written once
    events = b"".join(p.read_bytes() for p in (workdir / "tensorboard").iterdir())
    assert b"eval/localization/builtin/average_mAP" in events  # TensorBoard gets the same scalars


# ------------------------------------------------------------------------------------------------- CLIs
def _reference_retrieval(export, records):
    """Independent recomputation: frames of each record at the UMT 'middle' indices, PIL bicubic square resize,
    FeatureExtractor forward, last frame's pooled vector; captions through the text tower; ranks by sorting."""
    from PIL import Image

    from data_pipelines.records import schema
    from data_pipelines.records import sources
    from eval.pretrained import load_pretrained
    from streamformer_jax.api import FeatureExtractor
    from streamformer_jax.text.embeddings import encode_texts

    fx = FeatureExtractor.from_checkpoint(export)
    t, s = fx.config.num_frames, fx.config.image_size
    src = sources.open_source(records / "retrieval")
    videos, captions = [], []
    for i in range(len(src)):
        ex = schema.decode_record(src[i])
        n = len(ex["frames"])
        k = min(t, n)
        edges = [int(x) for x in np.linspace(0, n, k + 1)]
        idx = [(edges[j] + edges[j + 1] - 1) // 2 for j in range(k)] + [None] * (t - k)
        idx = [x if x is not None else idx[k - 1] for x in idx]
        frames = np.stack([np.asarray(Image.open(io.BytesIO(ex["frames"][j])).convert("RGB")
                                      .resize((s, s), Image.BICUBIC)) for j in idx])
        videos.append(fx(frames)["pooler_output"][-1])
        captions.append(ex["captions"][0])
    pm = load_pretrained(export)
    text = encode_texts(pm.model.text_encoder, pm.tokenizer, captions)
    v = np.stack(videos) / np.linalg.norm(videos, axis=1, keepdims=True)
    u = text / np.linalg.norm(text, axis=1, keepdims=True)
    sim = u @ v.T
    ranks = np.array([list(np.argsort(-row)).index(i) + 1 for i, row in enumerate(sim)])
    return {f"R@{k}": float(np.mean(ranks <= k)) for k in (1, 5)}


def test_retrieval_cli_matches_independent_reference(run, tmp_path):
    from eval import retrieval

    workdir, records, _ = run
    out = tmp_path / "retrieval.json"
    assert retrieval.main(["--checkpoint", str(workdir / "export"), "--data", str(records), "--out", str(out),
                           "--no-progress"]) == 0
    res = json.loads(out.read_text())
    ds = res["datasets"]["builtin"]
    assert ds["num_videos"] == ds["num_queries"] == 8 and res["num_failed"] == 0 and not ds["paragraph"]
    ref = _reference_retrieval(workdir / "export", records)
    assert ds["t2v"]["R@1"] == pytest.approx(ref["R@1"]) and ds["t2v"]["R@5"] == pytest.approx(ref["R@5"])
    assert not out.with_name(out.name + ".features").exists()  # the resume cache is removed when done


def test_grounding_and_localization_clis(run, tmp_path):
    from eval import grounding, localization

    workdir, records, _ = run
    for module, name in ((grounding, "grounding"), (localization, "localization")):
        out = tmp_path / f"{name}.json"
        assert module.main(["--checkpoint", str(workdir), "--data", str(records), "--out", str(out),
                            "--no-progress"]) == 0  # a run directory: its newest checkpoint, exported once
        res = json.loads(out.read_text())["datasets"]["builtin"]
        assert res["num_videos"] == 16
        if name == "grounding":
            assert set(res) >= {"factor_0.5", "factor_0.6", "factor_0.7"} and res["num_queries"] == 16
        else:
            assert set(res) >= {"mAP@0.5", "mAP@0.95", "average_mAP"} and res["num_segments"] == 16
    assert (workdir / "export_step2").is_dir() or (workdir / "export" / "text_config.json").is_file()


def test_grounding_cli_on_original_annotation_csv(run, tmp_path):
    """The original TaskGrounding CSV (header, Python-literal windows, dataset column) + a video folder."""
    from data_pipelines.records import schema
    from data_pipelines.records import sources
    from eval import grounding

    workdir, records, _ = run
    src = sources.open_source(records / "grounding")
    rows = []
    for i in range(len(src)):
        ex = schema.decode_record(src[i])
        (s, e), = ex["windows"].tolist()
        rows.append([ex["video_id"], s, e, ex["captions"][0], repr([[s, e]]), "Charades" if i % 2 else "TaCoS2"])
    ann = tmp_path / "grounding.csv"
    with open(ann, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video_id", "start_second", "end_second", "text", "relevant_windows", "dataset"])
        w.writerows(rows)
    out = tmp_path / "g.json"
    assert grounding.main(["--checkpoint", str(workdir / "export"), "--data", str(ann), "--video-root",
                           str(records.parent / "videos"), "--out", str(out), "--no-progress",
                           "--method", "max_subarray"]) == 0
    res = json.loads(out.read_text())
    assert res["data_kind"] == "annotations" and set(res["datasets"]) == {"Charades", "TaCoS2"}
    assert res["datasets"]["Charades"]["num_queries"] == 8 and "max_subarray" in res["datasets"]["Charades"]


def test_localization_cli_on_activitynet_json(run, tmp_path):
    """ActivityNet-style JSON (database / subset / segment + label) with a class table and a subset filter."""
    from data_pipelines.records import schema
    from data_pipelines.pipeline import builtin
    from data_pipelines.records import sources
    from eval import localization

    workdir, records, _ = run
    src = sources.open_source(records / "localization")
    database = {}
    for i in range(len(src)):
        ex = schema.decode_record(src[i])
        database[ex["video_id"]] = {"duration": ex["duration"], "subset": "validation" if i < 10 else "training",
                                    "annotations": [{"segment": [float(s), float(e)], "label": builtin.CLASS_NAMES[c]}
                                                    for (s, e), c in zip(ex["segments"], ex["segment_labels"])]}
    ann = tmp_path / "anet.json"
    ann.write_text(json.dumps({"database": database}))
    (tmp_path / "classes.txt").write_text("\n".join(builtin.CLASS_NAMES) + "\n")
    out = tmp_path / "loc.json"
    assert localization.main(["--checkpoint", str(workdir / "export"), "--data", str(ann), "--video-root",
                              str(records.parent / "videos"), "--class-names", str(tmp_path / "classes.txt"),
                              "--subset", "validation", "--out", str(out), "--no-progress"]) == 0
    res = json.loads(out.read_text())
    ds = res["datasets"]["default"]
    assert res["num_items"] == 10 and ds["num_videos"] == 10 and 0 <= ds["average_mAP"] <= 1


def test_features_resume_after_interruption(run, tmp_path):
    from eval.pretrained import load_pretrained
    from streamformer_jax.zero_shot.evaluate import evaluate, fingerprint
    from streamformer_jax.zero_shot.features import FeatureCache, FeatureRunner
    from streamformer_jax.zero_shot.items import find_items

    workdir, records, _ = run
    pm = load_pretrained(workdir / "export")
    items, _ = find_items(records, "grounding")
    full = evaluate("grounding", pm, items, progress=False)
    runner = FeatureRunner(pm.model.backbone)
    calls = []
    real_call = FeatureRunner.__call__

    def failing(self, frames):
        if len(calls) == 1:
            raise KeyboardInterrupt  # stop during the second batch
        calls.append(1)
        return real_call(self, frames)

    cache = tmp_path / "cache.npz"
    FeatureRunner.__call__ = failing
    try:
        with pytest.raises(KeyboardInterrupt):
            evaluate("grounding", pm, items, progress=False, cache_path=cache, batch_size=8, runner=runner)
    finally:
        FeatureRunner.__call__ = real_call
    saved = FeatureCache(cache, fingerprint("grounding", "", 4, len(items), ["DiDeMo"]))
    assert len(saved.feats) == 8  # the first batch was kept
    batches = []
    counting = lambda self, frames: batches.append(1) or real_call(self, frames)  # noqa: E731
    FeatureRunner.__call__ = counting
    try:
        resumed = evaluate("grounding", pm, items, progress=False, cache_path=cache, batch_size=8, runner=runner)
    finally:
        FeatureRunner.__call__ = real_call
    assert len(batches) == 1  # only the 8 remaining clips
    assert resumed["datasets"] == full["datasets"]


def test_user_errors_are_one_line(run, tmp_path, capsys):
    from eval import localization, retrieval

    workdir, records, _ = run
    cases = [
        (retrieval, ["--checkpoint", str(tmp_path / "missing"), "--data", str(records)], "missing"),
        (retrieval, ["--checkpoint", str(workdir / "export"), "--data", str(tmp_path / "none.csv")], "none.csv"),
        (localization, ["--checkpoint", str(workdir / "export"), "--data", str(records / "retrieval")],
         "retrieval"),
    ]
    ann = tmp_path / "r.csv"
    ann.write_text("video_id,dataset,text\nv1,MSRVTT,\"['a caption']\"\n")
    cases.append((retrieval, ["--checkpoint", str(workdir / "export"), "--data", str(ann)], "--video-root"))
    for module, argv, needle in cases:
        assert module.main(argv + ["--out", str(tmp_path / "o.json"), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err


# ------------------------------------------------------------------------------------------ export / .pth
def _expected_wrapper_keys(config, text_layers: int, tasks) -> int:
    """Spec §1.9's count: 2 wrapper scalars + backbone (+ mask buffers) + text tower + per task (2 scalars +
    text aliases) + VIS (11 MAP-head aliases + 10 projection tensors)."""
    backbone = 4 + config.num_layers * 26 + 2 + 11
    text = 2 + text_layers * 16 + 2 + 2
    return 2 + backbone + text + len(tasks) * (2 + text) + (21 if "vis" in tasks else 0)


def test_official_wrapper_count_for_vit_b():
    from types import SimpleNamespace

    # the released model: ViT-B (12 layers) + SigLIP text (12 layers), six tasks -> the verified 1750 entries
    six = ("kinetics", "ssv2", "retrieval", "grounding", "localization", "vis")
    assert _expected_wrapper_keys(SimpleNamespace(num_layers=12), 12, six) == 1750


def test_pth_export_of_a_trained_checkpoint_round_trips(run, tmp_path):
    torch = pytest.importorskip("torch")
    from torch_reference import ReferenceBackbone

    from streamformer_jax.checkpoint import load_checkpoint
    from streamformer_jax.convert.__main__ import main as convert
    from streamformer_jax.convert.pretrain import read_extras
    from streamformer_jax.param_tree import flat_params
    from streamformer_jax.tasks.model import MultiTaskModel

    workdir, _, _ = run
    export = workdir / "export"
    pth = tmp_path / "checkpoint-epoch.pth"
    assert convert(["export-pytorch", "--checkpoint", str(export), "--out", str(pth)]) == 0
    state = torch.load(pth, map_location="cpu", weights_only=True)["model"]
    config, params = load_checkpoint(export)
    meta = json.loads((export / "text_config.json").read_text())
    # every task with labels in the data has a head (the built-in dataset has all six)
    assert len(state) == _expected_wrapper_keys(config, meta["text_config"]["num_hidden_layers"], meta["tasks"])
    for task in ("TaskRetrieval", "TaskGrounding", "TaskLocalization", "TaskVIS"):
        assert f"task_heads.{task}.logit_scale" in state
        alias = f"task_heads.{task}.text_encoder.text_model.head.weight"
        assert state[alias].data_ptr() == state["text_encoder.text_model.head.weight"].data_ptr()  # stored once
    assert state["task_heads.TaskVIS.head.probe"].data_ptr() == state["timesformer.head.probe"].data_ptr()
    # the downstream loaders (ckpt_to_pretrained-style): `timesformer.*` loads strictly into the backbone class
    ref = ReferenceBackbone(config.to_hf_dict())
    ref.load_state_dict({k[len("timesformer."):]: v for k, v in state.items() if k.startswith("timesformer.")},
                        strict=True)
    # back: import-pytorch, then the heads and text tower equal the trained ones bit for bit
    back = tmp_path / "back"
    assert convert(["import-pytorch", "--src", str(pth), "--out", str(back), "--num-heads",
                    str(config.num_heads)]) == 0
    config2, params2 = load_checkpoint(back)
    assert config2 == config and all(np.array_equal(params[k], params2[k]) for k in params)
    tasks = meta["tasks"]
    heads = meta["text_config"]["num_attention_heads"]
    a = flat_params(MultiTaskModel.from_pretrained(export, tasks, text_num_heads=heads))
    b = flat_params(MultiTaskModel.from_pretrained(back, tasks, text_num_heads=heads))
    assert sorted(a) == sorted(b)
    assert all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)
    trained = read_extras(export)[0]
    again = read_extras(back)[0]
    assert sorted(trained) == sorted(again) and all(np.array_equal(trained[k], again[k]) for k in trained)
    # and the trained state itself: the export holds the run's final head parameters
    final = {k: np.asarray(v) for k, v in _final_flat(workdir).items() if k.startswith("heads.")}
    assert all(np.array_equal(np.asarray(a[k]), final[k]) for k in final)


def _final_flat(workdir):
    from streamformer_jax.train import export as export_lib  # noqa: F401
    import ml_collections

    from streamformer_jax.param_tree import flatten
    from streamformer_jax.train import loop

    config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    with config.unlocked():
        config.distributed.initialize = "no"
    setup = loop.Setup(config, workdir, log=lambda s: None)
    step, state, _ = setup.ckpt.restore_latest(setup.trainer.abstract_state())
    setup.ckpt.close()
    import jax

    return {**flatten(jax.device_get(state["params"])), **flatten(jax.device_get(state["frozen"]))}


def test_export_with_sentencepiece_tokenizer_loads_back(tmp_path):
    """A run with a real (SentencePiece) tokenizer: the export copies spiece.model and records it, and
    load_pretrained rebuilds the same tokenizer, text tower and heads without any other input."""
    spm = pytest.importorskip("sentencepiece")
    from eval.pretrained import load_pretrained
    from streamformer_jax.checkpoint import save_checkpoint
    from streamformer_jax.models.config import get_preset
    from streamformer_jax.text import SiglipTokenizer
    from streamformer_jax.text.model import SiglipTextConfig, init_text_model
    from streamformer_jax.param_tree import flat_params
    from streamformer_jax.tasks.model import MultiTaskModel
    from streamformer_jax.train.pretrain_export import write_pretrain_export

    model_file = io.BytesIO()
    corpus = ["a red square moves", "the blue block slides across", "a video of a person"] * 30
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=model_file, vocab_size=30,
                                   model_type="unigram", character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2,
                                   bos_id=-1, minloglevel=2)
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "spiece.model").write_bytes(model_file.getvalue())
    tok = SiglipTokenizer(tmp_path / "tok", max_length=16)
    cfg = get_preset("tiny", num_frames=4, image_size=32, patch_size=16, lora_rank=4, dtype="float32")
    text_cfg = SiglipTextConfig(vocab_size=30, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                num_attention_heads=4, max_position_embeddings=16, projection_size=64)
    model = MultiTaskModel(cfg, ["retrieval", "localization"], rngs=1, text_encoder=init_text_model(text_cfg, 2))
    model.set_params({"heads.retrieval.logit_scale": np.float32(3.5), "heads.localization.logit_bias": np.float32(-4)})
    flat = {k: np.asarray(v) for k, v in flat_params(model).items()}
    out = save_checkpoint(tmp_path / "export", cfg, {k[9:]: v for k, v in flat.items() if k.startswith("backbone.")})
    write_pretrain_export(out, flat, tasks=["retrieval", "localization"], backbone_config=cfg, text_config=text_cfg,
                          tokenizer=tok, label_sets={"localization": ["red", "blue"], "retrieval": []},
                          wrapper_logit_scale=2.3, wrapper_logit_bias=-10.0)
    (tmp_path / "tok" / "spiece.model").unlink()  # the export must not depend on the original file
    pm = load_pretrained(out)
    assert isinstance(pm.tokenizer, SiglipTokenizer) and pm.tokenizer.max_length == 16
    assert np.array_equal(pm.tokenizer(["a red block"]), tok(["a red block"]))
    assert pm.label_sets["localization"] == ["red", "blue"]
    assert pm.head_scalars("retrieval")[0] == pytest.approx(np.exp(3.5))
    back = flat_params(pm.model)
    assert all(np.array_equal(np.asarray(back[k]), flat[k]) for k in flat)


# ------------------------------------------------------------------------ the data branch's record semantics
def test_localization_ground_truth_is_every_window_of_each_row():
    """Per-row localization records: a row with several relevant windows is positive in each of them (the
    original's `len(relevant_windows) <= 1` rule), a row with one uses its own segment."""
    from streamformer_jax.zero_shot.evaluate import ground_truth_segments

    fields = {"segments": np.array([[0, 10], [20, 30]], np.float32), "segment_labels": np.array([3, 1], np.int32),
              "relevant_windows": np.array([[0, 2], [5, 10], [20, 30]], np.float32),
              "relevant_window_caption": np.array([0, 0, 1], np.int32)}
    assert ground_truth_segments(fields) == [(3, (0.0, 2.0)), (3, (5.0, 10.0)), (1, (20.0, 30.0))]
    plain = {"segments": np.array([[1, 2], [3, 4]], np.float32), "segment_labels": np.array([0, 2], np.int32)}
    assert ground_truth_segments(plain) == [(0, (1.0, 2.0)), (2, (3.0, 4.0))]


def test_per_dataset_label_tables():
    from streamformer_jax.zero_shot.evaluate import dataset_classes
    from streamformer_jax.zero_shot.items import EvalDataError

    tables = {"ActivityNet": ["a", "b"], "HACS": ["c", "", "d"]}
    assert dataset_classes(tables, "HACS") == ["c", "", "d"]
    with pytest.raises(EvalDataError, match="FineAction"):
        dataset_classes(tables, "FineAction")
    assert dataset_classes(["x/a", "y/b", "x/c"], "x") == ["a", "c"]
    assert dataset_classes(["a", "b"], "anything") == ["a", "b"]


def test_paragraph_queries_follow_caption_rows():
    """ActivityNet/DiDeMo paragraph retrieval: one query per annotation row (its captions joined); MSRVTT-style
    data: one query per caption."""
    from types import SimpleNamespace

    from streamformer_jax.zero_shot.evaluate import retrieval_metrics
    from streamformer_jax.zero_shot.items import EvalItem

    seen = []

    def encode(texts):
        seen.append(list(texts))
        return np.eye(8)[: len(texts)] + 0.1

    items = [EvalItem(0, "v0", "DiDeMo", "", {"captions": ["a", "b", "c"], "caption_row": np.array([0, 0, 1])}, None),
             EvalItem(1, "v1", "DiDeMo", "", {"captions": ["d"]}, None),
             EvalItem(2, "v2", "MSRVTT", "", {"captions": ["e", "f"], "caption_row": np.array([0, 1])}, None)]
    feats = {i: np.eye(8)[[i]].repeat(2, 0) for i in range(3)}
    out = retrieval_metrics(SimpleNamespace(encode=encode), items, feats)
    assert seen == [["a b", "c", "d"], ["e", "f"]]
    assert out["DiDeMo"]["num_queries"] == 3 and out["DiDeMo"]["paragraph"]
    assert out["MSRVTT"]["num_queries"] == 2 and not out["MSRVTT"]["paragraph"]


def test_retrieval_clip_honours_trim_seconds():
    from PIL import Image

    from streamformer_jax.zero_shot.clips import make_clip
    from streamformer_jax.zero_shot.items import EvalItem, Frames

    frames = Frames(np.arange(60, dtype=np.float64), 1.0, 60.0,
                    lambda idx: [Image.new("RGB", (8, 8), (int(i), 0, 0)) for i in idx])
    trimmed = EvalItem(0, "v", "Other", "", {"captions": ["x"], "trim_seconds": 30.0}, lambda: frames)
    whole = EvalItem(0, "v", "Other", "", {"captions": ["x"]}, lambda: frames)
    assert make_clip("retrieval", trimmed, 4, 8).timestamps.max() < 30
    assert make_clip("retrieval", whole, 4, 8).timestamps.max() > 30
    by_name = EvalItem(0, "v", "DiDeMo", "", {"captions": ["x"]}, lambda: frames)  # the dataset rule still applies
    assert make_clip("retrieval", by_name, 4, 8).timestamps.max() < 30
