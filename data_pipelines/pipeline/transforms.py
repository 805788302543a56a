"""Per-task record -> training example transforms (decode, sample frames, build targets, augment).

Each transform is a `grain.transforms.RandomMap`: grain hands it a `np.random.Generator` derived from
(seed, element index), so an example depends only on its position in the stream, never on which worker
process produced it. Outputs have fixed shapes per task so that batches never trigger recompilation:

  every task   video uint8 [T, S, S, 3], frame_index int32 [T], timestamps float32 [T], video_id, dataset (str)
  kinetics     label int32 []                    ssv2   label int32 []
  retrieval    caption str
  grounding    caption str, label float32 [T] (1 inside the caption's window(s)), duration float32 []
  localization label int32 [T] (class id, -1 = background), duration float32 []
  vis          mask int32 [T, S/p, S/p] (category id per patch, -1 = background / ignored); a COCO image
               (one-frame record) becomes a pseudo-video of T independently rotated copies in training

Unlike the original loaders, a broken record raises instead of being silently replaced by a random other one.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import grain
import numpy as np

from data_pipelines.pipeline import augment, randaugment, sampling, targets
from data_pipelines.records import schema
from data_pipelines.records.frames import JpegDecoder
from streamformer_jax.tasks import registry


@dataclasses.dataclass(frozen=True)
class ClipOptions:
    """Sampling/augmentation settings of one task (see configs/data_pretrain.py for the defaults used)."""

    num_frames: int = 16
    size: int = 224
    train: bool = True
    flip: bool = True  # Random whole-clip horizontal flip (p = 0.5) in training.
    crop: str = "short_side"  # "rrc" (random resized crop, §6.3) or "short_side" (resize + random crop).
    rrc_scale: tuple[float, float] = (0.08, 1.0)
    rrc_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    scale_jitter: tuple[float, float] = (1.0, 1.0)  # Short-side scale factor range for "short_side" crops.
    clip_seconds: float = 16.0  # Grounding's fixfps window length, in seconds (§6.5).
    max_seconds: float = 0.0  # Retrieval: sample only the first max_seconds (DiDeMo's 30 s); 0 = whole video.
    patch_size: int = 16  # VIS targets are emitted at patch resolution (S / patch_size per side).
    randaugment: str = ""  # timm-style spec, e.g. "rand-m7-n4-mstd0.5-inc1" (§6.3); "" = off.
    randaugment_interpolation: str = "bicubic"
    # VIS records of COCO images (dataset "COCO..."): in training each of the T copies of the image is rotated
    # by its own angle ~ U(-a, a) degrees (§6.7); 0 = no rotation (plain repeats).
    pseudo_video_max_angle: float = 15.0


class ClipTransform(grain.transforms.RandomMap):
    """Shared machinery: record bytes -> decoded dict -> sampled, cropped, flipped clip + task targets."""

    def __init__(self, options: ClipOptions, task: str):
        self.options, self.task = options, task
        self._decoder = JpegDecoder()
        self._randaugment = (
            randaugment.RandAugmentSpec.parse(options.randaugment, options.randaugment_interpolation)
            if options.randaugment else None
        )

    # -- per-task hooks. `ex` is this call's freshly decoded record, so hooks may leave notes in it.
    def sample(self, ex: dict, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def add_targets(self, ex: dict, idx: np.ndarray, out: dict, rng: np.random.Generator) -> None:
        pass

    def crop_box(self, ex: dict, idx: np.ndarray, rng: np.random.Generator) -> augment.Box:
        o = self.options
        h, w = int(ex["height"]), int(ex["width"])
        if o.train and o.crop == "rrc":
            return augment.random_resized_crop_box(h, w, rng, o.rrc_scale, o.rrc_ratio)
        return augment.short_side_crop_box(h, w, rng, o.train, o.scale_jitter)

    def add_spatial_targets(self, ex: dict, out: dict, box: augment.Box, flip: bool) -> None:
        pass

    def clip(self, ex: dict, idx: np.ndarray, box: augment.Box) -> np.ndarray:
        """uint8 [T, S, S, 3]: the sampled frames, cropped to `box` and resized."""
        uniq, inverse = np.unique(idx, return_inverse=True)  # Short videos repeat frames: decode each once.
        return self._decoder.decode_clip([ex["frames"][int(i)] for i in uniq], box, self.options.size)[inverse]

    # -- the transform
    def random_map(self, element: bytes, rng: np.random.Generator) -> dict[str, Any]:
        ex = schema.decode_record(element) if isinstance(element, (bytes, bytearray)) else dict(element)
        if ex["task"] != self.task:
            raise ValueError(f"{type(self).__name__} got a {ex['task']!r} record ({ex['video_id']!r})")
        o = self.options
        idx = self.sample(ex, rng)
        out = {
            "video_id": ex["video_id"],
            "dataset": ex.get("dataset", ""),
            "frame_index": idx.astype(np.int32),
            "timestamps": np.asarray(ex["frame_times"], np.float64)[idx].astype(np.float32),
        }
        self.add_targets(ex, idx, out, rng)
        box = self.crop_box(ex, idx, rng)
        video = self.clip(ex, idx, box)
        if o.train and self._randaugment is not None:
            # Applied to the resized crop (the original augments full frames, then crops): ~3x cheaper.
            video = randaugment.apply_ops(video, randaugment.sample_ops(self._randaugment, rng), self._randaugment)
        flip = o.flip and o.train and bool(rng.random() < 0.5)
        out["video"] = augment.maybe_flip(video, flip)
        self.add_spatial_targets(ex, out, box, flip)
        return out


class KineticsTransform(ClipTransform):
    """A clip label (Kinetics-style): sparse segment sampling, flips allowed."""

    def sample(self, ex, rng):
        return sampling.sparse_segment_indices(len(ex["frames"]), self.options.num_frames, rng, self.options.train)

    def add_targets(self, ex, idx, out, rng):
        out["label"] = np.int32(ex["label"])


class SSv2Transform(KineticsTransform):
    """Something-Something v2: labels are direction-sensitive ("pushing left to right"), so never flipped."""

    def __init__(self, options: ClipOptions, task: str):
        super().__init__(dataclasses.replace(options, flip=False), task)

    def sample(self, ex, rng):
        return sampling.strided_segment_indices(len(ex["frames"]), self.options.num_frames, rng, self.options.train)


class RetrievalTransform(ClipTransform):
    def sample(self, ex, rng):
        n = len(ex["frames"])
        if self.options.max_seconds > 0:  # Trim to the first max_seconds (DiDeMo paragraphs, §6.4).
            times = np.asarray(ex["frame_times"], np.float64)
            n = max(1, int(np.searchsorted(times, times[0] + self.options.max_seconds, side="left")))
        return sampling.interval_indices(n, self.options.num_frames, rng, self.options.train)

    def add_targets(self, ex, idx, out, rng):
        out["caption"] = targets.select_caption(ex["captions"], rng, self.options.train)


class GroundingTransform(ClipTransform):
    def sample(self, ex, rng):
        # The caption decides the window, so it is drawn first and remembered for add_targets.
        captions = ex["captions"]
        c = int(rng.integers(len(captions))) if self.options.train else 0
        ex["_caption_index"] = c
        start, end = np.asarray(ex["windows"], np.float64).reshape(-1, 2)[c]
        duration = float(ex.get("duration") or ex["frame_times"][-1])
        window = sampling.fixfps_window(start, end, duration, self.options.clip_seconds)
        return sampling.fixfps_indices(ex["frame_times"], window, self.options.num_frames, rng, self.options.train)

    def add_targets(self, ex, idx, out, rng):
        c = ex["_caption_index"]
        windows = np.asarray(ex["windows"], np.float32).reshape(-1, 2)[c : c + 1]
        rel = np.asarray(ex.get("relevant_windows", np.zeros((0, 2))), np.float32).reshape(-1, 2)
        owner = np.asarray(ex.get("relevant_window_caption", np.zeros((0,))), np.int64)
        if np.count_nonzero(owner == c) > 1:  # Several relevant windows: positive inside any of them (§6.5).
            windows = rel[owner == c]
        out["caption"] = ex["captions"][c]
        out["label"] = targets.window_membership(out["timestamps"], windows)
        out["duration"] = np.float32(ex.get("duration", 0.0))


class LocalizationTransform(ClipTransform):
    def sample(self, ex, rng):
        return sampling.sparse_segment_indices(len(ex["frames"]), self.options.num_frames, rng, self.options.train)

    def add_targets(self, ex, idx, out, rng):
        out["label"] = targets.frame_segment_labels(out["timestamps"], ex["segments"], ex["segment_labels"])
        out["duration"] = np.float32(ex.get("duration", 0.0))


class VISTransform(ClipTransform):
    def sample(self, ex, rng):
        return sampling.strided_segment_indices(len(ex["frames"]), self.options.num_frames, rng, self.options.train)

    def crop_box(self, ex, idx, rng):
        ex["_masks"] = _selected_masks(ex, idx)  # bool [I, T, H, W]; only the sampled frames are decoded.
        o = self.options
        if not o.train:
            return super().crop_box(ex, idx, rng)
        if o.pseudo_video_max_angle > 0 and augment.is_pseudo_video(ex.get("dataset", "")):
            # COCO pseudo-video (§6.7): the still image repeated T times, every copy turned by its own random
            # rotation, frames and masks together, before the mask-aware crop (which then sees rotated masks).
            uniq, inverse = np.unique(idx, return_inverse=True)
            full = np.stack([self._decoder.decode(ex["frames"][int(i)]) for i in uniq])[inverse]
            ex["_frames"], ex["_masks"] = augment.rotate_pseudo_video(full, ex["_masks"], rng,
                                                                      o.pseudo_video_max_angle)
        # PairMaskCrop (§6.7): keep the objects in view when possible.
        focus = augment.mask_bbox(ex["_masks"])
        return augment.short_side_crop_box(int(ex["height"]), int(ex["width"]), rng, True, o.scale_jitter, focus)

    def clip(self, ex, idx, box):
        if "_frames" not in ex:
            return super().clip(ex, idx, box)
        return np.stack([self._decoder.crop_resize(f, box, self.options.size) for f in ex["_frames"]])

    def add_spatial_targets(self, ex, out, box, flip):
        rows, cols = augment.nearest_grid(box, self.options.size, self.options.patch_size)
        masks = ex["_masks"][:, :, rows][:, :, :, cols]
        out["mask"] = augment.flip_mask(targets.category_map(masks, ex["categories"]), flip)


def _selected_masks(ex: dict, idx: np.ndarray) -> np.ndarray:
    """bool [I, T, H, W] for the sampled frames only (schema.decode_masks would decode every frame)."""
    n, h, w = len(ex["frames"]), int(ex["height"]), int(ex["width"])
    lengths = np.asarray(ex["mask_rle_lengths"], np.int64)
    counts = np.asarray(ex["mask_rle_counts"], np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    n_inst = len(ex["categories"])
    out = np.zeros((n_inst, len(idx), h, w), bool)
    for i in range(n_inst):
        for t, f in enumerate(idx):
            j = i * n + int(f)
            if lengths[j]:
                out[i, t] = schema.rle_decode(counts[starts[j] : starts[j + 1]], h, w).astype(bool)
    return out


def make_transform(task: str, options: ClipOptions) -> ClipTransform:
    """The registered task's transform with these options."""
    return registry.get(task).transform(options, task=task)
