"""Batch-level regularisation of the action-recognition finetuning (spec §7.1): timm-style mixup / cutmix with
label smoothing (soft targets) and per-frame random erasing, as pure, jit-able JAX functions of a PRNG key.

Semantics follow timm's `Mixup(mode="batch", correct_lam=True)` and `RandomErasing(mode="pixel")` as the
original finetuning code uses them:

* mixup/cutmix: with probability `prob` the micro-batch is mixed; if both alphas are > 0, cutmix is chosen
  with probability `switch_prob`, else mixup; lam ~ Beta(alpha, alpha) of the chosen one. Sample i is mixed
  with sample B-1-i (the batch reversed). Mixup: x = lam x + (1-lam) x_rev. Cutmix: one box, cut side
  int(S sqrt(1-lam)) around a uniform centre, clipped to the frame, pasted from x_rev into every frame;
  lam is then corrected to the unpasted area fraction. Targets: lam y_s + (1-lam) y_s,rev with
  y_s = one-hot smoothed to (1 - s + s/C, s/C).
* random erasing: each frame independently (the original permutes its [C, T, H, W] clip to [T, C, H, W] and
  timm treats T as the batch) with probability p: up to 10 tries of area U(0.02, 1/3) x H W and log aspect
  ratio U(log 0.3, log 1/0.3); the first box that fits is filled with N(0, 1) noise per pixel and channel (in
  normalised pixel space).

Deliberate difference: the original applies timm's image cutmix to [B, C, T, H, W] tensors, so its
`x[:, :, yl:yh, xl:xh]` cuts along (T, H) with a box drawn for (H, W) — mostly an empty cut with mixed
labels. Here the box is cut along (H, W) in every frame, the intended cutmix. One lam is drawn per global
micro-batch (the original: one per GPU's batch).
"""
from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Regularisation:
    """Settings of the original finetuning (timm names in brackets)."""

    mixup: float = 0.8  # mixup alpha (--mixup); 0 = off
    cutmix: float = 1.0  # cutmix alpha (--cutmix); 0 = off
    mix_prob: float = 1.0  # probability that a batch is mixed at all (--mixup_prob)
    switch_prob: float = 0.5  # probability of cutmix when both are on (--mixup_switch_prob)
    label_smoothing: float = 0.1  # (--smoothing)
    random_erasing: float = 0.25  # per-frame probability (--reprob), pixel mode, one box

    @property
    def mixes(self) -> bool:
        return self.mix_prob > 0 and (self.mixup > 0 or self.cutmix > 0)


class MixParams(NamedTuple):
    """One batch's draw: lam before the cutmix area correction, whether cutmix, and the box rows/cols."""

    lam: jax.Array  # float32 []; 1 = not mixed
    cutmix: jax.Array  # bool []
    box: jax.Array  # int32 [4]: yl, yh, xl, xh (half-open); meaningful only when cutmix


def smooth_one_hot(labels: jax.Array, num_classes: int, smoothing: float) -> jax.Array:
    off = smoothing / num_classes
    return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * (1.0 - smoothing) + off


def draw_mix(rng: jax.Array, reg: Regularisation, height: int, width: int) -> MixParams:
    """timm `_params_per_batch` + `rand_bbox` for one batch (the box is drawn even when unused)."""
    if not reg.mixes:
        return MixParams(jnp.float32(1.0), jnp.asarray(False), jnp.zeros(4, jnp.int32))
    k_on, k_switch, k_lam, k_cy, k_cx = jax.random.split(rng, 5)
    on = jax.random.uniform(k_on) < reg.mix_prob
    if reg.mixup > 0 and reg.cutmix > 0:
        cutmix = jax.random.uniform(k_switch) < reg.switch_prob
    else:
        cutmix = jnp.asarray(reg.cutmix > 0)
    alpha = jnp.where(cutmix, reg.cutmix, reg.mixup)  # the chosen one's alpha (> 0)
    lam = jnp.where(on, jax.random.beta(k_lam, alpha, alpha), 1.0).astype(jnp.float32)
    ratio = jnp.sqrt(1.0 - lam)
    cut_h = jnp.floor(height * ratio).astype(jnp.int32)  # int() of a non-negative number
    cut_w = jnp.floor(width * ratio).astype(jnp.int32)
    cy = jax.random.randint(k_cy, (), 0, height)
    cx = jax.random.randint(k_cx, (), 0, width)
    box = jnp.stack([jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height),
                     jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)])
    return MixParams(lam, cutmix & (lam < 1.0), box.astype(jnp.int32))


def box_mask(box: jax.Array, height: int, width: int) -> jax.Array:
    """bool [H, W]: inside rows [box[0], box[1]) and columns [box[2], box[3])."""
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]
    return (rows >= box[0]) & (rows < box[1]) & (cols >= box[2]) & (cols < box[3])


def apply_mix(x: jax.Array, labels: jax.Array, params: MixParams, num_classes: int, smoothing: float
              ) -> tuple[jax.Array, jax.Array]:
    """x [B, T, H, W, C] float, labels int [B] -> (mixed x, soft targets float32 [B, num_classes])."""
    h, w = x.shape[2], x.shape[3]
    x_rev = x[::-1]
    inside = box_mask(params.box, h, w)[None, None, :, :, None]
    lam = params.lam.astype(x.dtype)
    mixed = jnp.where(params.cutmix, jnp.where(inside, x_rev, x), lam * x + (1 - lam) * x_rev)
    area = (params.box[1] - params.box[0]) * (params.box[3] - params.box[2])
    lam_t = jnp.where(params.cutmix, 1.0 - area / float(h * w), params.lam).astype(jnp.float32)
    y = smooth_one_hot(labels, num_classes, smoothing)
    return mixed, lam_t * y + (1.0 - lam_t) * y[::-1]


# ------------------------------------------------------------------------------------------ random erasing
ERASE_TRIES = 10
ERASE_AREA = (0.02, 1.0 / 3.0)
ERASE_LOG_ASPECT = (math.log(0.3), math.log(1.0 / 0.3))


def draw_erase_boxes(rng: jax.Array, num_frames: int, height: int, width: int, prob: float) -> jax.Array:
    """int32 [num_frames, 4] boxes (yl, yh, xl, xh); an empty box (0, 0, 0, 0) where nothing is erased."""
    k_tries, k_frame = jax.random.split(rng)
    u = jax.random.uniform(k_tries, (num_frames, ERASE_TRIES, 2))
    area = (ERASE_AREA[0] + u[..., 0] * (ERASE_AREA[1] - ERASE_AREA[0])) * (height * width)
    aspect = jnp.exp(ERASE_LOG_ASPECT[0] + u[..., 1] * (ERASE_LOG_ASPECT[1] - ERASE_LOG_ASPECT[0]))
    h = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)  # Python's round: half to even, as jnp.round
    w = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
    fits = (w < width) & (h < height)
    first = jnp.argmax(fits, axis=1)  # the first try that fits
    h = jnp.take_along_axis(h, first[:, None], axis=1)[:, 0]
    w = jnp.take_along_axis(w, first[:, None], axis=1)[:, 0]
    v = jax.random.uniform(k_frame, (num_frames, 3))
    # random.randint(0, H - h) is inclusive: H - h + 1 positions.
    top = jnp.floor(v[:, 1] * (height - h + 1)).astype(jnp.int32)
    left = jnp.floor(v[:, 2] * (width - w + 1)).astype(jnp.int32)
    on = (v[:, 0] < prob) & jnp.any(fits, axis=1)
    box = jnp.stack([top, top + h, left, left + w], axis=1)
    return jnp.where(on[:, None], box, 0).astype(jnp.int32)


def random_erasing(rng: jax.Array, x: jax.Array, prob: float) -> jax.Array:
    """x [B, T, H, W, C] (normalised) -> x with one N(0, 1)-filled box in each frame chosen with `prob`."""
    if prob <= 0:
        return x
    b, t, h, w, c = x.shape
    k_box, k_noise = jax.random.split(rng)
    boxes = draw_erase_boxes(k_box, b * t, h, w, prob).reshape(b, t, 1, 1, 4)
    rows = jnp.arange(h)[:, None]
    cols = jnp.arange(w)[None, :]
    inside = ((rows >= boxes[..., 0]) & (rows < boxes[..., 1]) & (cols >= boxes[..., 2]) & (cols < boxes[..., 3]))
    noise = jax.random.normal(k_noise, x.shape, jnp.float32).astype(x.dtype)
    return jnp.where(inside[..., None], noise, x)


def soft_target_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """timm `SoftTargetCrossEntropy`: mean over the batch of -sum(targets * log_softmax(logits))."""
    return jnp.mean(-jnp.sum(targets * jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), axis=-1))
