"""Action recognition: view indices, crops, annotation lists, pooling (incl. the official bug), sharded evaluation."""
import json

import numpy as np
import pytest

from eval import action_recognition as AR
from streamformer_jax.convert import classifier_io
from streamformer_jax.models import classifier


def test_kinetics_test_indices_hand_computed():
    # n = 33, T = 4, K = 4: seg = 32/4 = 8, offset = int(8/5 * (k+1)) = int(1.6 (k+1))
    assert AR.kinetics_test_indices(33, 4, 0, 4).tolist() == [1, 9, 17, 25]   # + int(1.6) = 1
    assert AR.kinetics_test_indices(33, 4, 3, 4).tolist() == [6, 14, 22, 30]  # + int(6.4) = 6
    # n = 6: seg = 1.25; round(1.25*i) = 0, 1, 2 (2.5 rounds half-to-even, as np.round), 4; offset
    # int(0.25 * 4) = 1 for clip 3 -> [1, 2, 3, 5]; clip 0 offset int(0.25) = 0 -> [0, 1, 2, 4]
    assert AR.kinetics_test_indices(6, 4, 3, 4).tolist() == [1, 2, 3, 5]
    assert AR.kinetics_test_indices(6, 4, 0, 4).tolist() == [0, 1, 2, 4]
    # short video (n < T): seg = .25, round(0, .25, .5, .75) = 0, 0, 0 (half-to-even), 1; offset int(.05*4) = 0
    assert AR.kinetics_test_indices(2, 4, 3, 4).tolist() == [0, 0, 0, 1]


def test_ssv2_test_indices_hand_computed():
    # n = 10, T = 4: tick = 2.5; int(1.25 + 2.5x) = 1, 3, 6, 8; int(2.5x) = 0, 2, 5, 7
    # sorted: 0 1 2 3 5 6 7 8 -> view 0 = even positions, view 1 = odd positions
    assert AR.ssv2_test_indices(10, 4, 0).tolist() == [0, 2, 5, 7]
    assert AR.ssv2_test_indices(10, 4, 1).tolist() == [1, 3, 6, 8]


def test_spatial_crops_and_views():
    assert AR.spatial_crop_starts(300, 224, 3) == [0, 38, 76]   # step (300-224)/2 = 38
    assert AR.spatial_crop_starts(301, 224, 3) == [0, 38, 77]   # step 38.5: int(38.5), int(77.0)
    assert AR.spatial_crop_starts(224, 224, 3) == [0, 0, 0]
    # frames whose pixel value encodes (frame index, column): check which frames/columns each view takes
    n, h, w = 33, 4, 10
    frames = np.zeros((n, h, w, 3), np.uint8)
    frames[..., 0] = np.arange(n)[:, None, None]
    frames[..., 1] = np.arange(w)[None, None, :]
    proto = AR.Protocol("k400", num_frames=4, temporal_views=4, spatial_views=3)
    views = AR.views_from_frames(frames, proto, crop=4)
    assert views.shape == (12, 4, 4, 4, 3)
    assert views[0, :, 0, 0, 0].tolist() == [1, 9, 17, 25]             # view 0: clip 0, crop 0
    assert views[11, :, 0, 0, 0].tolist() == [6, 14, 22, 30]           # view 11: clip 3, crop 2
    assert [views[j, 0, 0, 0, 1] for j in range(3)] == [0, 3, 6]       # crop starts int(j * (10-4)/2)
    # portrait frames crop along the height
    tall = np.transpose(frames, (0, 2, 1, 3)).copy()
    assert AR.views_from_frames(tall, proto, crop=4)[2, 0, 0, 0, 1] == 6


def test_read_annotation_list_formats(tmp_path):
    (tmp_path / "k.csv").write_text("abseiling/a b.mp4,0\nx,y.mp4,399\n\n")
    (tmp_path / "s.txt").write_text("74225.webm 140\n116154.webm 127\n")
    assert AR.read_annotation_list(tmp_path / "k.csv", root="/data") == [
        ("/data/abseiling/a b.mp4", 0), ("/data/x,y.mp4", 399)]
    assert AR.read_annotation_list(tmp_path / "s.txt") == [("74225.webm", 140), ("116154.webm", 127)]
    (tmp_path / "bad.csv").write_text("a.mp4,zero\n")
    with pytest.raises(ValueError, match="bad.csv:1"):
        AR.read_annotation_list(tmp_path / "bad.csv")


def test_official_bug_groups_hand_computed():
    import jax.numpy as jnp

    # B=1, T=2, N=3, D=1 with value 10 t + n. Official order (n*T + t): 0 10 1 11 2 12.
    tokens = jnp.array([[[[0.0], [1.0], [2.0]], [[10.0], [11.0], [12.0]]]])
    groups = np.asarray(classifier.official_bug_groups(tokens))[0, :, :, 0]
    assert groups.tolist() == [[0, 10, 1], [11, 2, 12]]  # not the frames [[0,1,2],[10,11,12]]
    # the original views with config.num_frames groups: 6 tokens as 3 groups of 2
    assert np.asarray(classifier.official_bug_groups(tokens, 3))[0, :, :, 0].tolist() == [[0, 10], [1, 11], [2, 12]]


@pytest.fixture(scope="module")
def tiny_official():
    from conftest import FIXTURES
    from streamformer_jax.checkpoint import load_any

    config, params = load_any(FIXTURES / "tiny")
    return config, params, FIXTURES / "tiny"


def test_pooling_matches_torch_reference(tiny_official, frames=2):
    """`mean` and the official bug vs a torch replay of the original AR forward (view + head + mean).

    T = 2 < config.num_frames = 4: the original views the 4 x 2 tokens as config.num_frames groups (of 2),
    the general case of the bug (T = num_frames is the special case covered by the hand-computed test)."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file
    from torch_reference import ReferenceBackbone, to_pixels

    import jax.numpy as jnp
    from flax import nnx
    from streamformer_jax.models.params import model_from_flat_params
    from streamformer_jax.models.streamformer import normalize_pixels

    config, params, d = tiny_official
    cfg = json.loads((d / "config.json").read_text())
    ref = ReferenceBackbone(cfg)
    ref.load_state_dict(load_file(str(d / "model.safetensors")), strict=True)
    video = np.load(d / "video.npy")[:frames]
    with torch.no_grad():
        x = to_pixels(video)
        b, t = x.shape[:2]
        h, n = ref.embeddings(x)
        for layer in ref.encoder.layer:
            h = layer(h, b, t, n)
        seq = ref.post_layernorm(h)  # [B, N*T, D] official token order
        f = cfg["num_frames"]
        bug = ref.head(seq.view(b * f, -1, seq.shape[-1])).view(b, f, -1).mean(1).numpy()
        mean = ref(x)["pooler_output"].mean(1).numpy()
    import jax

    graphdef, state = nnx.split(model_from_flat_params(config, params))
    pool = jax.jit(lambda st, pix: {p: classifier.pool_clip(nnx.merge(graphdef, st), pix, p) for p in ("official_bug", "mean")})
    got = pool(state, normalize_pixels(jnp.asarray(video[None])))
    np.testing.assert_allclose(np.asarray(got["official_bug"]), bug, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(got["mean"]), mean, atol=2e-5, rtol=1e-5)
    assert np.abs(bug - mean).max() > 1e-2  # the flag changes the features


def _numpy_head_probs(head, feats):
    x = feats.astype(np.float64)
    x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
    x = x * head["fc_norm"]["scale"] + head["fc_norm"]["bias"]
    logits = x @ head["classifier"]["kernel"] + head["classifier"]["bias"]
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _direct_metrics(fx, head, all_views, labels, ks):
    """Reference: an unsharded clip forward per video (its views as the batch), NumPy head + softmax +
    per-video mean + top-k."""
    scores = []
    for views in all_views:
        feats = fx(views, return_tokens=False)["pooler_output"].mean(1)  # all views of a video, unsharded
        scores.append(_numpy_head_probs(head, feats).mean(0))
    scores = np.stack(scores)
    labels = np.asarray(labels)
    higher = (scores > scores[np.arange(len(labels)), labels][:, None]).sum(1)
    return {f"top{k}": float(np.mean(higher < k)) for k in ks}, higher + 1, scores


def test_sharded_padded_evaluation_equals_direct_numpy(tiny_official, tmp_path):
    from streamformer_jax.api import FeatureExtractor

    config, params, _ = tiny_official
    rng = np.random.default_rng(0)
    proto = AR.Protocol("k400", num_frames=4, temporal_views=2, spatial_views=3)
    num_videos, num_classes = 5, 7
    all_views = [rng.integers(0, 256, (proto.num_views, 4, 32, 32, 3), dtype=np.uint8) for _ in range(num_videos)]
    labels = rng.integers(0, num_classes, num_videos)
    videos = [(f"v{i}", int(labels[i])) for i in range(num_videos)]
    head = classifier.init_head(config.hidden_size, num_classes, seed=3, std=1.0)
    clf = AR.ClipClassifier(config, params, head=head, pooling="mean")
    assert clf.batch_devices == 8
    load = lambda p: all_views[int(p[1:])]  # noqa: E731
    # 5 videos x 6 views = 30 views: batch 8 -> 3 full batches + one with 2 padded rows
    res = AR.evaluate(clf, videos, proto, batch_size=8, ks=(1, 3), load_views=load, progress=False,
                      out=tmp_path / "r.json", keep_scores=True)
    ref, ranks, scores = _direct_metrics(FeatureExtractor(config, params), head, all_views, labels, (1, 3))
    np.testing.assert_allclose(res["scores"], scores, atol=1e-5)  # padded rows did not leak into any video
    assert res["top1"] == ref["top1"] and res["top3"] == ref["top3"]
    assert 0 < ref["top3"] < 1 or 0 < ref["top1"] < 1  # a non-degenerate case
    assert [v["label_rank"] for v in res["per_video"]] == ranks.tolist()
    assert all(v["views"] == 6 for v in res["per_video"]) and res["num_videos"] == 5
    assert json.loads((tmp_path / "r.json").read_text())["top1"] == res["top1"]


def test_padded_rows_do_not_count():
    rows = [(i, np.full((1,), i)) for i in range(5)]
    batches = list(AR.iter_padded_batches(rows, 4))
    assert [b[2].tolist() for b in batches] == [[True] * 4, [True, False, False, False]]
    assert batches[1][0] == [4, None, None, None] and batches[1][1].shape == (4, 1)


def test_host_slices_partition_the_dataset():
    items = list(range(11))
    parts = [AR.host_slice(items, h, 3) for h in range(3)]
    assert sorted(sum(parts, [])) == items and parts[1] == [1, 4, 7, 10]


def test_ar_checkpoint_import(tiny_official):
    from safetensors.numpy import load_file

    config, params, d = tiny_official
    state = load_file(str(d / "model.safetensors"))
    rng = np.random.default_rng(0)
    state = {f"module.{k}": v for k, v in state.items() if not k.startswith("head.")} | {
        f"module.{k}": v for k, v in state.items() if k.startswith("head.")}
    state["module.fc_norm.weight"] = rng.standard_normal(64).astype(np.float32)
    state["module.fc_norm.bias"] = rng.standard_normal(64).astype(np.float32)
    state["module.classifier.weight"] = rng.standard_normal((5, 64)).astype(np.float32)
    state["module.classifier.bias"] = rng.standard_normal(5).astype(np.float32)
    ours, head = classifier_io.ar_checkpoint_to_ours(state, config)
    assert sorted(ours) == sorted(params)
    np.testing.assert_array_equal(head["classifier"]["kernel"], state["module.classifier.weight"].T)
    feats = rng.standard_normal((3, 64)).astype(np.float32)
    torch = pytest.importorskip("torch")
    lin = torch.nn.Sequential(torch.nn.LayerNorm(64, eps=1e-6), torch.nn.Linear(64, 5))
    lin[0].weight.data = torch.from_numpy(state["module.fc_norm.weight"])
    lin[0].bias.data = torch.from_numpy(state["module.fc_norm.bias"])
    lin[1].weight.data = torch.from_numpy(state["module.classifier.weight"])
    lin[1].bias.data = torch.from_numpy(state["module.classifier.bias"])
    with torch.no_grad():
        expected = lin(torch.from_numpy(feats)).numpy()
    np.testing.assert_allclose(np.asarray(classifier.head_logits(head, feats)), expected, atol=1e-5)


def test_load_ar_checkpoint_deepspeed_layout(tiny_official, tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    config, params, d = tiny_official
    state = {f"module.{k}": v for k, v in load_file(str(d / "model.safetensors")).items()}
    state["module.fc_norm.weight"] = torch.ones(64)
    state["module.fc_norm.bias"] = torch.zeros(64)
    state["module.classifier.weight"] = torch.arange(3 * 64, dtype=torch.float32).reshape(3, 64)
    state["module.classifier.bias"] = torch.tensor([1.0, 2.0, 3.0])
    torch.save({"module": state, "epoch": 29}, tmp_path / "k400.pt")
    ours, head = classifier_io.load_ar_checkpoint(tmp_path / "k400.pt", config)
    for k in params:
        np.testing.assert_array_equal(ours[k], params[k])
    assert head["classifier"]["kernel"].shape == (64, 3) and head["classifier"]["kernel"][1, 0] == 1.0
    assert head["classifier"]["bias"].tolist() == [1.0, 2.0, 3.0]
