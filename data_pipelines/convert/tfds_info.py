"""tensorflow-datasets metadata for a converter output directory (``dataset_info.json`` + ``features.json``).

The records already are ``tf.train.Example`` protos; these two files describe them the way tfds describes its
own datasets, so that, with ``pip install tensorflow-datasets`` (no TensorFlow needed for ArrayRecord)::

    builder = tfds.builder_from_directory(out_dir)
    source = builder.as_data_source(split="train")   # random access, grain-compatible
    example = source[0]                              # nested dict of numpy values / bytes

The files are written by hand here (the converter does not import tfds) in the JSON layout of tfds 4.9:
``features.json`` is ``FeaturesDict.to_json()``, ``dataset_info.json`` the ``DatasetInfo`` proto in JSON form.
The shards keep their names (``<task>.array_record-00000-of-00042``): the split's ``filepathTemplate``
``{DATASET}.{FILEFORMAT}-{SHARD_X_OF_Y}`` tells tfds how they are named, with the dataset name = the task.

Feature keys containing ``/`` become nested dicts in tfds (``video/id`` -> ``example["video"]["id"]``).
How each schema kind maps to a tfds feature (the values tfds returns without TensorFlow in brackets):

======================  =========================================  =================================================
schema kind             tfds feature                               tfds value vs :func:`schema.decode_record`
======================  =========================================  =================================================
str (task, video/id..)  ``Text``                                   utf-8 ``bytes`` (decode_record: ``str``)
strs (captions)         ``Sequence(Text)``                         list of utf-8 ``bytes``
bytes_list (frames)     ``Tensor((None,), string)``                object array of the raw JPEG bytes
int (schema_version..)  ``Scalar(int64)``                          int
int ``label``           ``ClassLabel(names)`` when the class names  int (names in ``features["label"].names``)
                        are known, else ``Scalar(int64)``
times (frame times)     ``Tensor((None,), int64)``                 int64 microseconds (decode_record: float64 s)
float (fps...)          ``Scalar(float32)``                        float (float32 precision, as decode_record)
pairs (windows...)      ``Tensor((None, 2), float32)``             float32 [k, 2]
ints32 (labels...)      ``Tensor((None,), int32)``                 int32 [k]
ints64 (mask RLEs)      ``Tensor((None,), int64)``                 int64 [k]
======================  =========================================  =================================================

:func:`from_tfds` turns a tfds example back into exactly the dict :func:`schema.decode_record` returns.
VIS masks stay COCO run lengths (tfds has no feature that decodes an RLE); decode them with
:func:`schema.decode_masks` on that dict.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from data_pipelines.records import schema, shards
from streamformer_jax.tasks import registry

FEATURES_FILE = "features.json"
DATASET_INFO_FILE = "dataset_info.json"
SPLIT = "train"
FILEPATH_TEMPLATE = "{DATASET}.{FILEFORMAT}-{SHARD_X_OF_Y}"
# tfds' file-format names (also the FILEFORMAT part of our shard names, see shards.shard_name).
FILE_FORMATS = {"arrayrecord": "array_record", "tfrecord": "tfrecord"}

_PKG = "tensorflow_datasets.core.features."
# Always written by the converter (build.py), so every record of a converted directory has them.
_ALWAYS = ("schema_version", "dataset", "duration", "source")


def _tensor(shape: Sequence[int | None], dtype: str) -> dict:
    cls = "scalar.Scalar" if not shape else "tensor_feature.Tensor"
    dims = {"dimensions": [str(-1 if d is None else d) for d in shape]} if shape else {}
    return {"pythonClassName": _PKG + cls, "tensor": {"dtype": dtype, "encoding": "none", "shape": dims}}


def _text() -> dict:
    return {"pythonClassName": _PKG + "text_feature.Text", "text": {}}


def _leaf(kind: str) -> dict:
    if kind == "str":
        return _text()
    if kind == "strs":
        return {"pythonClassName": _PKG + "sequence_feature.Sequence", "sequence": {"feature": _text(), "length": "-1"}}
    return {
        "bytes_list": lambda: _tensor((None,), "string"),
        "int": lambda: _tensor((), "int64"),
        "times": lambda: _tensor((None,), "int64"),
        "float": lambda: _tensor((), "float32"),
        "pairs": lambda: _tensor((None, 2), "float32"),
        "ints32": lambda: _tensor((None,), "int32"),
        "ints64": lambda: _tensor((None,), "int64"),
    }[kind]()


def _class_label_ok(names: Sequence[str]) -> bool:
    # tfds keeps the names one per line in label.labels.txt and strips them when reading: they must be unique,
    # single-line, non-empty and without surrounding whitespace to come back unchanged.
    return (bool(names) and len(set(names)) == len(names)
            and all(n and n == n.strip() and "\n" not in n and "\r" not in n for n in names))


def task_fields(task: str) -> tuple[str, ...]:
    """The schema fields every converted record of ``task`` carries (the tfds features of that task)."""
    return schema.COMMON_FIELDS + _ALWAYS + registry.get(task).fields


def features_json(task: str, class_names: Sequence[str] = ()) -> dict:
    """``features.json`` content: a FeaturesDict whose flattened keys are the records' feature keys."""
    root: dict = {}
    for name in task_fields(task):
        key, kind = schema._FIELDS[name]
        if name == "label" and _class_label_ok(class_names):
            leaf = {"pythonClassName": _PKG + "class_label_feature.ClassLabel",
                    "classLabel": {"numClasses": str(len(class_names))}}
        else:
            leaf = _leaf(kind)
        *parents, last = key.split("/")
        node = root
        for p in parents:
            node = node.setdefault(p, {"pythonClassName": _PKG + "features_dict.FeaturesDict",
                                       "featuresDict": {"features": {}}})["featuresDict"]["features"]
        node[last] = leaf
    return {"pythonClassName": _PKG + "features_dict.FeaturesDict", "featuresDict": {"features": root}}


def dataset_info_json(task: str, fmt: str, shard_lengths: Sequence[int], num_bytes: int,
                      description: str = "") -> dict:
    """``dataset_info.json`` content (one ``train`` split over the shards, in shard order)."""
    return {
        "name": task,
        "version": f"{schema.SCHEMA_VERSION}.0.0",
        "description": description,
        "moduleName": "data_pipelines.convert",
        "fileFormat": FILE_FORMATS[fmt],
        "splits": [{"name": SPLIT, "filepathTemplate": FILEPATH_TEMPLATE, "numBytes": str(int(num_bytes)),
                    "shardLengths": [str(int(n)) for n in shard_lengths]}],
    }


def write(out_dir: str, task: str, fmt: str, shard_files: Sequence[str], shard_lengths: Sequence[int],
          class_names: Sequence[str] = (), description: str = "") -> None:
    """Write the tfds metadata for finished shards (atomically, like metadata.json)."""
    for name in shard_files:  # the template must reproduce our shard names, or tfds would look elsewhere
        suffix = FILE_FORMATS[fmt]
        if not name.startswith(f"{task}.{suffix}-"):
            raise ValueError(f"shard {name!r} does not follow {FILEPATH_TEMPLATE}")
    num_bytes = sum(os.path.getsize(os.path.join(out_dir, n)) for n in shard_files)
    shards.write_json(os.path.join(out_dir, DATASET_INFO_FILE),
                      dataset_info_json(task, fmt, shard_lengths, num_bytes, description))
    feats = features_json(task, class_names)
    shards.write_json(os.path.join(out_dir, FEATURES_FILE), feats)
    if "classLabel" in feats["featuresDict"]["features"].get("label", {}):
        shards.write_text(os.path.join(out_dir, "label.labels.txt"), "\n".join(class_names) + "\n")


# --------------------------------------------------------------------------- reading back
def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[prefix + k] = v
    return out


def _text_value(v) -> str:
    return v.decode("utf-8") if isinstance(v, (bytes, bytearray)) else str(v)


def from_tfds(example: dict) -> dict[str, Any]:
    """A tfds example of a converted directory (``as_data_source`` item) -> the :func:`schema.decode_record`
    dict of the same record (same keys, values, dtypes and shapes)."""
    out: dict[str, Any] = {}
    for key, value in _flatten(example).items():
        if key not in schema._KEY_TO_FIELD or value is None:
            continue
        name, kind = schema._KEY_TO_FIELD[key]
        if kind == "str":
            out[name] = _text_value(value)
        elif kind == "strs":
            out[name] = [_text_value(v) for v in value]
        elif kind == "bytes_list":
            out[name] = [bytes(b) for b in value]
        elif kind == "int":
            out[name] = int(value)
        elif kind == "ints32":
            out[name] = np.asarray(value, np.int32).reshape(-1)
        elif kind == "ints64":
            out[name] = np.asarray(value, np.int64).reshape(-1)
        elif kind == "times":
            out[name] = np.asarray(value, np.int64).reshape(-1) / 1e6
        elif kind == "float":
            out[name] = float(np.float32(value))
        elif kind == "pairs":
            out[name] = np.asarray(value, np.float32).reshape(-1, 2)
    return out
