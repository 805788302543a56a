"""Zero-shot evaluation of the pretraining tasks with their trained heads: features, then the original's metrics.

    result = evaluate("grounding", model, items)        # items: `zero_shot.items.find_items(...)`

* retrieval: the video is the last frame's pooled vector (the retrieval head's input), compared by cosine
  similarity with the caption's text embedding. Queries: each caption of MSRVTT-style data (with one caption per
  video this is the 1k-A protocol); ActivityNet and DiDeMo are paragraph retrieval: the captions of an annotation
  row (a record's `caption_row`; without rows, all the video's captions) joined with spaces are one query.
  Text->video R@K: the rank of the paired video; video->text: the best-ranked caption of the video. Median and
  mean rank too.
* grounding: per query, the grounding head's per-frame logits s*cos(v_t, u) + b -> `metrics.grounding_results`
  (sigmoid, windows for factors 0.5/0.6/0.7, the original IoU): R@1 at IoU 0.3/0.5/0.7 and mIoU.
* localization: per frame and class the localization head's s*<n(v_t), E_c> + b with the template-mean label
  embeddings E_c (spec §5.3), sigmoid -> `metrics.localization_segments` -> ActivityNet mAP at tIoU
  0.5:0.05:0.95 and its average; ground truth: every annotation row's windows with its class.
Every number is reported per dataset (the records' / annotations' dataset name).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from typing import Callable, Mapping, Sequence

import jax
import numpy as np

from data_pipelines.pipeline.targets import row_windows
from data_pipelines.records.shards import write_text
from streamformer_jax.tasks import registry
from streamformer_jax.tasks.model import MultiTaskModel
from streamformer_jax.text.embeddings import compute_label_embeddings, encode_texts
from streamformer_jax.zero_shot import metrics as M
from streamformer_jax.zero_shot.clips import TRIM30_DATASETS
from streamformer_jax.zero_shot.features import FeatureCache, FeatureRunner, compute_features, gather_features
from streamformer_jax.zero_shot.items import TASK_FIELDS, EvalDataError, EvalItem

PARAGRAPH_DATASETS = ("ActivityNet", "DiDeMo")  # captions joined into one paragraph query per video
GROUNDING_METHODS = ("original", "max_subarray")
ClassTables = Sequence[str] | Mapping[str, Sequence[str]]  # names by id, or {dataset: names by id}


def tasks() -> list[str]:
    """The registered tasks that have a zero-shot evaluation here, in registry order."""
    return [t for t in registry.names() if t in TASK_FIELDS]


@dataclasses.dataclass
class ZeroShotModel:
    """What zero-shot evaluation needs of a pretrained model."""

    model: MultiTaskModel  # backbone, heads (per-task logit scale/bias), frozen text tower
    tokenizer: Callable  # texts -> int32 [N, L]
    label_sets: dict[str, ClassTables]  # {task: names by id | {dataset: names}} the run trained with ({}: unknown)
    source: str

    def head_scalars(self, task: str) -> tuple[float, float]:
        """(s, b) of a task head: logits = s * cos + b, with s = exp(logit_scale)."""
        head = self.model.heads[task]
        return float(np.exp(np.asarray(head.logit_scale[...]))), float(np.asarray(head.logit_bias[...]))

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Caption embeddings float32 [N, D] (truncated to the tokenizer's length, not normalised)."""
        return encode_texts(self.model.text_encoder, self.tokenizer, list(texts), truncation=True, batch_size=64)


def normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _by_dataset(items: Sequence[EvalItem], ok: Mapping[int, object]) -> dict[str, list[EvalItem]]:
    groups: dict[str, list[EvalItem]] = {}
    for it in items:
        if it.index in ok:
            groups.setdefault(it.dataset or "default", []).append(it)
    return groups


def retrieval_metrics(zs: ZeroShotModel, items: Sequence[EvalItem], feats: Mapping[int, np.ndarray], *,
                      paragraph_datasets: Sequence[str] = PARAGRAPH_DATASETS, ks=(1, 5, 10)) -> dict:
    out = {}
    for dataset, group in _by_dataset(items, feats).items():
        paragraph = dataset in paragraph_datasets
        texts, owner = [], []
        for j, it in enumerate(group):
            caps = [str(c) for c in it.fields["captions"]]
            if paragraph:  # one paragraph per annotation row (records without caption rows: one row)
                rows = np.asarray(it.fields.get("caption_row", np.zeros(len(caps))), np.int64).reshape(-1)
                for r in dict.fromkeys(rows.tolist()):
                    texts.append(" ".join(c for c, cr in zip(caps, rows) if cr == r))
                    owner.append(j)
            else:
                texts.extend(caps)
                owner.extend([j] * len(caps))
        if not texts:
            continue
        video = np.stack([feats[it.index][-1] for it in group])  # the last frame's pooled vector
        res = M.retrieval_recall(zs.encode(texts), video, np.asarray(owner), ks=ks)
        out[dataset] = {"t2v": res["t2v"], "v2t": res["v2t"], "num_videos": len(group), "num_queries": len(texts),
                        "paragraph": paragraph}
    return out


def grounding_metrics(zs: ZeroShotModel, items: Sequence[EvalItem], feats, times, *,
                      method: str = "original") -> dict:
    s, b = zs.head_scalars("grounding")
    out = {}
    for dataset, group in _by_dataset(items, feats).items():
        captions, logits, stamps, gts = [], [], [], []
        for it in group:
            for c, w in zip(it.fields["captions"], np.asarray(it.fields["windows"]).reshape(-1, 2)):
                captions.append(str(c))
                stamps.append(times[it.index])
                gts.append((float(w[0]), float(w[1])))
        if not captions:
            continue
        text = normalize(zs.encode(captions))
        qi = 0
        for it in group:
            v = normalize(feats[it.index])  # [T, D]
            for _ in range(len(it.fields["captions"])):
                logits.append((s * (v @ text[qi]) + b).astype(np.float32))
                qi += 1
        res = M.grounding_results(logits, stamps, gts, method=method)
        res["num_videos"] = len(group)
        out[dataset] = res
    return out


def dataset_classes(class_names: ClassTables, dataset: str) -> list[str]:
    """The class table of one dataset: its own from per-dataset tables (the converter's `label_tables`, a nested
    label2id; `data_pipelines.pipeline.label_tables`), else the one flat table (a flat table whose names read
    "<dataset>/<name>" gives that dataset's names without the prefix)."""
    if isinstance(class_names, Mapping):
        if dataset not in class_names:
            raise EvalDataError(f"no label table for dataset {dataset!r} (tables: {sorted(class_names)})")
        return [str(n) for n in class_names[dataset]]
    prefix = f"{dataset}/"
    own = [n[len(prefix):] for n in class_names if dataset and n.startswith(prefix)]
    return own if own else list(class_names)


def ground_truth_segments(fields: Mapping) -> list[tuple[int, tuple[float, float]]]:
    """(class id, (start, end)) of every ground-truth segment of a localization item: each annotation row's
    windows (its own segment, or its several relevant windows; `targets.row_windows`) with the row's class."""
    spans = np.asarray(fields["segments"], np.float64).reshape(-1, 2)
    relevant = fields.get("relevant_windows", np.zeros((0, 2)))
    owner = fields.get("relevant_window_caption", ())
    return [(int(c), (float(w[0]), float(w[1]))) for row, c in enumerate(fields["segment_labels"])
            for w in row_windows(spans, relevant, owner, row)]


def localization_metrics(zs: ZeroShotModel, items: Sequence[EvalItem], feats, times, durations,
                         class_names: ClassTables, *, tious: Sequence[float] = M.ACTIVITYNET_TIOUS) -> dict:
    if not class_names:
        raise EvalDataError("localization needs class names (--class-names, the records' metadata.json, or the "
                            "label set recorded in the checkpoint)")
    s, b = zs.head_scalars("localization")
    templates = registry.get("localization").templates
    out = {}
    for dataset, group in _by_dataset(items, feats).items():
        names = dataset_classes(class_names, dataset)
        emb = compute_label_embeddings(zs.model.text_encoder, zs.tokenizer, names, templates,
                                       batch_size=64).astype(np.float64)
        real = {c for c, name in enumerate(names) if name}  # an empty name is an id no class has: not predicted
        preds, gts = [], []
        for it in group:
            v = normalize(feats[it.index])
            probs = M.sigmoid(s * (v @ emb.T) + b)  # [T, C]
            for c, st, en, sc in M.localization_segments(probs, times[it.index], durations.get(it.index)):
                if c in real:
                    preds.append((it.index, c, st, en, sc))
            gts.extend((it.index, int(c), float(st), float(en)) for c, (st, en) in ground_truth_segments(it.fields))
        if not gts:
            continue
        res = M.localization_map(preds, gts, tious)
        res.pop("per_class")
        res["num_videos"] = len(group)
        res["num_segments"] = len(gts)
        out[dataset] = res
    return out


def fingerprint(*parts) -> str:
    """A short hash of the settings a feature cache depends on."""
    return hashlib.sha1(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:16]


def evaluate(task: str, zs: ZeroShotModel, items: Sequence[EvalItem], *, num_frames: int | None = None,
             batch_size: int | None = None, workers: int = 1, progress: bool = True,
             cache_path: pathlib.Path | None = None, cache_key: str = "", class_names: ClassTables = (),
             method: str = "original", paragraph_datasets: Sequence[str] = PARAGRAPH_DATASETS,
             trim_datasets: Sequence[str] = TRIM30_DATASETS, runner: FeatureRunner | None = None) -> dict:
    """Features (resumable through `cache_path`) then the task's metrics, per dataset; the result is JSON-able.
    Collective over processes: every process calls it with the same items and gets the same result."""
    if task not in TASK_FIELDS:
        raise ValueError(f"task must be one of {tasks()}, got {task!r}")
    runner = runner or FeatureRunner(zs.model.backbone)
    t = int(num_frames or runner.config.num_frames)
    cache = FeatureCache(cache_path, fingerprint(task, cache_key, t, len(items), sorted(trim_datasets)))
    cache = compute_features(runner, task, items, num_frames=t, batch_size=batch_size, workers=workers,
                             progress=progress, cache=cache, trim_datasets=trim_datasets)
    feats, times, durations, failed = gather_features(cache, len(items))
    if task == "retrieval":
        datasets = retrieval_metrics(zs, items, feats, paragraph_datasets=paragraph_datasets)
    elif task == "grounding":
        datasets = grounding_metrics(zs, items, feats, times, method=method)
    else:
        datasets = localization_metrics(zs, items, feats, times, durations, class_names)
    return {"task": task, "num_frames": t, "num_items": len(items), "num_evaluated": len(feats),
            "num_failed": len(failed), "datasets": datasets,
            "failed": [{"item": items[i].source, "error": e} for i, e in sorted(failed.items())]}


def flat_summary(task: str, result: Mapping) -> dict[str, float]:
    """Headline numbers as one flat dict (for logs): retrieval t2v/v2t R@1,5,10; grounding R@0.3/0.5/0.7 and
    mIoU per factor; localization average mAP and mAP@0.5."""
    out = {}
    for ds, r in result.get("datasets", {}).items():
        if task == "retrieval":
            for side in ("t2v", "v2t"):
                for k in ("R@1", "R@5", "R@10"):
                    if k in r[side]:
                        out[f"{task}/{ds}/{side}_{k}"] = r[side][k]
        elif task == "grounding":
            for key, res in r.items():
                if isinstance(res, dict):
                    for m, v in res.items():
                        out[f"{task}/{ds}/{key}/{m}"] = v
        else:
            out[f"{task}/{ds}/average_mAP"] = r["average_mAP"]
            out[f"{task}/{ds}/mAP@0.5"] = r["mAP@0.5"]
    return out


def write_json(path: str | os.PathLike, obj) -> pathlib.Path:
    """Atomic write, by process 0 only (every process holds the same gathered result)."""
    path = pathlib.Path(path)
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(str(path), json.dumps(obj, indent=2, default=_plain) + "\n")
    return path


def _plain(v):
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(type(v).__name__)
