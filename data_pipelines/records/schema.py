"""Record schema shared by the converters (writers) and the grain pipelines (readers).

One record = one source video (or one image sequence for VIS) with its frames stored as JPEGs at a fixed
rate, plus the task annotation. Frame *sampling* (16 frames, random per epoch) and augmentation happen at
read time, as in the original loaders (spec §6): the record keeps every frame the converter kept.

Serialization
-------------
A ``tf.train.Example`` protobuf (wire-compatible with TensorFlow's ``tensorflow/core/example/example.proto``)
built here from a private descriptor, so neither writing nor parsing needs TensorFlow. ``tf.io.parse_example``
and ``tfds`` can read the same bytes. Serialization is deterministic (map keys sorted), so equal examples give
byte-identical records.

Python dict produced by :func:`decode_record` (and accepted by :func:`encode_record`)
----------------------------------------------------------------------------------------
Common to every task (``Example`` feature key in brackets):

=================  ==================================  =========================================================
field              type                                meaning
=================  ==================================  =========================================================
schema_version     int  [schema_version]               ``SCHEMA_VERSION`` of the writer.
task               str  [task]                         a registered task (``streamformer_jax.tasks``).
video_id           str  [video/id]                     annotation id (e.g. relative path without suffix).
dataset            str  [video/dataset]                sub-dataset (``MSRVTT``, ``HACS``, ``YoutubeVIS``...);
                                                       "" when the annotation has none.
frames             list[bytes] [frames/jpeg]           one baseline JPEG (YUV 4:2:0, RGB when decoded) per
                                                       stored frame; decode with :func:`decode_frames`.
frame_times        float64 [n] [frames/timestamp_us]   time of each stored frame in the *source* video, in
                                                       seconds; stored as int64 microseconds (exact to 1 us).
fps                float [video/fps]                   rate of the stored frames (the target ``--fps``, or the
                                                       source rate when not resampled). float32 precision.
source_fps         float [video/source_fps]            average frame rate of the source video.
height, width      int [video/height], [video/width]   size of the stored frames (after short-side resize).
duration           float [video/duration]              source duration in seconds: from the annotation when it
                                                       gives one (grounding/localization), else from the
                                                       container. float32 precision.
source             str [video/source]                  optional: the file (or, for an image sequence, the frame
                                                       folder) that was decoded, as the annotation resolved it.
=================  ==================================  =========================================================

``len(frames) == len(frame_times) >= 1``. Frames are in presentation order, times strictly increasing.

Task fields (each task's `TaskSpec.record_fields` / `optional_record_fields` in `streamformer_jax.tasks`):

* ``kinetics``, ``ssv2``: ``label`` int [label] (class index, line order of the class-names file).
* ``retrieval``: ``captions`` list[str] [captions] (utf-8; all captions of the video); optional
  ``caption_row`` int32 [k] [caption_row]: the annotation row of each caption (rows 0, 1, ... in order; a row is
  one sample, a caption is drawn from the sample's row; absent = one row) and ``trim_seconds`` float
  [trim_seconds]: sample only the first that many seconds of a longer video (the original's ``trimmed30s``,
  DiDeMo; 0 or absent = the whole video).
* ``grounding``: ``captions`` list[str] [captions]; ``windows`` float32 [k, 2] [windows] the ground-truth
  (start, end) in seconds of caption i (the CSV's start_second/end_second, or the first relevant window);
  ``relevant_windows`` float32 [m, 2] [relevant_windows] and ``relevant_window_caption`` int32 [m]
  [relevant_window_caption]: every relevant window and the caption it belongs to (QVHighlights has several
  per query; the original labels a frame positive when it lies in *any* of them).
* ``localization``: one entry per annotation row (a (video, class) pair, one sample each): ``segments`` float32
  [k, 2] [segments] the row's (start, end) seconds; ``segment_labels`` int32 [k] [segment_labels] its class id (in
  its dataset's label table); optional ``relevant_windows`` float32 [m, 2] and ``relevant_window_caption`` int32
  [m] (the row each window belongs to): as grounding, a row with several relevant windows is positive inside any
  of them. (Schema version 1 stored every window as its own segment; such records read as one row per window.)
* ``vis``: ``categories`` int32 [I] [categories] (the category value of each instance: the row of its dataset's
  label table; the original's raw ``category_id`` for YouTube-VIS / LV-VIS, the position in ``categories`` for
  COCO); masks stored as COCO
  *uncompressed* RLE, one per (instance, stored frame), instance-major. ``mask_rle_lengths`` int64 [I * n]
  [masks/rle_lengths] is the number of run lengths of each RLE (0 = instance absent in that frame, an all-zero
  mask); ``mask_rle_counts`` int64 [sum] [masks/rle_counts] the concatenated run lengths. Each RLE follows the
  COCO convention: column-major (Fortran) order over the stored ``height x width``, the first run counts zeros.
  Use :func:`decode_masks` for a ``uint8 [I, n, H, W]`` array.

Floats stored in ``float_list`` are float32 (TF's format); arrays come back as the numpy dtypes listed.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from streamformer_jax.tasks import registry

SCHEMA_VERSION = 2  # 2: per-row localization, retrieval caption rows and trim, the decoded source path
# Fields every task must provide (a task's own fields are its `TaskSpec.record_fields`).
COMMON_FIELDS = ("task", "video_id", "frames", "frame_times", "fps", "source_fps", "height", "width")


class SchemaError(ValueError):
    """An example dict or a record does not match the schema."""


# --------------------------------------------------------------------------- tf.train.Example descriptor
def _build_example_class():
    """Build tf.train.Example in a private pool: no TF needed, no clash with a real TF in the same process."""
    f = descriptor_pb2.FileDescriptorProto(name="streamformer/example.proto", package="tensorflow", syntax="proto3")
    T = descriptor_pb2.FieldDescriptorProto
    for name, ftype in (("BytesList", T.TYPE_BYTES), ("FloatList", T.TYPE_FLOAT), ("Int64List", T.TYPE_INT64)):
        m = f.message_type.add(name=name)
        m.field.add(name="value", number=1, type=ftype, label=T.LABEL_REPEATED)
    feat = f.message_type.add(name="Feature")
    feat.oneof_decl.add(name="kind")
    for i, (fname, tname) in enumerate((("bytes_list", "BytesList"), ("float_list", "FloatList"),
                                         ("int64_list", "Int64List"))):
        feat.field.add(name=fname, number=i + 1, type=T.TYPE_MESSAGE, label=T.LABEL_OPTIONAL,
                       type_name=f".tensorflow.{tname}", oneof_index=0)
    feats = f.message_type.add(name="Features")
    entry = feats.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=T.TYPE_MESSAGE, label=T.LABEL_OPTIONAL,
                    type_name=".tensorflow.Feature")
    feats.field.add(name="feature", number=1, type=T.TYPE_MESSAGE, label=T.LABEL_REPEATED,
                    type_name=".tensorflow.Features.FeatureEntry")
    ex = f.message_type.add(name="Example")
    ex.field.add(name="features", number=1, type=T.TYPE_MESSAGE, label=T.LABEL_OPTIONAL,
                 type_name=".tensorflow.Features")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))


Example = _build_example_class()  # a message class (immutable); instances are created per call.


# --------------------------------------------------------------------------- field tables
# dict field -> (feature key, kind). kinds: str, strs, bytes_list, int, ints, float, floats (reshaped on decode).
_FIELDS: dict[str, tuple[str, str]] = {
    "schema_version": ("schema_version", "int"),
    "task": ("task", "str"),
    "video_id": ("video/id", "str"),
    "dataset": ("video/dataset", "str"),
    "frames": ("frames/jpeg", "bytes_list"),
    "frame_times": ("frames/timestamp_us", "times"),
    "fps": ("video/fps", "float"),
    "source_fps": ("video/source_fps", "float"),
    "height": ("video/height", "int"),
    "width": ("video/width", "int"),
    "duration": ("video/duration", "float"),
    "label": ("label", "int"),
    "captions": ("captions", "strs"),
    "windows": ("windows", "pairs"),
    "relevant_windows": ("relevant_windows", "pairs"),
    "relevant_window_caption": ("relevant_window_caption", "ints32"),
    "caption_row": ("caption_row", "ints32"),
    "trim_seconds": ("trim_seconds", "float"),
    "source": ("video/source", "str"),
    "segments": ("segments", "pairs"),
    "segment_labels": ("segment_labels", "ints32"),
    "categories": ("categories", "ints32"),
    "mask_rle_lengths": ("masks/rle_lengths", "ints64"),
    "mask_rle_counts": ("masks/rle_counts", "ints64"),
}
_KEY_TO_FIELD = {key: (name, kind) for name, (key, kind) in _FIELDS.items()}
_INT_KINDS = ("int", "ints32", "ints64", "times")
_FLOAT_KINDS = ("float", "pairs")


def _validate(ex: dict) -> None:
    task = ex.get("task")
    if task not in registry.names():
        raise SchemaError(f"task must be one of {registry.names()}, got {task!r}")
    spec = registry.get(task)
    missing = [k for k in COMMON_FIELDS + spec.record_fields if k not in ex]
    if missing:
        raise SchemaError(f"{spec.name} example {ex.get('video_id')!r} lacks fields {missing}")
    unknown = sorted(set(ex) - set(_FIELDS))
    if unknown:
        raise SchemaError(f"unknown fields {unknown}")
    n = len(ex["frames"])
    times = np.asarray(ex["frame_times"], np.float64)
    if n == 0 or times.shape != (n,):
        raise SchemaError(f"{ex['video_id']!r}: need >= 1 frame and one time per frame, got {n} frames, "
                          f"times shape {times.shape}")
    if n > 1 and not np.all(np.diff(times) > 0):
        raise SchemaError(f"{ex['video_id']!r}: frame_times must be strictly increasing")
    if spec.check_record is not None:
        spec.check_record(ex)


def encode_record(example: dict) -> bytes:
    """Serialize an example dict (see module docstring) to tf.train.Example bytes, deterministically."""
    ex = dict(example)
    ex.setdefault("schema_version", SCHEMA_VERSION)
    ex.setdefault("dataset", "")
    _validate(ex)
    msg = Example()
    fmap = msg.features.feature
    for name, value in ex.items():
        key, kind = _FIELDS[name]
        if kind == "str":
            fmap[key].bytes_list.value.append(str(value).encode("utf-8"))
        elif kind == "strs":
            fmap[key].bytes_list.value.extend(s.encode("utf-8") for s in value)
        elif kind == "bytes_list":
            fmap[key].bytes_list.value.extend(bytes(b) for b in value)
        elif kind == "int":
            fmap[key].int64_list.value.append(int(value))
        elif kind in ("ints32", "ints64"):
            fmap[key].int64_list.value.extend(np.asarray(value, np.int64).ravel().tolist())
        elif kind == "times":
            us = np.round(np.asarray(value, np.float64) * 1e6).astype(np.int64)
            fmap[key].int64_list.value.extend(us.tolist())
        elif kind == "float":
            fmap[key].float_list.value.append(float(value))
        elif kind == "pairs":
            arr = np.asarray(value, np.float32).reshape(-1, 2)
            fmap[key].float_list.value.extend(arr.ravel().tolist())
        else:  # pragma: no cover - table is static
            raise AssertionError(kind)
    return msg.SerializeToString(deterministic=True)


def decode_record(data: bytes) -> dict[str, Any]:
    """Parse bytes written by :func:`encode_record` into the dict documented above (numpy arrays for arrays)."""
    msg = Example.FromString(data)
    out: dict[str, Any] = {}
    for key, feat in msg.features.feature.items():
        if key not in _KEY_TO_FIELD:
            continue  # a newer writer's extra field: ignore, readers only rely on documented ones
        name, kind = _KEY_TO_FIELD[key]
        if kind == "str":
            out[name] = feat.bytes_list.value[0].decode("utf-8")
        elif kind == "strs":
            out[name] = [b.decode("utf-8") for b in feat.bytes_list.value]
        elif kind == "bytes_list":
            out[name] = list(feat.bytes_list.value)
        elif kind == "int":
            out[name] = int(feat.int64_list.value[0])
        elif kind == "ints32":
            out[name] = np.asarray(feat.int64_list.value, np.int32)
        elif kind == "ints64":
            out[name] = np.asarray(feat.int64_list.value, np.int64)
        elif kind == "times":
            out[name] = np.asarray(feat.int64_list.value, np.int64) / 1e6
        elif kind == "float":
            out[name] = float(feat.float_list.value[0])
        elif kind == "pairs":
            out[name] = np.asarray(feat.float_list.value, np.float32).reshape(-1, 2)
    version = out.get("schema_version")
    if version is None or version > SCHEMA_VERSION:
        raise SchemaError(f"record has schema_version {version}, this reader supports <= {SCHEMA_VERSION}")
    out.setdefault("dataset", "")
    if out.get("task") not in registry.names():
        return out  # a task this reader does not know: its fields as they are
    spec = registry.get(out["task"])
    # Repeated fields that were empty are absent on the wire (proto3): restore them so readers see [0, 2] etc.
    for name in spec.fields:
        if name not in out:
            kind = _FIELDS[name][1]
            out[name] = (np.zeros((0, 2), np.float32) if kind == "pairs" else np.zeros((0,), np.int32)
                         if kind == "ints32" else np.zeros((0,), np.int64) if kind == "ints64" else [])
    for other in registry.specs():  # another task's optional fields are not this record's
        for name in set(other.optional_record_fields) - set(spec.fields):
            out.pop(name, None)
    return out


# --------------------------------------------------------------------------- masks (COCO uncompressed RLE)
def rle_encode(mask: np.ndarray) -> np.ndarray:
    """Binary [H, W] mask -> COCO run lengths (column-major, first run = zeros), int64."""
    flat = np.asarray(mask, bool).ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds)
    if flat.size and flat[0]:
        counts = np.concatenate([[0], counts])  # COCO runs start with background
    return counts.astype(np.int64)


def rle_decode(counts: Sequence[int], height: int, width: int) -> np.ndarray:
    """COCO run lengths -> uint8 [H, W]. Empty counts -> all zeros."""
    counts = np.asarray(counts, np.int64)
    if counts.size == 0:
        return np.zeros((height, width), np.uint8)
    if counts.sum() != height * width:
        raise SchemaError(f"RLE covers {counts.sum()} pixels, mask has {height * width}")
    values = (np.arange(counts.size) % 2).astype(np.uint8)
    return np.repeat(values, counts).reshape(width, height).T


def encode_masks(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8/bool [I, n, H, W] -> (mask_rle_lengths [I*n], mask_rle_counts). An empty mask gets length 0."""
    lengths, counts = [], []
    for inst in masks:
        for m in inst:
            if not m.any():
                lengths.append(0)
                continue
            c = rle_encode(m)
            lengths.append(c.size)
            counts.append(c)
    flat = np.concatenate(counts) if counts else np.zeros((0,), np.int64)
    return np.asarray(lengths, np.int64), flat


def decode_masks(example: dict) -> np.ndarray:
    """The masks of a decoded ``vis`` example as uint8 [num_instances, n_frames, height, width]."""
    n_inst, n = len(example["categories"]), len(example["frames"])
    h, w = int(example["height"]), int(example["width"])
    lengths = np.asarray(example["mask_rle_lengths"], np.int64)
    counts = np.asarray(example["mask_rle_counts"], np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    out = np.zeros((n_inst, n, h, w), np.uint8)
    for j in range(n_inst * n):
        if lengths[j]:
            out[j // n, j % n] = rle_decode(counts[starts[j]:starts[j + 1]], h, w)
    return out
