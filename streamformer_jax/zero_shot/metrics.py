"""The zero-shot metrics of the pretraining tasks as pure NumPy functions (no framework, no I/O), equal to the
original's on the same inputs.

Retrieval
    cosine_similarity(a, b)                          embeddings -> similarities (text embeddings are inputs)
    retrieval_ranks / retrieval_recall(sim, ...)     text->video and video->text R@1/5/10, median/mean rank
Temporal grounding (the original's `validation_one_epoch_grounding`)
    threshold_window(prob, timestamps, factor)       window grown around the max above factor x max
    original_iou(gt, pred)                           the original's IoU (union = span of the two windows)
    grounding_results(logits, timestamps, gts)       sigmoid -> windows for factors 0.5/0.6/0.7 -> R@m, mIoU
    window_from_scores / grounding_metrics            the earlier maximum-subarray rule ("max_subarray" option)
Temporal action localization (ActivityNet's `compute_average_precision_detection`)
    segments_from_scores, localization_segments, detection_ap, localization_map   mAP at tIoU thresholds

Conventions: `scores` are higher-is-better; ties are resolved as stated per function (where the original
sorts with NumPy's default, unstable sort, so do we, with the same call on the same array).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

# ------------------------------------------------------------------------------------------------- retrieval


def cosine_similarity(a, b) -> np.ndarray:
    """[..., D] x [M, D] -> [..., M] cosine similarities (e.g. per-frame video embeddings vs a text embedding)."""
    a = np.asarray(a, np.float64)
    b = np.atleast_2d(np.asarray(b, np.float64))
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return a @ b.T


def retrieval_ranks(sim, gt=None) -> np.ndarray:
    """1-based rank of the correct column for each row of `sim` [Q, G].

    gt: for each row the correct column (default: the diagonal), or a list of sets/sequences of correct
    columns (the best-ranked one counts). rank = 1 + number of columns scoring strictly higher than the
    (best) correct one, so ties are resolved in the query's favour.
    """
    sim = np.asarray(sim, np.float64)
    if sim.ndim != 2:
        raise ValueError(f"sim must be [queries, gallery], got {sim.shape}")
    if gt is None:
        if sim.shape[0] != sim.shape[1]:
            raise ValueError("a non-square similarity needs an explicit gt mapping")
        gt = [[i] for i in range(sim.shape[0])]
    ranks = np.empty(sim.shape[0], np.int64)
    for q, cols in enumerate(gt):
        cols = np.atleast_1d(np.asarray(cols if not isinstance(cols, (set, frozenset)) else sorted(cols)))
        best = sim[q, cols].max()
        ranks[q] = 1 + int(np.sum(sim[q] > best))
    return ranks


def recall_at_k(ranks, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    ranks = np.asarray(ranks)
    out = {f"R@{k}": float(np.mean(ranks <= k)) for k in ks}
    out["MdR"] = float(np.median(ranks))
    out["MnR"] = float(np.mean(ranks))
    return out


def retrieval_recall(text_emb, video_emb, text_to_video=None, ks: Sequence[int] = (1, 5, 10),
                     normalize: bool = True) -> dict[str, dict[str, float]]:
    """Text->video and video->text recall@k from embeddings (cosine similarity when normalize=True).

    text_emb [Nt, D], video_emb [Nv, D]; text_to_video[i] = the video of caption i (default: i, Nt == Nv).
    Video->text: a video's rank is that of its best-ranked caption.
    """
    t = np.asarray(text_emb, np.float64)
    v = np.asarray(video_emb, np.float64)
    if normalize:
        t = t / np.linalg.norm(t, axis=-1, keepdims=True)
        v = v / np.linalg.norm(v, axis=-1, keepdims=True)
    sim = t @ v.T  # [Nt, Nv]
    t2v = np.arange(len(t)) if text_to_video is None else np.asarray(text_to_video)
    captions = [np.flatnonzero(t2v == j) for j in range(len(v))]
    if any(len(c) == 0 for c in captions):
        raise ValueError("every video needs at least one caption")
    return {"t2v": recall_at_k(retrieval_ranks(sim, t2v[:, None]), ks),
            "v2t": recall_at_k(retrieval_ranks(sim.T, captions), ks)}


# ------------------------------------------------------------------------------------------------- grounding


def temporal_iou(a, b) -> np.ndarray:
    """IoU of [start, end] windows; a [..., 2] and b [..., 2] broadcast. Empty unions give 0."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    inter = np.clip(np.minimum(a[..., 1], b[..., 1]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    union = (a[..., 1] - a[..., 0]) + (b[..., 1] - b[..., 0]) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def window_from_scores(scores, times, threshold: float | None = None, frame_duration: float | None = None):
    """Predicted [start, end] (seconds) from per-frame query similarities.

    The window is the contiguous run of frames maximising sum(score - threshold) (maximum subarray;
    threshold default: the mean score of the video). Frame i covers [times[i], times[i] + frame_duration)
    (default duration: the median frame spacing). If no frame exceeds the threshold, the single best frame.
    """
    s = np.asarray(scores, np.float64)
    times = np.asarray(times, np.float64)
    if s.shape != times.shape or s.ndim != 1 or len(s) == 0:
        raise ValueError("scores and times must be 1-D of the same non-zero length")
    thr = float(s.mean()) if threshold is None else float(threshold)
    dur = float(np.median(np.diff(times))) if frame_duration is None and len(times) > 1 else (frame_duration or 1.0)
    x = s - thr
    best, best_range = -np.inf, (int(np.argmax(s)), int(np.argmax(s)))
    run, start = 0.0, 0
    for i, v in enumerate(x):
        if run <= 0:
            run, start = v, i
        else:
            run += v
        if run > best:
            best, best_range = run, (start, i)
    i0, i1 = best_range
    return float(times[i0]), float(times[i1] + dur)


def grounding_metrics(pred_windows, gt_windows, thresholds: Sequence[float] = (0.3, 0.5, 0.7)) -> dict[str, float]:
    """R@1 at IoU >= m (fraction of queries) and mIoU; pred/gt [Q, 2] in seconds."""
    iou = temporal_iou(np.asarray(pred_windows, np.float64), np.asarray(gt_windows, np.float64))
    out = {f"R@1,IoU={m}": float(np.mean(iou >= m - 1e-12)) for m in thresholds}
    out["mIoU"] = float(np.mean(iou))
    return out


GROUNDING_FACTORS = (0.5, 0.6, 0.7)
GROUNDING_IOUS = (0.3, 0.5, 0.7)


def sigmoid(x) -> np.ndarray:
    x = np.asarray(x)
    dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
    return (1.0 / (1.0 + np.exp(-x.astype(dtype)))).astype(dtype)


def threshold_window(prob, timestamps, factor: float = 0.7) -> tuple[float, float]:
    """The original's `threshold_prob_proposal`: the window grown around the highest-probability frame.

    m = argmax(prob) (first maximum); thr = factor * prob[m]. `start` walks left from m while start > 0 and
    prob[start] > thr, `end` walks right from m while end < T - 1 and prob[end] > thr, so each stops on the
    first frame at or below thr (or on the first / last frame). The window is [timestamps[start],
    timestamps[end]]: it ends at the timestamp of its last frame (no frame duration is added).
    The comparison is done in `prob`'s dtype, as in the original (float32 tensors against a Python float).
    """
    p = np.asarray(prob)
    ts = np.asarray(timestamps, np.float64)
    if p.ndim != 1 or p.shape != ts.shape or len(p) == 0:
        raise ValueError(f"prob and timestamps must be 1-D of the same non-zero length, got {p.shape}, {ts.shape}")
    m = int(np.argmax(p))
    thr = float(factor) * float(p[m])
    start = m
    while start > 0 and p[start] > thr:
        start -= 1
    end = m
    while end < len(p) - 1 and p[end] > thr:
        end += 1
    return float(ts[start]), float(ts[end])


def original_iou(a, b) -> float:
    """The original's `iou(A, B)`: max(min(A1, B1) - max(A0, B0), 0) / (max(A1, B1) - min(A0, B0)).

    The denominator is the span of the two windows (= the union when they overlap; the IoU is 0 otherwise).
    Two empty windows at the same instant divide 0 by 0 in the original; here they give 0.
    """
    inter = max(min(float(a[1]), float(b[1])) - max(float(a[0]), float(b[0])), 0.0)
    span = max(float(a[1]), float(b[1])) - min(float(a[0]), float(b[0]))
    return inter / span if span > 0 else 0.0


def grounding_results(logits: Sequence, timestamps: Sequence, gt_windows: Sequence, *,
                      factors: Sequence[float] = GROUNDING_FACTORS, ious: Sequence[float] = GROUNDING_IOUS,
                      method: str = "original") -> dict:
    """R@1 at IoU >= m and mIoU per query, as the original grounding validation.

    logits[q]: per-frame scores of query q (the grounding head's s*cos + b, any length); timestamps[q]: the
    sampled frames' times in seconds; gt_windows[q]: (start, end). method "original": probabilities =
    sigmoid(logits), one window per factor (`threshold_window`), the original IoU; returns
    {"factor_0.5": {"R@1,IoU=0.3": .., "R@1,IoU=0.5": .., "R@1,IoU=0.7": .., "mIoU": ..}, ...,
    "num_queries": Q}. method "max_subarray": the earlier rule (`window_from_scores` on the logits, threshold =
    their mean; standard IoU), returned under "max_subarray".
    """
    if not (len(logits) == len(timestamps) == len(gt_windows)):
        raise ValueError("logits, timestamps and gt_windows need one entry per query")
    out: dict = {"num_queries": len(logits)}
    if len(logits) == 0:
        return out
    if method == "original":
        for f in factors:
            iou = np.array([original_iou(gt, threshold_window(sigmoid(z), ts, f))
                            for z, ts, gt in zip(logits, timestamps, gt_windows)])
            res = {f"R@1,IoU={m}": float(np.mean(iou >= m)) for m in ious}
            res["mIoU"] = float(np.mean(iou))
            out[f"factor_{f}"] = res
    elif method == "max_subarray":
        preds = [window_from_scores(np.asarray(z, np.float64), ts) for z, ts in zip(logits, timestamps)]
        out["max_subarray"] = grounding_metrics(preds, gt_windows, thresholds=ious)
    else:
        raise ValueError(f"method must be 'original' or 'max_subarray', got {method!r}")
    return out


# ---------------------------------------------------------------------------------------------- localization


def segments_from_scores(scores, times, threshold: float = 0.5, frame_duration: float | None = None,
                         background: int | None = None) -> list[tuple[int, float, float, float]]:
    """Per-frame class scores [T, C] -> detections (class, start, end, score).

    For each class (except `background`), each maximal run of frames with score >= threshold becomes one
    segment [times[first], times[last] + frame_duration) scored by the mean score over the run.
    """
    s = np.asarray(scores, np.float64)
    times = np.asarray(times, np.float64)
    dur = float(np.median(np.diff(times))) if frame_duration is None and len(times) > 1 else (frame_duration or 1.0)
    out = []
    for c in range(s.shape[1]):
        if c == background:
            continue
        on = np.r_[False, s[:, c] >= threshold, False]
        edges = np.flatnonzero(np.diff(on.astype(np.int8)))
        for a, b in zip(edges[::2], edges[1::2]):  # frames [a, b)
            out.append((c, float(times[a]), float(times[b - 1] + dur), float(s[a:b, c].mean())))
    return out


def _interpolated_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """ActivityNet's `interpolated_prec_rec`: area under the monotone precision envelope."""
    mprec = np.r_[0.0, precision, 0.0]
    mrec = np.r_[0.0, recall, 1.0]
    for i in range(len(mprec) - 2, -1, -1):
        mprec[i] = max(mprec[i], mprec[i + 1])
    idx = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx]))


ACTIVITYNET_TIOUS = tuple(float(t) for t in np.round(np.linspace(0.5, 0.95, 10), 2))


def tiou_key(t: float) -> str:
    """'0.5', '0.55', ... (threshold names in results)."""
    return format(round(float(t), 4), "g")


def frame_boundaries(timestamps, duration: float | None = None) -> np.ndarray:
    """[T + 1] boundaries of the time cells of T sampled frames: midpoints between neighbours, 0 before the
    first frame and `duration` (default: last time + half the last gap) after the last one."""
    ts = np.asarray(timestamps, np.float64)
    if ts.ndim != 1 or len(ts) == 0:
        raise ValueError("timestamps must be 1-D and non-empty")
    mids = (ts[1:] + ts[:-1]) / 2
    last_gap = ts[-1] - ts[-2] if len(ts) > 1 else 1.0
    end = float(duration) if duration is not None else ts[-1] + last_gap / 2
    return np.concatenate([[min(0.0, ts[0])], mids, [max(end, ts[-1])]])


def localization_segments(probs, timestamps, duration: float | None = None,
                          factors: Sequence[float] = (0.5, 0.6, 0.7, 0.8, 0.9), background: int | None = None
                          ) -> list[tuple[int, float, float, float]]:
    """Per-frame class probabilities [T, C] of one video -> detections (class, start, end, score).

    The original evaluates no localization, so this is our rule, in the spirit of its grounding windows: for
    each class, each maximal run of frames with prob >= factor * (that class's max over the video), for every
    factor, is a candidate; duplicates are merged; a run covers the time cells of its frames
    (`frame_boundaries`) and scores the mean probability over the run.
    """
    p = np.asarray(probs, np.float64)
    if p.ndim != 2 or p.shape[0] != len(timestamps):
        raise ValueError(f"probs must be [T, C] with T = len(timestamps), got {p.shape}")
    bounds = frame_boundaries(timestamps, duration)
    out, seen = [], set()
    for c in range(p.shape[1]):
        if c == background:
            continue
        top = p[:, c].max()
        for f in factors:
            on = np.r_[False, p[:, c] >= f * top, False]
            edges = np.flatnonzero(np.diff(on.astype(np.int8)))
            for a, b in zip(edges[::2], edges[1::2]):  # frames [a, b)
                if (c, a, b) not in seen:
                    seen.add((c, a, b))
                    out.append((c, float(bounds[a]), float(bounds[b]), float(p[a:b, c].mean())))
    return out


def detection_ap(predictions: Sequence[tuple], ground_truth: Sequence[tuple], tiou: float) -> float:
    """AP of one class at one tIoU threshold, as ActivityNet's `compute_average_precision_detection`.

    predictions: (video_id, start, end, score); ground_truth: (video_id, start, end). Predictions are taken in
    the order `np.argsort(scores)[::-1]` (NumPy's default sort of the float64 scores, reversed: the
    original's tie order); each is matched to the GT segments of its video in the order
    `tiou.argsort()[::-1]`: the first with tIoU >= tiou that is still free makes it a true positive, else it
    is a false positive. Precision is interpolated (monotone envelope). NaN when there is no ground truth;
    0 when there is no prediction.
    """
    if not ground_truth:
        return float("nan")
    if not predictions:
        return 0.0
    scores = np.asarray([p[3] for p in predictions], np.float64)
    order = np.argsort(scores)[::-1]
    gt_by_video: dict = {}
    for k, (vid, s, e) in enumerate(ground_truth):
        gt_by_video.setdefault(vid, []).append((k, s, e))
    locked = np.zeros(len(ground_truth), bool)
    tp = np.zeros(len(order))
    for i, idx in enumerate(order):
        vid, s, e, _ = predictions[idx]
        cands = gt_by_video.get(vid, [])
        if not cands:
            continue
        ious = temporal_iou(np.array([s, e], np.float64), np.array([[gs, ge] for _, gs, ge in cands], np.float64))
        for j in ious.argsort()[::-1]:
            if ious[j] < tiou:
                break
            k = cands[j][0]
            if locked[k]:
                continue
            locked[k] = True
            tp[i] = 1
            break
    ctp = np.cumsum(tp)
    cfp = np.cumsum(1 - tp)
    return _interpolated_ap(ctp / (ctp + cfp), ctp / len(ground_truth))


def localization_map(predictions: Iterable[tuple], ground_truth: Iterable[tuple],
                     tious: Sequence[float] = ACTIVITYNET_TIOUS) -> dict:
    """Temporal action localization mAP per tIoU and averaged (ActivityNet: tIoU 0.5:0.05:0.95).

    predictions: (video_id, class, start, end, score); ground_truth: (video_id, class, start, end). The mean is
    over the classes that have ground truth (a class without predictions has AP 0). Returns
    {"mAP@{t}": ..., "average_mAP": ..., "per_class": {t: {class: AP}}}.
    """
    predictions, ground_truth = list(predictions), list(ground_truth)
    classes = sorted({g[1] for g in ground_truth})
    out: dict = {"per_class": {}}
    maps = []
    for t in tious:
        aps = {}
        for c in classes:
            aps[c] = detection_ap([(v, s, e, sc) for v, cc, s, e, sc in predictions if cc == c],
                                  [(v, s, e) for v, cc, s, e in ground_truth if cc == c], t)
        out["per_class"][tiou_key(t)] = aps
        out[f"mAP@{tiou_key(t)}"] = float(np.mean(list(aps.values()))) if aps else float("nan")
        maps.append(out[f"mAP@{tiou_key(t)}"])
    out["average_mAP"] = float(np.mean(maps))
    return out
