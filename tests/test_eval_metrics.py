"""Evaluation metrics on small hand-computed cases (arithmetic in the comments) and against scikit-learn."""
import numpy as np
import pytest

from eval import metrics as M
from streamformer_jax.zero_shot import metrics as ZM


def test_topk_accuracy_masks_padded_rows():
    scores = np.array([[0.1, 0.5, 0.4],    # label 2: one class (0.5) higher -> top-2 only
                       [0.3, 0.3, 0.4],    # label 0: 0.4 higher, the 0.3 tie is not higher -> top-2 only
                       [0.9, 0.05, 0.05],  # label 0: top-1, but this row is padding (mask 0)
                       [0.2, 0.7, 0.1]])   # label 1: top-1
    labels = np.array([2, 0, 0, 1])
    out = M.topk_accuracy(scores, labels, ks=(1, 2), mask=[1, 1, 0, 1])
    assert out == {"top1": pytest.approx(1 / 3), "top2": pytest.approx(1.0)}  # 1 of 3 valid rows; 3 of 3
    assert M.topk_accuracy(scores, labels, ks=(1,))["top1"] == pytest.approx(0.5)  # unmasked: 2 of 4


def test_average_precision_hand_computed():
    # sorted: + - + -; thresholds .9 (P 1, R .5), .8 (P 1/2, R .5), .7 (P 2/3, R 1), .1 (P 1/2, R 1)
    # AP = .5 * 1 + 0 * 1/2 + .5 * 2/3 + 0 = 0.8333...
    assert M.average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(0.5 + 0.5 * 2 / 3)
    # tie: the negative (0.9) first, then {+, +} tied at .7 form ONE threshold: P = 2/3 at R = 1 -> AP = 2/3
    # (breaking the tie position by position would give .5 * 1/2 + .5 * 2/3 = 0.583)
    assert M.average_precision([0, 1, 1, 0], [0.9, 0.7, 0.7, 0.1]) == pytest.approx(2 / 3)
    assert np.isnan(M.average_precision([0, 0], [0.1, 0.2]))


def test_average_precision_matches_sklearn_with_ties():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = rng.integers(5, 200)
        y = rng.random(n) < rng.uniform(0.05, 0.6)
        if not y.any():
            y[0] = True
        s = np.round(rng.random(n), 1 if trial % 2 else 6)  # every other trial: many ties
        assert M.average_precision(y, s) == pytest.approx(sklearn_metrics.average_precision_score(y, s), abs=1e-12)


def test_calibrated_average_precision_hand_computed():
    # y sorted by score: + - + - - -; 2 positives, 4 negatives -> w = 4/2 = 2
    # position 0: TP 1, FP 0 -> cPrec = 1 / (1 + 0/2) = 1
    # position 2: TP 2, FP 1 -> cPrec = 2 / (2 + 1/2) = 0.8        cAP = (1 + 0.8) / 2 = 0.9
    y, s = [1, 0, 1, 0, 0, 0], [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    assert M.calibrated_average_precision(y, s) == pytest.approx(0.9, abs=1e-9)
    assert M.average_precision(y, s) == pytest.approx((1 + 2 / 3) / 2)  # plain AP differs: 0.8333
    # balanced classes (w = 1): cAP equals plain AP position by position: + - + -  -> (1 + 2/3) / 2
    assert M.calibrated_average_precision([1, 0, 1, 0], [4, 3, 2, 1]) == pytest.approx((1 + 2 / 3) / 2, abs=1e-9)


def test_perframe_map_thumos_rules():
    # classes: 0 background, 1, 2, 3 = "ambiguous"; frame 4 is ambiguous and must be dropped
    labels = np.array([0, 1, 1, 2, 3, 0])
    scores = np.zeros((6, 4))
    scores[:, 1] = [0.1, 0.8, 0.3, 0.2, 0.9, 0.4]
    scores[:, 2] = [0.2, 0.1, 0.1, 0.7, 0.0, 0.3]
    scores[:, 0] = [0.0, 0.9, 0.9, 0.9, 0.0, 0.0]  # a terrible background score: must not count
    # class 1 after dropping frame 4: order .8(+) .4(-) .3(+) .2(-) .1(-) -> AP = .5*1 + .5*2/3 = 0.8333
    #   (keeping the ambiguous frame would put a negative at .9 first: AP = .5*1/2 + .5*2/4 = 0.5)
    # class 2: its only positive (.7) ranks first -> AP = 1;  mAP = (0.8333 + 1) / 2 = 0.91667
    out = M.perframe_map(labels, scores, background=0, ambiguous=3)
    assert out["per_class_AP"] == {"1": pytest.approx(0.5 + 0.5 * 2 / 3), "2": pytest.approx(1.0)}
    assert out["mean_AP"] == pytest.approx((0.5 + 0.5 * 2 / 3 + 1.0) / 2)
    assert out["num_frames"] == 5
    # multi-hot targets give the same result
    onehot = np.eye(4)[labels]
    assert M.perframe_map(onehot, scores, background=0, ambiguous=3)["mean_AP"] == out["mean_AP"]
    # mcAP (TVSeries): class 1 has 2 positives / 3 negatives (w = 1.5): cPrec = 1/(1+0) = 1 at the first
    # positive, 2/(2 + 1/1.5) = 0.75 at the second -> 0.875; class 2 -> 1; mean = 0.9375
    cap = M.perframe_map(labels, scores, metric="cAP", background=0, ambiguous=3)
    assert cap["per_class_AP"]["1"] == pytest.approx(0.875, abs=1e-9)
    assert cap["mean_AP"] == pytest.approx(0.9375, abs=1e-9)


def test_perframe_map_matches_sklearn_per_class():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    n, c = 300, 6
    labels = rng.integers(0, c, n)
    scores = rng.random((n, c))
    scores[np.arange(n), labels] += 0.3  # informative scores
    out = M.perframe_map(labels, scores, background=0, ambiguous=5)
    keep = labels != 5
    ref = [sklearn_metrics.average_precision_score(labels[keep] == k, scores[keep, k]) for k in range(1, 5)]
    assert out["mean_AP"] == pytest.approx(np.mean(ref), abs=1e-12)


def test_retrieval_recall_hand_computed():
    video = np.eye(3)
    text = np.array([[1.0, 0.0, 0.0],   # caption 0 -> video 0: rank 1
                     [0.0, 0.2, 0.9],   # caption 1 -> video 1 (0.2); video 2 scores 0.9 higher: rank 2
                     [0.0, 0.5, 0.1]])  # caption 2 -> video 2 (0.1); video 1 higher: rank 2
    out = ZM.retrieval_recall(text, video, ks=(1, 2), normalize=False)  # sim = text @ I = text
    assert out["t2v"]["R@1"] == pytest.approx(1 / 3) and out["t2v"]["R@2"] == 1.0
    # v2t = columns: video 1 sees captions (0, 0.2, 0.5) -> rank 2; video 2 sees (0, 0.9, 0.1) -> rank 2
    assert out["v2t"]["R@1"] == pytest.approx(1 / 3) and out["v2t"]["MdR"] == 2.0
    # two videos; captions 1 and 2 both describe video 1. v2t: video 0 over captions (1, 0, 0): its caption 0
    # is top -> rank 1; video 1 over captions (0, .2, .5): its best caption (.5) is top -> rank 1
    out = ZM.retrieval_recall(text[:, :2], video[:2, :2], text_to_video=[0, 1, 1], ks=(1,), normalize=False)
    assert out["v2t"]["R@1"] == 1.0
    # t2v: caption 1 row (0, .2): rank 1; caption 2 row (0, .5): rank 1; caption 0 row (1, 0): rank 1
    assert out["t2v"]["R@1"] == 1.0
    ranks = ZM.retrieval_ranks(np.array([[0.1, 0.3, 0.2], [0.5, 0.5, 0.1]]), [[0], [1]])
    assert ranks.tolist() == [3, 1]  # 0.1 has two higher; 0.5 tied with 0.5 is not higher


def test_temporal_iou_and_grounding_hand_computed():
    assert ZM.temporal_iou([2, 4], [2.5, 4.5]) == pytest.approx(1.5 / 2.5)  # inter [2.5,4]=1.5, union 2+2-1.5
    assert ZM.temporal_iou([0, 1], [2, 3]) == 0.0
    # scores - 0.5 = [-.5 -.5 .5 .5 -.5 .5 -.5 -.5]: best run frames 2..3 (sum 1; 2..5 ties, first kept)
    times = np.arange(8.0)
    win = ZM.window_from_scores([0, 0, 1, 1, 0, 1, 0, 0], times, threshold=0.5)
    assert win == (2.0, 4.0)  # frame 3 covers [3, 4)
    preds = [win, (0.0, 1.0), (1.0, 3.0)]
    gts = [(2.5, 4.5), (0.0, 4.0), (1.0, 3.0)]  # IoUs 0.6, 0.25, 1.0
    out = ZM.grounding_metrics(preds, gts)
    assert out["R@1,IoU=0.3"] == pytest.approx(2 / 3)
    assert out["R@1,IoU=0.5"] == pytest.approx(2 / 3)
    assert out["R@1,IoU=0.7"] == pytest.approx(1 / 3)
    assert out["mIoU"] == pytest.approx((0.6 + 0.25 + 1.0) / 3)


def test_segments_from_scores_hand_computed():
    scores = np.zeros((5, 2))
    scores[:, 0] = 1.0  # background: skipped
    scores[:, 1] = [0.1, 0.6, 0.7, 0.2, 0.9]
    segs = ZM.segments_from_scores(scores, np.arange(5) * 0.5, threshold=0.5, background=0)
    # runs of class 1 >= .5: frames [1, 3) -> [0.5, 1.0 + 0.5), mean .65; frame 4 -> [2.0, 2.5), .9
    assert segs == [(1, 0.5, 1.5, pytest.approx(0.65)), (1, 2.0, 2.5, pytest.approx(0.9))]


def test_localization_map_hand_computed():
    gt = [("v1", 0, 0, 10), ("v1", 0, 20, 30), ("v2", 1, 0, 4)]
    preds = [("v1", 0, 1, 9, 0.9),     # IoU 0.8 with [0, 10]
             ("v1", 0, 21, 35, 0.8),   # IoU 9 / 15 = 0.6 with [20, 30]
             ("v1", 0, 0, 10, 0.7),    # duplicate of an already matched GT -> FP
             ("v2", 0, 0, 5, 0.95),    # no class-0 GT in v2 -> FP
             ("v2", 1, 0, 4, 0.5)]     # perfect
    out = ZM.localization_map(preds, gt, tious=(0.5, 0.7))
    # class 0 @0.5: order FP TP TP FP -> P (0, .5, .667, .5), R (0, .5, 1, 1);
    #   envelope: .667 on both recall steps (0->.5, .5->1) -> AP = .5*.667 + .5*.667 = 0.6667
    # class 0 @0.7: the 0.6 match is now FP: order FP TP FP FP -> P (0, .5, .333, .25), R (0, .5, .5, .5)
    #   recall steps: 0->.5 at envelope .5, .5->1 (never reached) at 0 -> AP = 0.25
    # class 1: AP 1 at both thresholds
    assert out["per_class"]["0.5"][0] == pytest.approx(2 / 3)
    assert out["per_class"]["0.7"][0] == pytest.approx(0.25)
    assert out["mAP@0.5"] == pytest.approx((2 / 3 + 1) / 2)
    assert out["mAP@0.7"] == pytest.approx((0.25 + 1) / 2)
    assert out["average_mAP"] == pytest.approx(((2 / 3 + 1) / 2 + (0.25 + 1) / 2) / 2)


def test_grounding_from_embeddings_end_to_end():
    # frames 0..5 with 2-d embeddings; the text points along x; frames 2, 3 align with it (cos 1), others
    # are orthogonal (cos 0) -> similarities [0 0 1 1 0 0], threshold = mean = 1/3 -> window frames 2..3
    frames = np.array([[0, 1], [0, 2], [3, 0], [1, 0], [0, 1], [0, 5]], float)
    sim = ZM.cosine_similarity(frames, [2.0, 0.0])[:, 0]
    assert sim.tolist() == [0, 0, 1, 1, 0, 0]
    win = ZM.window_from_scores(sim, np.arange(6) * 0.5)
    assert win == (1.0, 2.0)  # frame 2 starts at 1.0 s, frame 3 ends at 1.5 + 0.5
    assert ZM.grounding_metrics([win], [(1.0, 2.0)])["mIoU"] == 1.0
