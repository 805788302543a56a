"""RandAugment for video clips (spec §6.3: timm's `rand-m7-n4-mstd0.5-inc1`, the video variant).

N ops are drawn uniformly with replacement from the "increasing" list; each is applied with probability p,
at magnitude ~ N(m, mstd) clipped to [0, 10], with a random sign where the op has one. As in the original's
video variant, one draw is shared by every frame of the clip. Written from the spec with Pillow ops (a one-off
comparison with timm 1.0.31 gave pixel-identical results per op for equal arguments); the random draws come
from the numpy Generator grain hands the transform, so results are reproducible.
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

INCREASING_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd",
    "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY",
    "TranslateXRel", "TranslateYRel",
)
MAX_LEVEL = 10.0
ORIGINAL_VIDEO_SPEC = "rand-m7-n4-mstd0.5-inc1"  # the original's Kinetics / SSv2 setting (spec §6.3)


@dataclasses.dataclass(frozen=True)
class RandAugmentSpec:
    num_ops: int = 4
    magnitude: float = 7.0
    magnitude_std: float = 0.5
    prob: float = 0.5
    fill: tuple[int, int, int] = (128, 128, 128)
    interpolation: str = "bicubic"  # Geometric ops; the original trained with bicubic (~3x bilinear's cost).

    @classmethod
    def parse(cls, text: str, interpolation: str = "bicubic") -> "RandAugmentSpec":
        """timm-style string, e.g. "rand-m7-n4-mstd0.5-inc1" (only the increasing op set is supported)."""
        parts = text.split("-")
        if parts[0] != "rand":
            raise ValueError(f"not a RandAugment spec: {text!r}")
        kw = {}
        for part in parts[1:]:
            key, value = re.match(r"([a-z]+)([\d.]+)", part).groups()
            if key == "m":
                kw["magnitude"] = float(value)
            elif key == "n":
                kw["num_ops"] = int(value)
            elif key == "mstd":
                kw["magnitude_std"] = float(value)
            elif key == "p":
                kw["prob"] = float(value)
            elif key == "inc":
                if value != "1":
                    raise ValueError("only the increasing op set (inc1) is implemented")
            else:
                raise ValueError(f"unsupported RandAugment option {part!r} in {text!r}")
        return cls(interpolation=interpolation, **kw)


def _signed(value: float, rng: np.random.Generator) -> float:
    return -value if rng.random() > 0.5 else value


def _argument(name: str, level: float, rng: np.random.Generator):
    """The op's parameter at `level` in [0, 10] (timm's level-to-argument rules)."""
    f = level / MAX_LEVEL
    if name == "Rotate":
        return _signed(30.0 * f, rng)
    if name == "PosterizeIncreasing":
        return 4 - int(4 * f)  # Bits kept: 4 down to 0.
    if name == "SolarizeIncreasing":
        return 256 - int(256 * f)  # Threshold: 256 (no-op) down to 0.
    if name == "SolarizeAdd":
        return int(110 * f)
    if name.endswith("Increasing"):  # Color / Contrast / Brightness / Sharpness enhancement factor.
        return 1.0 + _signed(0.9 * f, rng)
    if name in ("ShearX", "ShearY"):
        return _signed(0.3 * f, rng)
    if name in ("TranslateXRel", "TranslateYRel"):
        return _signed(0.45 * f, rng)
    return None


def sample_ops(spec: RandAugmentSpec, rng: np.random.Generator) -> list[tuple[str, object]]:
    """The ops (name, argument) to apply to one clip; skipped draws (probability 1 - p) are left out."""
    ops = []
    for name in rng.choice(INCREASING_OPS, size=spec.num_ops, replace=True):
        if spec.prob < 1.0 and rng.random() > spec.prob:
            continue
        level = spec.magnitude
        if spec.magnitude_std > 0:
            level = rng.normal(spec.magnitude, spec.magnitude_std)
        level = float(np.clip(level, 0.0, MAX_LEVEL))
        ops.append((str(name), _argument(str(name), level, rng)))
    return ops


_RESAMPLE = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


def _apply(img: Image.Image, name: str, arg, fill, resample) -> Image.Image:
    if name == "AutoContrast":
        return ImageOps.autocontrast(img)
    if name == "Equalize":
        return ImageOps.equalize(img)
    if name == "Invert":
        return ImageOps.invert(img)
    if name == "Rotate":
        return img.rotate(arg, resample=resample, fillcolor=fill)
    if name == "PosterizeIncreasing":
        return img if arg >= 8 else ImageOps.posterize(img, max(arg, 0))
    if name == "SolarizeIncreasing":
        return ImageOps.solarize(img, arg)
    if name == "SolarizeAdd":
        lut = [min(255, i + arg) if i < 128 else i for i in range(256)]
        return img.point(lut * 3)
    if name == "ColorIncreasing":
        return ImageEnhance.Color(img).enhance(arg)
    if name == "ContrastIncreasing":
        return ImageEnhance.Contrast(img).enhance(arg)
    if name == "BrightnessIncreasing":
        return ImageEnhance.Brightness(img).enhance(arg)
    if name == "SharpnessIncreasing":
        return ImageEnhance.Sharpness(img).enhance(arg)
    w, h = img.size
    matrix = {
        "ShearX": (1, arg, 0, 0, 1, 0),
        "ShearY": (1, 0, 0, arg, 1, 0),
        "TranslateXRel": (1, 0, arg * w, 0, 1, 0),
        "TranslateYRel": (1, 0, 0, 0, 1, arg * h),
    }[name]
    return img.transform(img.size, Image.AFFINE, matrix, resample=resample, fillcolor=fill)


def apply_ops(clip: np.ndarray, ops: list[tuple[str, object]], spec: RandAugmentSpec = RandAugmentSpec()) -> np.ndarray:
    """Apply the same ops to every frame of uint8 [T, H, W, 3]."""
    if not ops:
        return clip
    resample = _RESAMPLE[spec.interpolation]
    frames = []
    for frame in clip:
        img = Image.fromarray(frame)
        for name, arg in ops:
            img = _apply(img, name, arg, tuple(spec.fill), resample)
        frames.append(np.asarray(img))
    return np.stack(frames)
