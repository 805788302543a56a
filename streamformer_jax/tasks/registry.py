"""What defines a pretraining task (`TaskSpec`), and the one registry every other module looks tasks up in.

A task is everything that differs between, say, grounding and VIS: how its annotation files are parsed, which
record fields it stores, how a record becomes a training clip, what the built-in dataset holds for it, its head,
its loss, whether it is trained against label embeddings or captions, and its prompt templates. All of that is
one `TaskSpec`, registered once with `register`; the converter, the input pipeline, the built-in dataset, the
multitask model and the trainer only ever call `get(name)` / `specs()` and never test a task's name.

The six tasks of the original (`streamformer_jax.tasks.builtin`) are registered the first time the registry is
read, in the original's mixture order (kinetics, ssv2, retrieval, grounding, localization, vis); tasks
registered later follow in registration order. See docs/multitask.md, "Adding a task".
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Mapping

# What a task's head is scored against: label embeddings of its class names, or the embeddings of each clip's
# own caption.
LABELS = "labels"
CAPTIONS = "captions"
BUILTIN_MODULE = "streamformer_jax.tasks.builtin"


@dataclasses.dataclass(frozen=True)
class DatasetRule:
    """How one source dataset of a task names its video files, as the original loaders do.

    file = video_prefix + video_id + video_suffix, except that a `video_suffix` that is not `always` is left out
    when the id (after the prefix) already ends with it: `abc.mp4` stays `abc.mp4`, while LSMDC's dotted ids
    (`1004_Juno_00.00.32.176-00.00.36.963`) and `foo.webm` still get their suffix. Only the exact suffix counts.
    """

    video_prefix: str = ""
    video_suffix: str = ".mp4"
    always: bool = False  # append the suffix even when the id already ends with it (LSMDC/MSVD .avi, TaCoS)

    def file_name(self, video_id: str) -> str:
        name = self.video_prefix + video_id
        if self.always or not name.endswith(self.video_suffix):
            name += self.video_suffix
        return name


@dataclasses.dataclass(frozen=True)
class LossInputs:
    """What a task's loss sees: the task, the multitask model (backbone, text tower), this task's head, the
    backbone's outputs for the micro-batch, the batch itself, the text arrays of `build_label_embeddings`, and
    the step's PRNG key (None in evaluation)."""

    task: str
    model: Any
    head: Any
    features: Mapping[str, Any]
    batch: Mapping[str, Any]
    text: Mapping[str, Any]
    rng: Any
    max_vis_classes: int

    @property
    def pooled(self):
        """Per-frame pooled vectors, float32 [B, T, D]."""
        return self.features["pooler_output"].astype("float32")

    @property
    def logit_scale(self):
        return self.head.logit_scale[...]

    @property
    def logit_bias(self):
        return self.head.logit_bias[...]


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One pretraining task, end to end (fields grouped by the stage that uses them).

    Records (`data_pipelines.records.schema`):
      record_fields: schema fields every record of the task carries (besides the common ones).
      optional_record_fields: schema fields some of its records carry.
      check_record(example): raise `SchemaError` when the task's fields disagree with each other.
    Conversion (`data_pipelines.convert`):
      parse_annotations(spec, path, video_root, classes, **options) -> [annotations.Item]
      annotation_class_names(path, **options) -> class names stored in metadata.json when no class table is
        given (None: the task has no class names of its own).
      record_counts(fields) -> {name: count} added up into metadata.json's "counts".
      datasets: per source dataset, how its video files are named (`video_file`; default: `default_rule`).
      read_original(block) -> `annotations.OriginalTask`: the task's block of the original metadata file
        (`all.yaml`'s `datasets.<official_name>.train`) read as the original loader reads it (`convert
        from-metadata`); None: the task is not in the original metadata.
    Samples (the original's dataset length, `data_pipelines.pipeline.samples`):
      record_samples(fields) -> how many samples (annotation rows) one record holds; each sample is drawn
        as often as the original draws that row (default 1: one sample per record).
      per_dataset_labels: label ids index a per-dataset table (the nested label2id of localization and VIS).
    Inspection (`python -m data_pipelines.inspect`):
      describe(fields, class_name) -> the record's annotation for a reader: "labels" (class names), "captions",
        "segments" ([{"label", "start", "end"}]: class name or query text, seconds), "categories" (names), as the
        task has them; `class_name(id, dataset)` names a class id.
    Input pipeline (`data_pipelines.pipeline`):
      transform: the grain `RandomMap` class, built as `transform(options, task=name)`.
      pipeline_defaults: `configs/data_pretrain.task_config` keys (crop, flip, randaugment, ...) for this task.
    Built-in dataset (`data_pipelines.pipeline.builtin`):
      builtin_fields(clip) -> the task fields of one synthetic clip; builtin_class_names: its class names;
      builtin_whole_clip: the annotated window is the whole clip (else a third of it).
    Model and loss (`streamformer_jax.tasks.model`):
      text_kind: LABELS (scored against label embeddings of `templates`) or CAPTIONS (against the clip's caption).
      make_head(backbone_config, init_logit_scale, init_logit_bias, rngs) -> the task's head module.
      loss(LossInputs) -> (scalar loss, accuracy).
      official_name: the original's head name (`task_heads.<official_name>.*` in its checkpoints);
      official_head_rules: key rules of the head's tensors beyond logit scale/bias in those checkpoints.
    """

    name: str
    official_name: str
    text_kind: str
    record_fields: tuple[str, ...]
    parse_annotations: Callable[..., list]
    transform: type
    builtin_fields: Callable[[Any], dict]
    make_head: Callable[..., Any]
    loss: Callable[[LossInputs], tuple[Any, Any]]
    optional_record_fields: tuple[str, ...] = ()
    check_record: Callable[[Mapping[str, Any]], None] | None = None
    annotation_class_names: Callable[..., list] | None = None
    record_counts: Callable[[Mapping[str, Any]], Mapping[str, int]] | None = None
    datasets: Mapping[str, DatasetRule] = dataclasses.field(default_factory=dict)
    default_rule: DatasetRule = DatasetRule()
    read_original: Callable[[Mapping[str, Any]], Any] | None = None
    record_samples: Callable[[Mapping[str, Any]], int] | None = None
    per_dataset_labels: bool = False
    describe: Callable[[Mapping[str, Any], Callable[[int, str], str]], dict] | None = None
    pipeline_defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    builtin_class_names: tuple[str, ...] = ()
    builtin_whole_clip: bool = False
    templates: tuple[str, ...] = ()
    official_head_rules: tuple = ()

    def __post_init__(self):
        if self.text_kind not in (LABELS, CAPTIONS):
            raise ValueError(f"task {self.name!r}: text_kind must be {LABELS!r} or {CAPTIONS!r}, "
                             f"got {self.text_kind!r}")
        if self.text_kind == LABELS and not self.templates:
            raise ValueError(f"task {self.name!r}: a label task needs its prompt templates")

    @property
    def fields(self) -> tuple[str, ...]:
        """Every task-specific schema field a record may carry."""
        return self.record_fields + self.optional_record_fields

    def video_file(self, video_id: str, dataset: str) -> str:
        """The file name of a video, from its annotation id and source dataset (`datasets` rules)."""
        return self.datasets.get(dataset, self.default_rule).file_name(video_id)

    def samples_in(self, fields: Mapping[str, Any]) -> int:
        """Samples (annotation rows) in one record with these task fields."""
        return int(self.record_samples(fields)) if self.record_samples else 1

    def counts(self, fields: Mapping[str, Any]) -> dict[str, int]:
        return dict(self.record_counts(fields)) if self.record_counts else {}


_SPECS: dict[str, TaskSpec] = {}
_builtin_loaded = False


def _load_builtin() -> None:
    """The six built-in tasks, on first use: their modules import the data pipeline, which itself looks tasks
    up here, so they cannot be imported when this module is."""
    global _builtin_loaded
    if not _builtin_loaded:
        _builtin_loaded = True  # first: the built-in modules call `register`, which comes back here
        try:
            importlib.import_module(BUILTIN_MODULE)
        except BaseException:
            _builtin_loaded = False
            raise


def register(spec: TaskSpec, *, replace: bool = False) -> TaskSpec:
    """Add a task (after the built-in ones). Registering a name twice is an error unless `replace`."""
    _load_builtin()
    if spec.name in _SPECS and not replace:
        raise ValueError(f"task {spec.name!r} is already registered")
    _SPECS[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a task (tests register temporary ones)."""
    _load_builtin()
    _SPECS.pop(name, None)


def get(name: str) -> TaskSpec:
    _load_builtin()
    try:
        return _SPECS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; registered: {list(_SPECS)}") from None


def names() -> tuple[str, ...]:
    """Registered task names, in mixture order."""
    _load_builtin()
    return tuple(_SPECS)


def specs() -> tuple[TaskSpec, ...]:
    _load_builtin()
    return tuple(_SPECS.values())


def with_text_kind(kind: str) -> tuple[str, ...]:
    return tuple(s.name for s in specs() if s.text_kind == kind)
