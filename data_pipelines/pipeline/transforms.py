"""Per-task record -> training example transforms (decode, sample frames, build targets, augment).

Each transform is a `grain.transforms.RandomMap`: grain hands it a `np.random.Generator` derived from
(seed, element index), so an example depends only on its position in the stream, never on which worker
process produced it. An element is a record, or `(record, row)` for one sample (annotation row) of a record
(`pipeline.samples`). Outputs have fixed shapes per task so that batches never trigger recompilation:

  every task   video uint8 [T, S, S, 3], frame_index int32 [T], timestamps float32 [T] (the original's
               round(t, 2)), row int32 [] (the sample's annotation row in its record), video_id, dataset (str);
               dataset_id int32 [] for tasks with per-dataset label tables (`ClipOptions.datasets`)
  kinetics     label int32 []                    ssv2   label int32 []
  retrieval    caption str (drawn from the row's captions)
  grounding    caption str (the row's query), label float32 [T] (1 inside the row's window(s)), duration float32 []
  localization label int32 [T] (the row's class id inside its windows, -1 elsewhere), duration float32 []
  vis          mask int32 [T, S, S] (category value per pixel, -1 = background / ignored; [T, S/p, S/p] with
               `mask_resolution="patch"`); a COCO image (one-frame record) becomes a pseudo-video of T
               independently rotated copies in training

Frame sampling follows the original loaders on the stored frames (`pipeline.sampling`): exactly theirs when a
record keeps every frame of the source video (the converter's default), on the stored frame grid otherwise.

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
    patch_size: int = 16  # VIS targets at patch resolution (`mask_resolution="patch"`): S / patch_size per side.
    # VIS targets: "input" (S x S, the original's loss on logits upsampled to the input) or "patch".
    mask_resolution: str = "input"
    # Per-dataset label tables (localization, VIS): the table order, so that `dataset_id` indexes it.
    datasets: tuple[str, ...] = ()
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

    def dataset_id(self, dataset: str) -> int:
        try:
            return self.options.datasets.index(dataset)
        except ValueError:
            raise ValueError(f"{self.task} record of dataset {dataset!r} has no label table "
                             f"(tables: {list(self.options.datasets)})") from None

    def clip(self, ex: dict, idx: np.ndarray, box: augment.Box) -> np.ndarray:
        """uint8 [T, S, S, 3]: the sampled frames, cropped to `box` and resized."""
        uniq, inverse = np.unique(idx, return_inverse=True)  # Short videos repeat frames: decode each once.
        return self._decoder.decode_clip([ex["frames"][int(i)] for i in uniq], box, self.options.size)[inverse]

    # -- the transform
    def random_map(self, element, rng: np.random.Generator) -> dict[str, Any]:
        row = 0
        if isinstance(element, tuple):  # (record, row): one sample of a multi-row record
            element, row = element
        ex = schema.decode_record(element) if isinstance(element, (bytes, bytearray)) else dict(element)
        if ex["task"] != self.task:
            raise ValueError(f"{type(self).__name__} got a {ex['task']!r} record ({ex['video_id']!r})")
        ex["_row"] = int(row)
        o = self.options
        idx = self.sample(ex, rng)
        out = {
            "video_id": ex["video_id"],
            "dataset": ex.get("dataset", ""),
            "row": np.int32(row),
            "frame_index": idx.astype(np.int32),
            # The original labels frames by round(idx / fps, 2) (Python's round), and so do the targets here.
            "timestamps": sampling.rounded_times(np.asarray(ex["frame_times"], np.float64)[idx]).astype(np.float32),
        }
        if o.datasets:
            out["dataset_id"] = np.int32(self.dataset_id(out["dataset"]))
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
        # The original SSv2 loader takes frame 0 T times from a video shorter than T frames.
        return sampling.strided_segment_indices(len(ex["frames"]), self.options.num_frames, rng, self.options.train,
                                                short=sampling.ZEROS_SHORT)


def _row(ex: dict, count: int) -> int:
    row = ex["_row"]
    if not 0 <= row < count:
        raise ValueError(f"{ex['video_id']!r}: sample row {row} out of range (the record has {count} rows)")
    return row


class RetrievalTransform(ClipTransform):
    def sample(self, ex, rng):
        n, fps = len(ex["frames"]), float(ex["fps"])
        trim = float(ex.get("trim_seconds") or 0.0)
        if trim > 0 and n / fps > trim:  # the original's trimmed30s (DiDeMo): vlen = int(30 * fps)
            n = max(1, min(n, int(trim * fps)))
        return sampling.interval_indices(n, self.options.num_frames, rng, self.options.train)

    def add_targets(self, ex, idx, out, rng):
        captions = list(ex["captions"])
        rows = np.asarray(ex.get("caption_row", ()), np.int64)
        if rows.size:  # the sample's row: one of its captions (the original's random.choice over the row's list)
            row = _row(ex, int(rows.max()) + 1)
            captions = [c for c, r in zip(captions, rows) if r == row]
        out["caption"] = targets.select_caption(captions, rng, self.options.train)


class GroundingTransform(ClipTransform):
    """One query (annotation row) per sample: its window decides which frames are sampled (§6.5)."""

    def sample(self, ex, rng):
        c = _row(ex, len(ex["captions"]))
        start, end = np.asarray(ex["windows"], np.float64).reshape(-1, 2)[c]
        n, fps = len(ex["frames"]), float(ex["fps"])
        window = sampling.fixfps_window(start, end, n / fps, self.options.clip_seconds)  # duration from the video
        return sampling.fixfps_indices(n, fps, window, self.options.num_frames, rng, self.options.train)

    def add_targets(self, ex, idx, out, rng):
        c = ex["_row"]
        windows = targets.row_windows(ex["windows"], ex.get("relevant_windows", np.zeros((0, 2))),
                                      ex.get("relevant_window_caption", ()), c)
        out["caption"] = ex["captions"][c]
        out["label"] = targets.window_membership(out["timestamps"], windows)
        out["duration"] = np.float32(ex.get("duration", 0.0))


class LocalizationTransform(ClipTransform):
    """One (video, class) annotation row per sample: the row's class inside its windows, -1 elsewhere (§6.6)."""

    def sample(self, ex, rng):
        _row(ex, len(ex["segment_labels"]))
        return sampling.sparse_segment_indices(len(ex["frames"]), self.options.num_frames, rng, self.options.train)

    def add_targets(self, ex, idx, out, rng):
        row = ex["_row"]
        windows = targets.row_windows(ex["segments"], ex.get("relevant_windows", np.zeros((0, 2))),
                                      ex.get("relevant_window_caption", ()), row)
        out["label"] = targets.row_class_labels(out["timestamps"], windows, int(ex["segment_labels"][row]))
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
        o = self.options
        if o.mask_resolution not in ("input", "patch"):
            raise ValueError(f"mask_resolution must be 'input' or 'patch', got {o.mask_resolution!r}")
        # Nearest-neighbour resize of the masks into the crop, at every output pixel (the original's
        # PairResize/PairMaskCrop) or at the patch centres.
        rows, cols = augment.nearest_grid(box, o.size, 1 if o.mask_resolution == "input" else o.patch_size)
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
