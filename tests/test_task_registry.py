"""The task registry: the six original tasks in the original's order, per-dataset file-name rules, and a seventh
task defined and registered from this file alone that converts, loads and trains one optimizer step through the
unchanged converter, input pipeline, multitask model and trainer (docs/multitask.md, "Adding a task")."""
import jax.numpy as jnp
import numpy as np
import pytest

from data_helpers import make_test_video
from data_pipelines.records import schema
from data_pipelines.annotations import classification
from data_pipelines.convert import convert
from data_pipelines.records.sources import open_source
from data_pipelines.pipeline.builtin import CLASS_NAMES
from data_pipelines.pipeline.transforms import KineticsTransform
from streamformer_jax.tasks import losses, registry
from streamformer_jax.tasks.heads import TaskHead
from test_train_support import load_config, read_metrics

TOY = "toy_colour"


def test_the_original_six_tasks_in_the_original_order():
    assert registry.names()[:6] == ("kinetics", "ssv2", "retrieval", "grounding", "localization", "vis")
    assert registry.with_text_kind(registry.LABELS)[:4] == ("kinetics", "ssv2", "localization", "vis")
    assert registry.with_text_kind(registry.CAPTIONS)[:2] == ("retrieval", "grounding")
    assert [registry.get(t).official_name for t in registry.names()[:6]] == [
        "Kinetics", "SSV2", "TaskRetrieval", "TaskGrounding", "TaskLocalization", "TaskVIS"]
    with pytest.raises(ValueError, match="unknown task 'kinetic'"):
        registry.get("kinetic")
    with pytest.raises(ValueError, match="already registered"):
        registry.register(registry.get("kinetics"))


@pytest.mark.parametrize("task, video_id, dataset, expected", [
    ("retrieval", "video7", "MSRVTT", "video7.mp4"),
    ("retrieval", "clip", "LSMDC", "clip.avi"),
    ("retrieval", "clip", "MSVD", "clip.avi"),
    ("retrieval", "clip.webm", "WebVid", "clip.webm.mp4"),  # only ".mp4" counts as already there (the original)
    ("retrieval", "clip.mp4", "DiDeMo", "clip.mp4"),
    ("retrieval", "1004_Juno_00.00.32.176-00.00.36.963", "LSMDC", "1004_Juno_00.00.32.176-00.00.36.963.avi"),
    ("grounding", "s13-d21", "TaCoS", "s13-d21-cam-002.avi"),
    ("grounding", "abc", "QVHighlights", "abc.mp4"),
    ("localization", "abc", "HACS", "v_abc.mp4"),
    ("localization", "abc.mp4", "HACS", "v_abc.mp4"),
    ("localization", "s13-d21", "TaCoS", "s13-d21-cam-002.avi"),
    ("localization", "abc", "FineAction", "abc.mp4"),
])
def test_per_dataset_video_file_rules(task, video_id, dataset, expected):
    assert registry.get(task).video_file(video_id, dataset) == expected


# ---- the seventh task: everything it needs is below ----
def toy_loss(x: registry.LossInputs):
    """The clip's frame-averaged vector against the colour names' label embeddings."""
    labels = jnp.asarray(x.batch["label"], jnp.int32)
    loss, z = losses.classification_loss(x.pooled.mean(axis=1), x.text[x.task], labels, x.logit_scale,
                                         x.logit_bias)
    return loss, jnp.mean(jnp.argmax(z, -1) == labels)


TOY_SPEC = registry.TaskSpec(
    name=TOY, official_name="ToyColour", text_kind=registry.LABELS, record_fields=("label",),
    parse_annotations=classification.parse_list, record_counts=lambda fields: {f"label/{fields['label']}": 1},
    transform=KineticsTransform, pipeline_defaults=dict(crop="short_side", flip=True),
    builtin_fields=lambda clip: {"label": clip.cls}, builtin_class_names=CLASS_NAMES, builtin_whole_clip=True,
    make_head=TaskHead, loss=toy_loss, templates=("a {} square.", "something {}."))


@pytest.fixture
def toy_task():
    registry.register(TOY_SPEC)
    yield TOY_SPEC
    registry.unregister(TOY)


def test_a_seventh_task_converts_and_round_trips_its_records(toy_task, tmp_path):
    make_test_video(tmp_path / "videos" / "a.mp4", num_frames=8)
    (tmp_path / "ann.csv").write_text("a.mp4,2\n")
    summary = convert(TOY, str(tmp_path / "ann.csv"), str(tmp_path / "videos"), str(tmp_path / "out"),
                      progress=False)
    assert summary.num_examples == 1
    rec = schema.decode_record(open_source(str(tmp_path / "out"))[0])
    assert rec["task"] == TOY and rec["label"] == 2 and len(rec["frames"]) == 8
    with pytest.raises(schema.SchemaError, match="lacks fields"):
        schema.encode_record({k: v for k, v in rec.items() if k != "label"})


@pytest.mark.slow  # about 25 s: a training step of the seven-task model
def test_a_seventh_task_trains_one_step(toy_task, tmp_path):
    from streamformer_jax.train import loop

    config = load_config("pretrain_multitask", "tiny")  # after registering: the task's pipeline settings are in
    assert TOY in config.data.tasks and config.data.task_order[-1] == TOY
    config.builtin_dir = str(tmp_path / "builtin")
    config.tasks = TOY
    config.model.overrides.num_layers = 1
    config.accum_steps, config.total_steps = 1, 1
    config.progress_bar = False
    summary = loop.train(config, tmp_path / "run")
    assert summary["step"] == 1 and summary["stopped"] == "done"
    row = read_metrics(tmp_path / "run")[-1]
    assert np.isfinite(row[f"loss/{TOY}"]) and 0.0 <= row[f"{TOY}/accuracy"] <= 1.0
    assert row[f"{TOY}/logit_scale"] == pytest.approx(np.log(10.0))  # the head's initial value (SigLIP's)
    model = summary["trainer"].tm.model  # a head per task with data (the built-in dataset holds every task)
    assert model.tasks[-1] == TOY and TOY in model.heads
    assert (tmp_path / "run" / "export" / "streamformer_config.json").is_file()
