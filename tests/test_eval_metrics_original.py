"""The metrics that must equal the original's: grounding windows, R@K, localization AP (ActivityNet), cAP ties.

References here are written independently from the semantics in the spec / the original code (set-based or
vectorised formulations, hand-computed cases), never by calling the code under test.
"""
import numpy as np
import pytest

from eval import metrics as M
from streamformer_jax.zero_shot import metrics as ZM


# --------------------------------------------------------------------------------------------- grounding
def _reference_window(prob, ts, factor):
    """Set formulation of the original's walk: start = the last index <= argmax with p <= thr (0 if none),
    end = the first index >= argmax with p <= thr (T-1 if none); comparisons in float32."""
    p = np.asarray(prob, np.float32)
    m = int(np.flatnonzero(p == p.max())[0])
    thr = np.float32(factor * float(p[m]))
    low_left = [j for j in range(0, m + 1) if p[j] <= thr]
    low_right = [j for j in range(m, len(p)) if p[j] <= thr]
    return ts[max(low_left) if low_left else 0], ts[min(low_right) if low_right else len(p) - 1]


def test_threshold_window_hand_computed():
    ts = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    prob = np.array([0.1, 0.5, 0.9, 0.8, 0.2, 0.7], np.float32)
    # max 0.9 at 2; thr 0.45 (factor .5): left walk stops at 0 (0.1 <= .45), right walk at 4 (0.2 <= .45)
    assert ZM.threshold_window(prob, ts, 0.5) == (0.0, 2.0)
    # factor .6 -> thr .54: left stops at 1 (0.5 <= .54); right stops at 4; window ends at frame 4's time
    assert ZM.threshold_window(prob, ts, 0.6) == (0.5, 2.0)
    # the maximum on the first frame: start stays 0 whatever its value; all above thr -> end = last frame
    assert ZM.threshold_window(np.array([0.9, 0.8, 0.85], np.float32), [0, 1, 2], 0.5) == (0.0, 2.0)
    # ties for the maximum: the first one is the centre
    assert ZM.threshold_window(np.array([0.1, 0.9, 0.1, 0.9, 0.1], np.float32), [0, 1, 2, 3, 4], 0.5) == (0.0, 2.0)


def test_threshold_window_matches_reference_on_random_cases():
    rng = np.random.default_rng(0)
    for _ in range(500):
        t = int(rng.integers(1, 20))
        prob = rng.random(t).astype(np.float32)
        if rng.random() < 0.3:  # plateaus and ties
            prob = np.round(prob * 4) / 4
        ts = np.round(np.sort(rng.random(t)) * 30, 2)
        for f in ZM.GROUNDING_FACTORS:
            assert ZM.threshold_window(prob, ts, f) == _reference_window(prob, ts, f)


def test_threshold_comparison_is_in_float32():
    # max m = 0.63489336 (float32); thr = 0.6 * m = 0.38093601465 in float64, which rounds *up* to the float32
    # q = 0.38093602657. For the original (float32 tensor > Python float, compared in float32) q is not above
    # thr, so the walk stops on it; a float64 comparison would walk past it.
    m = np.float32(0.6348933577537537)
    q = np.float32(0.38093602657318115)
    assert float(q) > 0.6 * float(m) and not q > np.float32(0.6 * float(m))
    p = np.array([0.1, q, m, q, 0.1], np.float32)
    assert ZM.threshold_window(p, [0, 1, 2, 3, 4], 0.6) == (1.0, 3.0)


def test_original_iou_hand_computed():
    assert ZM.original_iou([2, 4], [3, 6]) == pytest.approx(1 / 4)  # inter 1, span 4
    assert ZM.original_iou([0, 1], [2, 3]) == 0.0                   # disjoint: max(inter, 0) = 0
    assert ZM.original_iou([1, 1], [1, 1]) == 0.0                   # 0/0 in the original
    assert ZM.original_iou([0, 10], [0, 10]) == 1.0


def test_grounding_results_per_factor():
    ts = [[0.0, 1.0, 2.0, 3.0, 4.0]] * 2
    # logits whose sigmoids are ~[0.02, 0.5, 0.98, 0.5, 0.02] and a flat-ish second query
    z = [np.array([-4.0, 0.0, 4.0, 0.0, -4.0], np.float32), np.array([0.0, 0.1, 0.2, 0.3, 0.4], np.float32)]
    gts = [(1.0, 3.0), (2.0, 4.0)]
    out = ZM.grounding_results(z, ts, gts)
    # query 0: max .982 at 2; factor .5 thr .491 -> walks stop where p <= thr: left 1 (0.5 > .491 so continue
    # to 0: 0.018) -> start 0; right: 3 (0.5 > .491) -> 4. Window [0, 4]: IoU with [1, 3] = 2/4.
    # factor .6/.7 (thr .589/.687): stop at 1 and 3 -> [1, 3]: IoU 1.
    # query 1: sigmoids .5 .525 .55 .574 .599, max at 4; thr(.5) = .2995 -> start walks to 0, window [0, 4]:
    # IoU 2/4; thr(.6) = .359 -> same; thr(.7) = .419 -> same.
    assert out["factor_0.5"]["mIoU"] == pytest.approx(0.5)
    assert out["factor_0.6"]["mIoU"] == pytest.approx(0.75)
    assert out["factor_0.6"]["R@1,IoU=0.7"] == 0.5 and out["factor_0.6"]["R@1,IoU=0.5"] == 1.0
    assert out["num_queries"] == 2
    legacy = ZM.grounding_results(z, ts, gts, method="max_subarray")["max_subarray"]
    assert set(legacy) == {"R@1,IoU=0.3", "R@1,IoU=0.5", "R@1,IoU=0.7", "mIoU"}


# --------------------------------------------------------------------------------------------- retrieval
def test_recall_matches_rank_reference_and_topk_r1():
    rng = np.random.default_rng(1)
    t, v = rng.standard_normal((50, 8)), rng.standard_normal((50, 8))
    out = ZM.retrieval_recall(t, v)
    tn = t / np.linalg.norm(t, axis=1, keepdims=True)
    vn = v / np.linalg.norm(v, axis=1, keepdims=True)
    sim = tn @ vn.T
    # reference: position of the diagonal in each row sorted descending (no ties in random data)
    ranks = np.array([int(np.flatnonzero(np.argsort(-row) == i)[0]) + 1 for i, row in enumerate(sim)])
    for k in (1, 5, 10):
        assert out["t2v"][f"R@{k}"] == pytest.approx(np.mean(ranks <= k))
    assert out["t2v"]["MdR"] == np.median(ranks) and out["t2v"]["MnR"] == pytest.approx(ranks.mean())
    # the original's R@1: topk(sims, 1).indices == arange
    assert out["t2v"]["R@1"] == pytest.approx(np.mean(np.argmax(sim, 1) == np.arange(50)))


# ------------------------------------------------------------------------------------------- calibrated AP
def _reference_cap(y, s):
    """Loop formulation over the permutation NumPy's default argsort gives for -s (the original's call)."""
    perm = np.argsort(-np.asarray(s))
    y = np.asarray(y)[perm]
    pos = int(y.sum())
    w = (len(y) - pos) / pos
    tp = fp = 0
    total = 0.0
    for label in y:
        if label:
            tp += 1
            total += tp / (tp + fp / (w + np.finfo(float).eps) + np.finfo(float).eps)
        else:
            fp += 1
    return total / pos


def test_calibrated_ap_hand_computed_and_ties():
    # order by score: 1 0 1 0; w = 1: cPrec at the positives 1/1 and 2/3 -> (1 + 2/3) / 2
    assert M.calibrated_average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(5 / 6)
    rng = np.random.default_rng(2)
    differs = 0
    for _ in range(20):
        s = rng.integers(0, 3, 3000) / 2.0  # heavy ties
        y = (rng.random(3000) < 0.2).astype(int)
        got = M.calibrated_average_precision(y, s)
        assert got == pytest.approx(_reference_cap(y, s), abs=1e-12)
        stable = y[np.argsort(-s, kind="stable")]
        differs += not np.array_equal(stable, y[np.argsort(-s)])
    assert differs > 0  # the default sort really orders ties differently from a stable one here


def test_perframe_cmap_keeps_score_dtype():
    rng = np.random.default_rng(3)
    scores = (rng.integers(0, 4, (2000, 3)) / 4).astype(np.float32)
    targets = rng.integers(0, 3, 2000)
    out = M.perframe_map(targets, scores, metric="cAP", background=0)
    ref = [_reference_cap(targets == c, scores[:, c]) for c in (1, 2)]
    assert out["mean_AP"] == pytest.approx(np.mean(ref), abs=1e-12)


# ---------------------------------------------------------------------------------- localization (ActivityNet)
def _reference_detection_ap(preds, gts, thr):
    """Matrix formulation: IoU matrix of all predictions x GT, predictions in argsort(score)[::-1] order,
    GT tried in argsort(iou)[::-1] order per prediction, 11-free interpolated AP over the envelope."""
    order = np.argsort(np.array([p[3] for p in preds], float))[::-1]
    iou = np.zeros((len(preds), len(gts)))
    for i, (v, s, e, _) in enumerate(preds):
        for j, (gv, gs, ge) in enumerate(gts):
            if gv == v:
                inter = max(0.0, min(e, ge) - max(s, gs))
                iou[i, j] = inter / ((e - s) + (ge - gs) - inter)
            else:
                iou[i, j] = -1  # another video: never a candidate
    free = np.ones(len(gts), bool)
    hits = []
    for i in order:
        hit = False
        same = [j for j in np.argsort(iou[i])[::-1] if iou[i, j] >= 0]
        for j in same:
            if iou[i, j] < thr:
                break
            if free[j]:
                free[j] = False
                hit = True
                break
        hits.append(hit)
    hits = np.array(hits, float)
    prec = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    rec = np.cumsum(hits) / len(gts)
    ap = 0.0
    for k in range(len(hits)):
        if hits[k]:
            ap += prec[k:].max() / len(gts)  # each recall step at the envelope's value
    return ap


def test_detection_ap_ties_follow_reversed_default_sort():
    gts = [("v", 0.0, 10.0)]
    # two equal scores: argsort()[::-1] takes the *later* one first. Later = a miss, earlier = a hit:
    # order FP, TP -> precision at the hit 1/2 -> AP 0.5 (a stable descending sort would give 1.0)
    preds = [("v", 0.0, 10.0, 0.5), ("v", 20.0, 30.0, 0.5)]
    assert ZM.detection_ap(preds, gts, 0.5) == pytest.approx(0.5)
    assert ZM.detection_ap(preds[::-1], gts, 0.5) == pytest.approx(1.0)


def test_detection_ap_matches_reference_on_random_cases():
    rng = np.random.default_rng(4)
    for _ in range(200):
        gts = []
        for v in range(3):
            for _ in range(int(rng.integers(0, 3))):
                s = float(rng.integers(0, 50))
                gts.append((f"v{v}", s, s + float(rng.integers(1, 20))))
        if not gts:
            continue
        preds = []
        for _ in range(int(rng.integers(1, 12))):
            s = float(rng.integers(0, 50))
            preds.append((f"v{int(rng.integers(0, 4))}", s, s + float(rng.integers(1, 20)),
                          float(rng.integers(0, 4)) / 4))  # ties
        for thr in (0.3, 0.5, 0.7):
            assert ZM.detection_ap(preds, gts, thr) == pytest.approx(_reference_detection_ap(preds, gts, thr))


def test_localization_map_activitynet_thresholds_and_segments():
    assert ZM.ACTIVITYNET_TIOUS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
    out = ZM.localization_map([("v", 0, 0.0, 10.0, 1.0)], [("v", 0, 0.0, 10.0), ("v", 1, 5.0, 6.0)])
    assert set(k for k in out if k.startswith("mAP@")) == {f"mAP@{ZM.tiou_key(t)}" for t in ZM.ACTIVITYNET_TIOUS}
    assert out["average_mAP"] == pytest.approx(0.5)  # class 0 perfect, class 1 has no prediction -> 0
    # segments: frames at 0.5, 1.5, ..., 4.5 s (cells of 1 s), class 0 high on frames 1-2
    probs = np.array([[0.1], [0.9], [0.8], [0.2], [0.1]])
    segs = ZM.localization_segments(probs, np.arange(5) + 0.5, duration=5.0, factors=(0.5,))
    assert segs == [(0, 1.0, 3.0, pytest.approx(0.85))]
