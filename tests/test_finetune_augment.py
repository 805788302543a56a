"""The finetuning loss pieces (train/regularisation.py) against direct NumPy statements of timm's semantics: mixup /
cutmix pixels and soft targets, label smoothing, the soft-target cross-entropy, the draw statistics, and
per-frame random erasing."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from streamformer_jax.train import regularisation as A

B, T, H, W, C = 6, 2, 12, 10, 3
NUM_CLASSES = 5


def _numpy_mix(x, labels, lam, cutmix, box, num_classes, smoothing):
    """timm Mixup(mode="batch", correct_lam=True) given its draw, on [B, T, H, W, C] (box over H, W)."""
    x = np.asarray(x, np.float64)
    rev = x[::-1]
    if cutmix:
        yl, yh, xl, xh = box
        out = x.copy()
        out[:, :, yl:yh, xl:xh] = rev[:, :, yl:yh, xl:xh]
        lam = 1.0 - (yh - yl) * (xh - xl) / float(x.shape[2] * x.shape[3])
    else:
        out = lam * x + (1 - lam) * rev
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    y = np.full((len(labels), num_classes), off)
    y[np.arange(len(labels)), labels] = on
    return out, lam * y + (1 - lam) * y[::-1]


@pytest.mark.parametrize("reg", [A.Regularisation(), A.Regularisation(mixup=0.0), A.Regularisation(cutmix=0.0)],
                         ids=["both", "cutmix_only", "mixup_only"])
def test_mixed_pixels_and_targets_match_numpy(reg):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, H, W, C)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, B)
    seen = set()
    for seed in range(12):
        p = A.draw_mix(jax.random.key(seed), reg, H, W)
        mixed, targets = A.apply_mix(jnp.asarray(x), jnp.asarray(labels), p, NUM_CLASSES, reg.label_smoothing)
        lam, cut, box = float(p.lam), bool(p.cutmix), np.asarray(p.box)
        seen.add(cut)
        want_x, want_t = _numpy_mix(x, labels, lam, cut, box, NUM_CLASSES, reg.label_smoothing)
        np.testing.assert_allclose(np.asarray(mixed), want_x, atol=1e-6)
        np.testing.assert_allclose(np.asarray(targets), want_t, atol=1e-6)
        np.testing.assert_allclose(np.asarray(targets).sum(1), 1.0, atol=1e-6)
        if cut:  # the box is timm's rand_bbox for this lam: side int(S * sqrt(1 - lam)), centred, clipped
            cut_h, cut_w = int(H * np.sqrt(1 - lam)), int(W * np.sqrt(1 - lam))
            assert box[1] - box[0] <= 2 * (cut_h // 2) and box[3] - box[2] <= 2 * (cut_w // 2)
            assert 0 <= box[0] <= box[1] <= H and 0 <= box[2] <= box[3] <= W
    assert seen == {True, False} if reg.mixup and reg.cutmix else seen == {bool(reg.cutmix)}


def test_label_smoothing_without_mixing():
    reg = A.Regularisation(mix_prob=0.0, label_smoothing=0.1)
    p = A.draw_mix(jax.random.key(3), reg, H, W)
    assert float(p.lam) == 1.0 and not bool(p.cutmix)
    labels = np.array([0, 4, 2, 2, 1, 3])
    x = np.random.default_rng(1).standard_normal((B, T, H, W, C)).astype(np.float32)
    mixed, targets = A.apply_mix(jnp.asarray(x), jnp.asarray(labels), p, NUM_CLASSES, 0.1)
    np.testing.assert_array_equal(np.asarray(mixed), x)
    want = np.full((B, NUM_CLASSES), 0.02)
    want[np.arange(B), labels] = 0.92  # 1 - 0.1 + 0.1 / 5
    np.testing.assert_allclose(np.asarray(targets), want, atol=1e-7)


def test_draw_statistics():
    keys = jax.random.split(jax.random.key(7), 4000)
    reg = A.Regularisation(mix_prob=0.6)
    p = jax.vmap(lambda k: A.draw_mix(k, reg, 224, 224))(keys)
    lam, cut = np.asarray(p.lam), np.asarray(p.cutmix)
    mixed = lam < 1.0
    assert abs(mixed.mean() - 0.6) < 0.03  # mix_prob
    assert abs(cut[mixed].mean() - 0.5) < 0.03  # switch_prob
    # Beta(a, a) is symmetric: mean 1/2, variance 1 / (4 (2a + 1))
    for alpha, chosen in ((0.8, mixed & ~cut), (1.0, cut)):
        assert abs(lam[chosen].mean() - 0.5) < 0.03
        assert abs(lam[chosen].var() - 1 / (4 * (2 * alpha + 1))) < 0.01


def test_soft_target_cross_entropy_matches_numpy():
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((7, NUM_CLASSES)).astype(np.float32) * 3
    t = rng.random((7, NUM_CLASSES))
    t /= t.sum(1, keepdims=True)
    z = logits.astype(np.float64)
    logp = z - z.max(1, keepdims=True) - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True))
    want = np.mean(-(t * logp).sum(1))
    assert float(A.soft_target_cross_entropy(jnp.asarray(logits), jnp.asarray(t, jnp.float32))) == \
        pytest.approx(want, rel=1e-5)


def test_random_erasing_boxes_per_frame():
    h, w = 32, 40
    x = jnp.zeros((50, 40, h, w, 3), jnp.float32)  # 2000 frames
    out = np.asarray(A.random_erasing(jax.random.key(5), x, 0.25))
    changed = out != 0
    assert np.array_equal(changed, np.repeat(changed[..., :1], 3, -1))  # all channels of a pixel together
    frames = changed[..., 0].reshape(-1, h, w)
    erased = frames.any((1, 2))
    assert abs(erased.mean() - 0.25) < 0.03  # each frame independently, p = 0.25
    areas, aspects = [], []
    for f in frames[erased]:
        rows, cols = np.where(f.any(1))[0], np.where(f.any(0))[0]
        assert f[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()  # one solid rectangle
        assert f.sum() == len(rows) * len(cols)
        areas.append(f.sum() / (h * w))
        aspects.append(len(rows) / len(cols))
    # area U(0.02, 1/3) and aspect ratio in [0.3, 1/0.3], up to the rounding of the sides
    assert 0.015 < min(areas) and max(areas) < 0.4 and 0.12 < np.mean(areas) < 0.23
    assert min(aspects) > 0.25 and max(aspects) < 4
    noise = out[changed]
    assert abs(noise.mean()) < 0.05 and abs(noise.std() - 1) < 0.05  # N(0, 1) pixels
    np.testing.assert_array_equal(np.asarray(A.random_erasing(jax.random.key(5), x, 0.0)), np.asarray(x))
