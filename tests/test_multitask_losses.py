"""Each multitask loss against an independent NumPy (float64) implementation of the spec §5.1 formula."""
import numpy as np
import jax
import jax.numpy as jnp
import pytest

from streamformer_jax.tasks import losses as _losses

torch = pytest.importorskip("torch")

RTOL, ATOL = 1e-5, 1e-5
S, BIAS = 1.3, -2.0  # logit_scale (log space) and logit_bias


class losses:  # jitted versions (eager dispatch of many small ops is slow on a 2-core CPU)
    classification_loss = jax.jit(_losses.classification_loss)
    retrieval_loss = jax.jit(_losses.retrieval_loss)
    grounding_loss = jax.jit(_losses.grounding_loss)
    localization_loss = jax.jit(_losses.localization_loss)
    vis_loss = jax.jit(_losses.vis_loss, static_argnames=("max_classes",))
    select_vis_classes = jax.jit(_losses.select_vis_classes, static_argnums=2)
    upsample_bilinear = staticmethod(jax.jit(_losses.upsample_bilinear, static_argnums=(1, 2)))


def _n(x):
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _sig(z, y):  # -log sigmoid(y z)
    return np.logaddexp(0.0, -y * z)


def _rand(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _template_mean(seed, c, d, k=28):
    """A label table as the heads get it: mean of k unit vectors per class (norm < 1, NOT re-normalised)."""
    return _n(_rand(seed, c, k, d)).mean(axis=1).astype(np.float32)


def test_classification_matches_numpy_and_uses_unrenormalised_label_embeddings():
    b, c, d = 5, 7, 16
    v, e = _rand(0, b, d), _template_mean(1, c, d)
    assert np.all(np.linalg.norm(e, axis=-1) < 0.9)
    labels = np.array([0, 3, 6, 3, 1])
    z = np.exp(S) * _n(v) @ e.astype(np.float64).T + BIAS
    y = np.where(np.arange(c)[None] == labels[:, None], 1.0, -1.0)
    ref = _sig(z, y).sum() / b
    loss, logits = losses.classification_loss(v, e, labels, S, BIAS)
    np.testing.assert_allclose(float(loss), ref, rtol=RTOL)
    np.testing.assert_allclose(np.asarray(logits), z, rtol=RTOL, atol=ATOL)
    renorm, _ = losses.classification_loss(v, _n(e).astype(np.float32), labels, S, BIAS)
    assert abs(float(renorm) - ref) > 1e-2  # re-normalising E would change the loss


def _ring_reference(v, u, ranks):
    """The original's SigLipLoss per rank (own block with labels 2I-1, the other ranks' caption blocks as
    negatives, reached by ring exchanges), divided by the local batch, then averaged over ranks (DDP)."""
    vb, ub = np.split(_n(v), ranks), np.split(_n(u), ranks)
    per_rank = []
    for r in range(ranks):
        bl = vb[r].shape[0]
        total = 0.0
        for hop in range(ranks):  # hop 0 = own block; hops 1..R-1 = neighbours' text features
            q = (r + hop) % ranks
            z = np.exp(S) * vb[r] @ ub[q].T + BIAS
            y = 2 * np.eye(bl) - 1 if q == r else -np.ones((bl, bl))
            total += _sig(z, y).sum()
        per_rank.append(total / bl)
    return np.mean(per_rank)


def test_retrieval_global_batch_equals_ring_version_averaged_over_ranks():
    b, d = 16, 12
    v, u = _rand(2, b, d), _rand(3, b, d)
    loss, z = losses.retrieval_loss(v, u, S, BIAS)
    for ranks in (1, 2, 4, 8):
        np.testing.assert_allclose(float(loss), _ring_reference(v, u, ranks), rtol=RTOL)
    # the same under jit with the batch sharded over the 8 (fake) devices: GSPMD gathers implicitly
    from streamformer_jax.sharding import batch_sharding, make_mesh

    sh = batch_sharding(make_mesh(data=8), 2)  # the project's (Auto / GSPMD) mesh
    sharded = jax.jit(lambda a, c: losses.retrieval_loss(a, c, S, BIAS)[0])(jax.device_put(v, sh),
                                                                             jax.device_put(u, sh))
    np.testing.assert_allclose(float(sharded), float(loss), rtol=RTOL)
    # and it is not the local-only (per-shard, no cross-device negatives) loss
    local = np.mean([float(losses.retrieval_loss(a, c, S, BIAS)[0]) for a, c in zip(np.split(v, 8), np.split(u, 8))])
    assert abs(local - float(loss)) > 1e-2


def test_retrieval_gradients_match_the_ring_version():
    b, d, ranks = 8, 6, 4
    v, u = _rand(4, b, d), _rand(5, b, d)
    g = jax.grad(lambda a: losses.retrieval_loss(a, u, S, BIAS)[0])(jnp.asarray(v))
    eps = 1e-3  # central differences of the float64 ring reference
    num = np.zeros_like(v, np.float64)
    for i in range(b):
        for j in range(d):
            p, m = v.astype(np.float64).copy(), v.astype(np.float64).copy()
            p[i, j] += eps
            m[i, j] -= eps
            num[i, j] = (_ring_reference(p, u, ranks) - _ring_reference(m, u, ranks)) / (2 * eps)
    np.testing.assert_allclose(np.asarray(g), num, rtol=1e-3, atol=1e-5)


def test_grounding_matches_numpy():
    b, t, d = 3, 5, 8
    f, u = _rand(6, b, t, d), _rand(7, b, d)
    labels = (np.random.default_rng(8).random((b, t)) > 0.5).astype(np.float32)
    z = np.exp(S) * np.einsum("btd,bd->bt", _n(f), _n(u)) + BIAS
    ref = _sig(z, np.where(labels > 0, 1.0, -1.0)).sum() / b
    loss, _ = losses.grounding_loss(f, u, labels, S, BIAS)
    np.testing.assert_allclose(float(loss), ref, rtol=RTOL)


def test_localization_per_dataset_label_sets_and_background():
    b, t, d = 4, 6, 8
    sets = [_template_mean(9, 3, d), _template_mean(10, 5, d)]  # two datasets, 3 and 5 classes
    table = np.zeros((2, 5, d), np.float32)
    valid = np.zeros((2, 5), bool)
    for k, e in enumerate(sets):
        table[k, : len(e)], valid[k, : len(e)] = e, True
    ds = np.array([0, 1, 1, 0])
    labels = np.array([[-1, 0, 0, 2, -1, -1], [4, 4, -1, -1, 1, 1], [-1] * 6, [1, 1, 1, 1, 1, 1]])
    f = _rand(11, b, t, d)
    ref = 0.0
    for i in range(b):
        e = sets[ds[i]].astype(np.float64)
        z = np.exp(S) * _n(f[i]) @ e.T + BIAS  # [T, C_k]
        y = np.where((np.arange(len(e))[None] == labels[i][:, None]) & (labels[i][:, None] >= 0), 1.0, -1.0)
        ref += _sig(z, y).sum() / t
    ref /= b
    loss, _ = losses.localization_loss(f, table, labels, S, BIAS, valid=valid, dataset_id=ds)
    np.testing.assert_allclose(float(loss), ref, rtol=RTOL)
    # sample 2 is all background: every class of every frame is a negative
    only_bg, _ = losses.localization_loss(f[2:3], table, labels[2:3], S, BIAS, valid=valid, dataset_id=ds[2:3])
    z = np.exp(S) * _n(f[2]) @ sets[1].astype(np.float64).T + BIAS
    np.testing.assert_allclose(float(only_bg), _sig(z, -1.0).sum() / t, rtol=RTOL)
    # one shared label set ([C, D]) is the K = 1 case
    one, _ = losses.localization_loss(f[:1], sets[0], labels[:1], S, BIAS)
    z = np.exp(S) * _n(f[0]) @ sets[0].astype(np.float64).T + BIAS
    y = np.where(np.arange(3)[None] == labels[0][:, None], 1.0, -1.0)
    np.testing.assert_allclose(float(one), _sig(z, y).sum() / t, rtol=RTOL)


@pytest.mark.parametrize("src,dst", [((3, 4), (12, 16)), ((2, 2), (7, 5)), ((5, 3), (224 // 16, 13)), ((4, 4), (4, 4))])
def test_bilinear_upsampling_matches_torch_align_corners_false(src, dst):
    x = _rand(12, 2, 3, *src, 5)  # [B, T, h, w, C]
    ours = np.asarray(losses.upsample_bilinear(jnp.asarray(x), *dst))
    t = torch.from_numpy(x).permute(0, 1, 4, 2, 3).reshape(6, 5, *src)
    ref = torch.nn.functional.interpolate(t, size=dst, mode="bilinear", align_corners=False)
    ref = ref.reshape(2, 3, 5, *dst).permute(0, 1, 3, 4, 2).numpy()
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)


def _vis_reference(patches, sets, ds, mask, emb_override=None):
    """Per sample: logits on the patch grid -> torch bilinear (align_corners=False) -> CE ignoring -1, mean over
    the valid pixels (0 if none); mean over samples."""
    b, t, h, w, d = patches.shape
    hh, ww = mask.shape[-2:]
    per = []
    for i in range(b):
        e = sets[ds[i]] if emb_override is None else emb_override[i]
        logits = np.exp(S) * _n(patches[i]) @ np.asarray(e, np.float64).T + BIAS  # [T, h, w, C]
        up = torch.nn.functional.interpolate(torch.from_numpy(logits).permute(0, 3, 1, 2), size=(hh, ww),
                                             mode="bilinear", align_corners=False).permute(0, 2, 3, 1).numpy()
        tgt = mask[i]
        ok = tgt >= 0
        if not ok.any():
            per.append(0.0)
            continue
        lse = np.log(np.exp(up - up.max(-1, keepdims=True)).sum(-1)) + up.max(-1)
        picked = np.take_along_axis(up, np.maximum(tgt, 0)[..., None], -1)[..., 0]
        per.append(float(((lse - picked) * ok).sum() / ok.sum()))
    return np.mean(per)


def test_vis_loss_matches_numpy_with_upsampling_ignore_index_and_class_zero():
    b, t, h, w, d = 3, 2, 3, 3, 8
    sets = [_n(_rand(13, 4, d)), _n(_rand(14, 6, d))]  # VIS uses the single "{}" template: unit rows
    table = np.zeros((2, 6, d), np.float32)
    valid = np.zeros((2, 6), bool)
    for k, e in enumerate(sets):
        table[k, : len(e)], valid[k, : len(e)] = e, True
    ds = np.array([0, 1, 0])
    rng = np.random.default_rng(15)
    mask = rng.integers(-1, 4, (b, t, 10, 10)).astype(np.int32)
    mask[1, :, :5] = 5  # a class only dataset 1 has
    mask[2] = -1  # no valid pixel: contributes 0
    patches = _rand(16, b, t, h, w, d)
    loss, logits = losses.vis_loss(patches, table, mask, S, BIAS, valid=valid, dataset_id=ds)
    assert logits.shape == (b, t, 10, 10, 6)
    np.testing.assert_allclose(float(loss), _vis_reference(patches, sets, ds, mask), rtol=1e-4)
    # class 0 is a real class (the original's COCO "person" = background collision is fixed)
    no_zero = np.where(mask == 0, -1, mask)
    assert abs(float(losses.vis_loss(patches, table, no_zero, S, BIAS, valid=valid, dataset_id=ds)[0])
               - float(loss)) > 1e-3
    # -1 pixels are ignored: changing the logits' inputs where everything is ignored changes nothing
    only_ignored = mask.copy()
    only_ignored[0] = -1
    base = float(losses.vis_loss(patches, table, only_ignored, S, BIAS, valid=valid, dataset_id=ds)[0])
    p2 = patches.copy()
    p2[0] += 5.0
    assert float(losses.vis_loss(p2, table, only_ignored, S, BIAS, valid=valid, dataset_id=ds)[0]) == pytest.approx(base)


def test_vis_class_subsampling_is_seeded_keeps_positives_and_renormalises():
    b, t, h, w, d, c, k = 3, 2, 2, 2, 8, 30, 8
    e = _template_mean(17, c, d, k=3)  # not unit-norm, so the re-normalisation is visible
    rng = np.random.default_rng(18)
    mask = np.full((b, t, 6, 6), -1, np.int32)
    present = [[2, 17, 29], [0], [5, 6, 7, 8, 9, 10, 11, 12, 13, 14]]  # sample 2: more positives than k
    for i, cls in enumerate(present):
        mask[i].flat[rng.choice(mask[i].size, len(cls) * 4, replace=False)] = np.repeat(cls, 4)
    patches = _rand(19, b, t, h, w, d)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="rng"):
        losses.vis_loss(patches, e, mask, S, BIAS, max_classes=k)
    loss, _ = losses.vis_loss(patches, e, mask, S, BIAS, rng=key, max_classes=k)
    again, _ = losses.vis_loss(patches, e, mask, S, BIAS, rng=key, max_classes=k)
    other, _ = losses.vis_loss(patches, e, mask, S, BIAS, rng=jax.random.key(1), max_classes=k)
    assert float(loss) == float(again) and float(loss) != float(other)
    selected, ok = losses.select_vis_classes(jnp.asarray(mask), jnp.ones((b, c), bool), k, key)
    selected = np.asarray(selected)
    assert selected.shape == (b, k) and np.all(ok)
    for i in range(2):
        assert set(present[i]) <= set(selected[i].tolist()) and len(set(selected[i].tolist())) == k
    assert set(selected[2].tolist()) <= set(present[2])  # 10 positives > k: k of them are kept
    # reference: the selected rows, re-normalised, and the mask remapped to their positions (others ignored)
    remapped = np.full_like(mask, -1)
    for i in range(b):
        for j, cls in enumerate(selected[i]):
            remapped[i][mask[i] == cls] = j
    ref = _vis_reference(patches, None, None, remapped, emb_override=[_n(e[s]) for s in selected])
    np.testing.assert_allclose(float(loss), ref, rtol=1e-4)


vis_by_frame = jax.jit(_losses.vis_loss_by_frame, static_argnames=("max_classes",))


def test_vis_loss_by_frame_is_the_same_loss_in_bounded_memory():
    """The training loss (a scan over frames, rematerialised) equals the all-frames loss, with upsampling to the
    input resolution and the per-dataset class subsampling, in value and gradient."""
    b, t, h, w, d, k = 3, 3, 2, 2, 8, 5
    sets = [_n(_rand(20, 4, d)), _template_mean(21, 9, d, k=3)]  # dataset 1 has more than k classes
    table = np.zeros((2, 9, d), np.float32)
    valid = np.zeros((2, 9), bool)
    for i, e in enumerate(sets):
        table[i, : len(e)], valid[i, : len(e)] = e, True
    ds = np.array([0, 1, 1])
    mask = np.random.default_rng(22).integers(-1, 4, (b, t, 8, 8)).astype(np.int32)
    mask[2, :, :2] = 8
    patches = _rand(23, b, t, h, w, d)
    key = jax.random.key(3)
    full, logits, target = jax.jit(_losses.vis_loss, static_argnames=("max_classes", "return_target"))(
        patches, table, mask, S, BIAS, valid=valid, dataset_id=ds, rng=key, max_classes=k, return_target=True)
    loss, acc = vis_by_frame(patches, table, mask, S, BIAS, valid=valid, dataset_id=ds, rng=key, max_classes=k)
    np.testing.assert_allclose(float(loss), float(full), rtol=1e-6)
    ok = np.asarray(target) >= 0
    want_acc = ((np.argmax(np.asarray(logits), -1) == np.asarray(target)) & ok).sum() / ok.sum()
    assert float(acc) == pytest.approx(want_acc)
    grad = lambda f: jax.grad(lambda p: f(p, table, mask, S, BIAS, valid=valid, dataset_id=ds, rng=key,  # noqa
                                          max_classes=k)[0])(jnp.asarray(patches))
    np.testing.assert_allclose(grad(vis_by_frame), grad(losses.vis_loss), rtol=1e-5, atol=1e-7)
    # Sample 0's dataset has 4 <= k classes: it keeps all of them, un-renormalised, whatever the other datasets
    # hold (the original subsamples only a dataset with more than its threshold, here LV-VIS).
    one, _ = vis_by_frame(patches[:1], table, mask[:1], S, BIAS, valid=valid, dataset_id=ds[:1], rng=key,
                          max_classes=k)
    np.testing.assert_allclose(float(one), _vis_reference(patches[:1], [sets[0]], np.array([0]), mask[:1]),
                               rtol=1e-4)
