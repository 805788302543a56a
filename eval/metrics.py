"""Evaluation metrics as pure NumPy functions (no framework, no I/O).

Classification (action recognition)
    topk_accuracy(scores, labels, ks, mask)          top-k accuracy, padded rows masked out
Online action detection (MAT/LSTR rules, spec §7.2)
    average_precision(y_true, y_score)               = sklearn.metrics.average_precision_score
    calibrated_average_precision(y_true, y_score)    TVSeries cAP (LSTR's, NumPy's default sort for ties)
    perframe_map(targets, scores, ...)               per-frame (c)mAP, ambiguous frames removed, background out
Retrieval, temporal grounding and localization (the zero-shot metrics of the pretraining tasks):
    `streamformer_jax.zero_shot.metrics`.

Conventions: `scores` are higher-is-better; ties are resolved as stated per function (where the original
sorts with NumPy's default, unstable sort, so do we, with the same call on the same array).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

# ------------------------------------------------------------------------------------------------ classification


def topk_accuracy(scores, labels, ks: Sequence[int] = (1, 5), mask=None) -> dict[str, float]:
    """Fraction of rows whose label is among the k highest scores; rows with mask == 0 are ignored.

    A row counts as correct at k when fewer than k classes score *strictly* higher than the label
    (ties resolved in the label's favour, as `torch.topk` on distinct values). Returns {"top{k}": float}.
    """
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels, np.int64)
    if scores.ndim != 2 or labels.shape != scores.shape[:1]:
        raise ValueError(f"expected scores [N, C] and labels [N], got {scores.shape} and {labels.shape}")
    valid = np.ones(len(labels), bool) if mask is None else np.asarray(mask).astype(bool)
    if valid.shape != labels.shape:
        raise ValueError(f"mask shape {valid.shape} != labels shape {labels.shape}")
    if np.any((labels[valid] < 0) | (labels[valid] >= scores.shape[1])):
        raise ValueError("labels out of range [0, num_classes)")
    n = int(valid.sum())
    if n == 0:
        raise ValueError("no valid rows")
    target = scores[np.arange(len(labels)), np.clip(labels, 0, scores.shape[1] - 1)]
    higher = (scores > target[:, None]).sum(1)
    return {f"top{k}": float(((higher < k) & valid).sum() / n) for k in ks}


# ------------------------------------------------------------------------------------------ average precision


def average_precision(y_true, y_score) -> float:
    """Non-interpolated AP, identical to `sklearn.metrics.average_precision_score` (binary).

    AP = sum_n (R_n - R_{n-1}) P_n over the distinct score thresholds in decreasing order (tied scores
    form one threshold). NaN when there is no positive.
    """
    y_true = np.asarray(y_true).astype(bool).ravel()
    y_score = np.asarray(y_score, np.float64).ravel()
    if y_true.shape != y_score.shape:
        raise ValueError(f"shape mismatch {y_true.shape} vs {y_score.shape}")
    n_pos = int(y_true.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-y_score, kind="stable")
    s, t = y_score[order], y_true[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each tie group
    tps = np.cumsum(t)[last]
    fps = (last + 1) - tps
    precision = tps / (tps + fps)
    recall = tps / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def calibrated_average_precision(y_true, y_score) -> float:
    """TVSeries calibrated AP, as LSTR/MAT's `calibrated_average_precision_score`.

    Frames are ordered by `np.argsort(-y_score)` (NumPy's default sort, not stable: tied scores come out in
    the order that call gives, as in the original, so `y_score` keeps its dtype); w = #negatives / #positives;
    cPrec_i = TP_i / (TP_i + FP_i / w); cAP = mean of cPrec at the positive positions. NaN without positives.
    """
    y_true = np.asarray(y_true).ravel()
    y_score = np.asarray(y_score).ravel()
    if y_true.shape != y_score.shape:
        raise ValueError(f"shape mismatch {y_true.shape} vs {y_score.shape}")
    tp = y_true[np.argsort(-y_score)].astype(np.float64)
    n_pos = tp.sum()
    if n_pos == 0:
        return float("nan")
    fp = np.abs(tp - 1)
    tps, fps = np.cumsum(tp), np.cumsum(fp)
    eps = np.finfo(np.float64).eps
    ratio = np.sum(tp == 0) / n_pos
    cprec = tps / (tps + fps / (ratio + eps) + eps)
    return float(np.sum(cprec[tp == 1]) / n_pos)


def _one_hot(targets, num_classes: int) -> np.ndarray:
    targets = np.asarray(targets)
    if targets.ndim == 2:
        return targets
    out = np.zeros((len(targets), num_classes), np.float64)
    out[np.arange(len(targets)), targets] = 1
    return out


def perframe_map(targets, scores, *, metric: str = "AP", background: int | None = 0,
                 ambiguous: int | None = None, class_names: Sequence[str] | None = None) -> dict:
    """Per-frame mAP (THUMOS'14, metric="AP") or mcAP (TVSeries, metric="cAP"), MAT/LSTR rules.

    targets: int [N] class per frame or multi-hot [N, C]; scores: [N, C] (softmax probabilities, dtype kept:
    the cAP order of tied scores depends on it, as in the original which sorts the array it was given).
    1. Frames whose ground truth includes the `ambiguous` class (THUMOS: 21) are removed.
    2. AP is computed per class, except `background` (0) and `ambiguous`, for classes with >= 1 positive.
    3. The result is their mean. Returns {"mean_AP": float, "per_class_AP": {name: AP}, "num_frames": int}.
    """
    scores = np.asarray(scores)
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)
    gt = _one_hot(targets, scores.shape[1])
    if gt.shape != scores.shape:
        raise ValueError(f"targets {gt.shape} and scores {scores.shape} disagree")
    if ambiguous is not None:
        keep = gt[:, ambiguous] != 1
        gt, scores = gt[keep], scores[keep]
    score_fn = {"AP": average_precision, "cAP": calibrated_average_precision}[metric]
    skip = {c for c in (background, ambiguous) if c is not None}
    names = list(class_names) if class_names is not None else [str(c) for c in range(scores.shape[1])]
    per_class = {}
    for c in range(scores.shape[1]):
        if c in skip or not np.any(gt[:, c]):
            continue
        per_class[names[c]] = score_fn(gt[:, c], scores[:, c])
    return {"mean_AP": float(np.mean(list(per_class.values()))) if per_class else float("nan"),
            "per_class_AP": per_class, "num_frames": int(len(gt))}


def summarize(metrics: Mapping) -> str:
    """One line `name=value` for the float entries (for logs and progress bars)."""
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float))
