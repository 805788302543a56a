"""The multitask losses of the original pretraining heads (spec §5.1), as pure array functions.

Notation: n(x) = x / max(‖x‖₂, 1e-12) (torch's `F.normalize`), s = exp(logit_scale), β = logit_bias,
σ-loss(z, y) = −log σ(y·z) = softplus(−y·z) with y ∈ {+1, −1}. Every function computes in float32 and
returns `(loss, logits)`; losses are sums over pairs divided by the stated count, exactly as the original.

Label-embedding tables `E` are used as given: the classification/localization tables are template means of
unit vectors and are deliberately *not* re-normalised (spec §10.10). Per-dataset label sets are passed as one
padded table `[K, C, D]` with a `valid [K, C]` mask and a per-sample `dataset_id [B]`; padded classes take no
part in the loss (the original builds each dataset's table with its own C).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

NUM_MAX_CLASSES = 100  # the VIS head subsamples classes above this (LV-VIS, 1196 classes)
_NEG = -1e9  # logit of padded / unselected classes (finite so that 0 · _NEG stays 0)


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """torch `F.normalize`: x / max(‖x‖, eps), in float32."""
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), eps)


def sigmoid_loss_terms(z: jax.Array, y: jax.Array) -> jax.Array:
    """−log σ(y·z), elementwise (y ∈ {+1, −1})."""
    return jax.nn.softplus(-y * z)


def _scale_bias(logit_scale, logit_bias):
    return jnp.exp(jnp.asarray(logit_scale, jnp.float32)), jnp.asarray(logit_bias, jnp.float32)


def per_sample_label_sets(label_emb: jax.Array, valid: jax.Array | None, dataset_id: jax.Array | None,
                          batch: int) -> tuple[jax.Array, jax.Array]:
    """`[C, D]` (one label set) or `[K, C, D]` + `dataset_id [B]` -> per-sample tables `[B, C, D]`, `valid [B, C]`."""
    label_emb = jnp.asarray(label_emb, jnp.float32)
    if label_emb.ndim == 2:
        label_emb = label_emb[None]
        valid = None if valid is None else jnp.asarray(valid)[None]
        dataset_id = jnp.zeros((batch,), jnp.int32)
    elif label_emb.ndim != 3:
        raise ValueError(f"label embeddings must be [C, D] or [K, C, D], got shape {label_emb.shape}")
    elif dataset_id is None:
        raise ValueError("per-dataset label embeddings [K, C, D] need batch['dataset_id'] (int32 [B])")
    if valid is None:
        valid = jnp.ones(label_emb.shape[:2], bool)
    dataset_id = jnp.asarray(dataset_id, jnp.int32)
    return label_emb[dataset_id], jnp.asarray(valid, bool)[dataset_id]


# ---- global: Kinetics / SSv2 ----
def classification_loss(video: jax.Array, label_emb: jax.Array, labels: jax.Array, logit_scale, logit_bias):
    """video [B, D] (last frame's pooled vector), label_emb [C, D], labels int [B].

    z_bc = s·⟨E_c, n(v_b)⟩ + β; loss = (1/B) Σ_b Σ_c σ-loss(z_bc, y_bc), y = +1 at the label, −1 elsewhere.
    """
    s, b = _scale_bias(logit_scale, logit_bias)
    z = s * (l2_normalize(video) @ jnp.asarray(label_emb, jnp.float32).T) + b  # [B, C]
    y = jnp.where(jax.nn.one_hot(labels, z.shape[-1], dtype=bool), 1.0, -1.0)
    return jnp.sum(sigmoid_loss_terms(z, y)) / z.shape[0], z


# ---- global: retrieval ----
def retrieval_loss(video: jax.Array, text: jax.Array, logit_scale, logit_bias):
    """video [B, D], text [B, D] (caption embedding of each clip), over the *global* batch.

    z_ij = s·⟨n(v_i), n(u_j)⟩ + β, y = +1 on the diagonal only; loss = (1/B) Σ_i Σ_j σ-loss(z_ij, y_ij).

    Equivalence with the original: each of R ranks holds B_l = B/R clips; `SigLipLoss` exchanges the text
    features around a ring so that rank r sees every caption, and returns (1/B_l) Σ_{i ∈ r} Σ_j σ-loss(z_ij, y_ij)
    (its own block with labels 2I − 1, the other ranks' blocks with −1). DDP then averages gradients over the
    ranks, i.e. optimises (1/R) Σ_r (1/B_l) Σ_{i ∈ r} Σ_j = (1/B) Σ_i Σ_j. Under jit/GSPMD the global batch is one
    array, so the all-gather is implicit in the [B, B] logits and this function *is* that average
    (tested against a per-shard block computation). Gradients reach only the video side and s, β (the text
    tower is frozen).
    """
    s, b = _scale_bias(logit_scale, logit_bias)
    z = s * (l2_normalize(video) @ l2_normalize(text).T) + b  # [B, B]
    y = 2.0 * jnp.eye(z.shape[0], dtype=jnp.float32) - 1.0
    return jnp.sum(sigmoid_loss_terms(z, y)) / z.shape[0], z


# ---- temporal: grounding ----
def grounding_loss(frames: jax.Array, caption: jax.Array, labels: jax.Array, logit_scale, logit_bias):
    """frames [B, T, D] (per-frame pooled vectors), caption [B, D] (own caption), labels [B, T] (1 inside a
    ground-truth window, 0 outside; the head maps 0 -> −1).

    z_bt = s·⟨n(v_bt), n(u_b)⟩ + β; loss = (1/B) Σ_b Σ_t σ-loss(z_bt, y_bt).
    """
    s, b = _scale_bias(logit_scale, logit_bias)
    z = s * jnp.einsum("btd,bd->bt", l2_normalize(frames), l2_normalize(caption)) + b
    y = jnp.where(jnp.asarray(labels) > 0.5, 1.0, -1.0)
    return jnp.sum(sigmoid_loss_terms(z, y)) / z.shape[0], z


# ---- temporal: localization ----
def localization_loss(frames: jax.Array, label_emb: jax.Array, labels: jax.Array, logit_scale, logit_bias, *,
                      valid: jax.Array | None = None, dataset_id: jax.Array | None = None):
    """frames [B, T, D], label_emb [C, D] or [K, C, D] (+ valid [K, C], dataset_id [B]), labels int [B, T]
    (class id of the sample's dataset, −1 = background).

    z_btc = s·⟨n(v_bt), E^{ds(b)}_c⟩ + β (E not re-normalised); y = +1 at (t, label_t) for label_t ≥ 0, −1
    everywhere else (background frames are all-negative); loss = mean_b (1/T) Σ_t Σ_{c ∈ ds(b)} σ-loss.
    """
    bsz, t = frames.shape[:2]
    emb, ok = per_sample_label_sets(label_emb, valid, dataset_id, bsz)  # [B, C, D], [B, C]
    s, b = _scale_bias(logit_scale, logit_bias)
    z = s * jnp.einsum("btd,bcd->btc", l2_normalize(frames), emb) + b
    labels = jnp.asarray(labels, jnp.int32)
    pos = (labels[..., None] == jnp.arange(z.shape[-1])) & (labels[..., None] >= 0)
    y = jnp.where(pos, 1.0, -1.0)
    terms = jnp.where(ok[:, None, :], sigmoid_loss_terms(z, y), 0.0)
    return jnp.sum(terms) / (bsz * t), jnp.where(ok[:, None, :], z, _NEG)


# ---- spatial: video instance segmentation ----
def upsample_bilinear(x: jax.Array, height: int, width: int) -> jax.Array:
    """[..., h, w, C] -> [..., height, width, C]; half-pixel bilinear, i.e. torch
    `F.interpolate(mode="bilinear", align_corners=False)` when upsampling (tested against torch)."""
    if x.shape[-3:-1] == (height, width):
        return x
    shape = (*x.shape[:-3], height, width, x.shape[-1])
    return jax.image.resize(x, shape, method="bilinear", antialias=False)


def select_vis_classes(mask: jax.Array, valid: jax.Array, num_classes: int, rng: jax.Array):
    """Per sample: every class present in the mask plus uniformly drawn other classes of its label set,
    `num_classes` in all (the original's `NUM_MAX_CLASSES` rule, seeded by `rng` instead of Python `random`).

    mask int [B, ...] (−1 = ignore), valid bool [B, C] -> (selected class ids [B, K], selected-and-valid [B, K]).
    If more than K classes are present, K of them are kept at random (the others' pixels become ignored).
    """
    bsz, c = valid.shape
    flat = mask.reshape(bsz, -1)
    idx = jnp.where((flat >= 0) & (flat < c), flat, c)
    present = jnp.zeros((bsz, c + 1), jnp.float32).at[jnp.arange(bsz)[:, None], idx].max(1.0)[:, :c]
    score = jnp.where(valid, 2.0 * present + jax.random.uniform(rng, (bsz, c)), -jnp.inf)
    _, selected = jax.lax.top_k(score, num_classes)
    return selected, jnp.take_along_axis(valid, selected, axis=1)


def _vis_tables(label_emb, mask, valid, dataset_id, rng, max_classes, bsz):
    """Per sample: the label tables [B, C', D], their valid classes [B, C'] and the mask remapped to indices into
    them [B, ...] (−1 ignored). Subsampling (more than `max_classes` classes in the padded table) keeps each
    sample's present classes plus random negatives, and re-normalises the embeddings of the samples whose own
    dataset has more than `max_classes` classes (a smaller dataset keeps all its classes: its valid ones are
    always selected)."""
    emb, ok = per_sample_label_sets(label_emb, valid, dataset_id, bsz)  # [B, C, D], [B, C]
    c = emb.shape[1]
    mask = jnp.asarray(mask, jnp.int32)
    target = jnp.where((mask >= 0) & (mask < c), mask, -1)
    in_set = jnp.take_along_axis(ok, jnp.maximum(target, 0).reshape(bsz, -1), axis=1).reshape(target.shape)
    target = jnp.where((target >= 0) & in_set, target, -1)  # ids outside the sample's label set -> ignored
    if c > max_classes:
        if rng is None:
            raise ValueError(f"the VIS label set has {c} > {max_classes} classes: pass an rng key for the "
                             "class subsampling")
        selected, ok_sel = select_vis_classes(target, ok, max_classes, rng)
        emb_sel = jnp.take_along_axis(emb, selected[..., None], axis=1)
        renorm = (jnp.sum(ok, axis=1) > max_classes)[:, None, None]
        emb = jnp.where(renorm, l2_normalize(emb_sel), emb_sel)
        inverse = jnp.full((bsz, c + 1), -1, jnp.int32).at[jnp.arange(bsz)[:, None], selected].set(
            jnp.where(ok_sel, jnp.arange(max_classes, dtype=jnp.int32), -1))
        flat = jnp.where(target >= 0, target, c).reshape(bsz, -1)
        target = jnp.take_along_axis(inverse, flat, axis=1).reshape(target.shape)
        ok = ok_sel
    return emb, ok, target


def _vis_frame_terms(patches_t, emb, ok, target_t, s, b):
    """One frame of every sample: patches [B, h, w, D], target [B, H, W] -> (Σ CE, valid pixels, correct) [B]."""
    height, width = target_t.shape[-2:]
    logits = s * jnp.einsum("bhwd,bkd->bhwk", l2_normalize(patches_t), emb) + b
    logits = upsample_bilinear(logits, height, width)
    logits = jnp.where(ok[:, None, None, :], logits, _NEG)
    pixel_ok = target_t >= 0
    picked = jnp.take_along_axis(logits, jnp.maximum(target_t, 0)[..., None], axis=-1)[..., 0]
    ce = jnp.where(pixel_ok, jax.nn.logsumexp(logits, axis=-1) - picked, 0.0)
    hit = pixel_ok & (jnp.argmax(logits, axis=-1) == target_t)
    flat = lambda x: jnp.sum(x.reshape(x.shape[0], -1).astype(jnp.float32), axis=1)
    return flat(ce), flat(pixel_ok), flat(hit)


def vis_loss_by_frame(patches: jax.Array, label_emb: jax.Array, mask: jax.Array, logit_scale, logit_bias, *,
                      valid: jax.Array | None = None, dataset_id: jax.Array | None = None,
                      rng: jax.Array | None = None, max_classes: int = NUM_MAX_CLASSES):
    """`vis_loss` with bounded memory: the same loss, computed one frame at a time (a `lax.scan` over T whose
    body is rematerialised in the backward pass), so only one frame's logits at the mask resolution are live,
    [B, H, W, C'] instead of [B, T, H, W, C'] (at 224² with 100 classes: 20 MB per sample instead of 321 MB).
    Scanning over frames rather than samples keeps the batch axis sharded over the mesh.

    Returns (loss, accuracy over the valid pixels)."""
    bsz = patches.shape[0]
    emb, ok, target = _vis_tables(label_emb, mask, valid, dataset_id, rng, max_classes, bsz)
    s, b = _scale_bias(logit_scale, logit_bias)

    @jax.checkpoint
    def frame(carry, xs):
        patches_t, target_t = xs
        terms = _vis_frame_terms(patches_t, emb, ok, target_t, s, b)
        return tuple(c + t for c, t in zip(carry, terms)), None

    zeros = jnp.zeros((bsz,), jnp.float32)
    (ce, count, hits), _ = jax.lax.scan(frame, (zeros, zeros, zeros),
                                        (jnp.moveaxis(patches, 1, 0), jnp.moveaxis(target, 1, 0)))
    per_sample = ce / jnp.maximum(count, 1)
    loss = jnp.mean(jnp.where(count > 0, per_sample, 0.0))
    return loss, jnp.sum(hits) / jnp.maximum(jnp.sum(count), 1)


def vis_loss(patches: jax.Array, label_emb: jax.Array, mask: jax.Array, logit_scale, logit_bias, *,
             valid: jax.Array | None = None, dataset_id: jax.Array | None = None, rng: jax.Array | None = None,
             max_classes: int = NUM_MAX_CLASSES, return_target: bool = False):
    """patches [B, T, h, w, D] (dense projection P(x) of the patch tokens), label_emb [C, D] or [K, C, D]
    (+ valid, dataset_id), mask int [B, T, H, W] (category id, −1 = background/ignored; H, W may equal h, w).

    Per patch l = s·⟨n(P(x)), E_c⟩ + β -> bilinear upsample to (H, W) (align_corners=False) -> softmax cross
    entropy per pixel over the sample's classes, ignoring −1; per sample the mean over its valid pixels (0 if
    it has none); loss = mean over samples. Category 0 is a real class (our data marks background −1, fixing
    the original's COCO "person" = background collision). When the label set has more than `max_classes`
    classes, each sample uses its present classes plus random negatives (`max_classes` in all, drawn with
    `rng`), the selected embeddings are re-normalised and the mask is remapped (unselected -> ignored).
    Returns (loss, logits [B, T, H, W, C'] with −1e9 for classes outside the sample's set), plus the target
    indices into the last logits axis (−1 ignored) with `return_target=True`. Materialises every frame's
    logits at the mask resolution: training uses `vis_loss_by_frame`, the same loss in bounded memory.
    """
    bsz = patches.shape[0]
    height, width = mask.shape[-2:]
    emb, ok, target = _vis_tables(label_emb, mask, valid, dataset_id, rng, max_classes, bsz)
    s, b = _scale_bias(logit_scale, logit_bias)
    logits = s * jnp.einsum("bthwd,bkd->bthwk", l2_normalize(patches), emb) + b
    logits = upsample_bilinear(logits, height, width)
    logits = jnp.where(ok[:, None, None, None, :], logits, _NEG)
    pixel_ok = target >= 0
    picked = jnp.take_along_axis(logits, jnp.maximum(target, 0)[..., None], axis=-1)[..., 0]
    ce = jnp.where(pixel_ok, jax.nn.logsumexp(logits, axis=-1) - picked, 0.0)
    count = jnp.sum(pixel_ok.reshape(bsz, -1), axis=1)
    per_sample = jnp.sum(ce.reshape(bsz, -1), axis=1) / jnp.maximum(count, 1)
    loss = jnp.mean(jnp.where(count > 0, per_sample, 0.0))
    return (loss, logits, target) if return_target else (loss, logits)
