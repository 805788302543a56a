"""Model configuration: one frozen dataclass, with presets and the official `config.json` mapping."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax.numpy as jnp

# Fields of the official `StreamformerConfig` that describe the architecture, with our names.
_HF_FIELDS = {
    "hidden_size": "hidden_size",
    "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_heads",
    "intermediate_size": "mlp_size",
    "image_size": "image_size",
    "patch_size": "patch_size",
    "num_frames": "num_frames",
    "num_channels": "num_channels",
    "layer_norm_eps": "layer_norm_eps",
    "qkv_bias": "qkv_bias",
    "enable_causal_temporal": "causal_temporal",
}
# The official code hard-codes LoRA rank 32 (`add_lora_spatial()`); its config only has an on/off flag.
OFFICIAL_LORA_RANK = 32


class ArchitectureConfig:
    """What the frozen dataclass configs of our transformers (backbone, text tower) share: `replace`, `to_dict`,
    `from_dict` (unknown fields are an error), and heads that split `hidden_size` evenly (`num_heads`)."""

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def check_heads(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by {self.num_heads} heads")

    def replace(self, **kwargs):
        return dataclasses.replace(self, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class StreamFormerConfig(ArchitectureConfig):
    """Architecture and numerics of the StreamFormer backbone (TimeSformer-style SigLIP ViT).

    `lora_rank=0` means no spatial LoRA. `dtype` is the compute dtype of matmuls; parameters are always
    float32 and LayerNorm/softmax always run in float32.
    """

    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_size: int = 3072
    image_size: int = 224
    patch_size: int = 16
    num_frames: int = 16
    num_channels: int = 3
    lora_rank: int = OFFICIAL_LORA_RANK
    causal_temporal: bool = True
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    gelu_approximate: bool = False  # the official backbone uses exact (erf) GELU, unlike SigLIP
    dtype: str = "float32"

    def __post_init__(self):
        self.check_heads()
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
        for name in ("hidden_size", "num_layers", "num_heads", "mlp_size", "image_size", "patch_size",
                     "num_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def grid_size(self) -> int:
        """Side of the square patch grid the position embeddings were trained for."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    # ---- the official (Hugging Face) config.json ----
    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> "StreamFormerConfig":
        if d.get("attention_type", "divided_space_time") != "divided_space_time":
            raise ValueError(f"only attention_type='divided_space_time' is supported, got {d['attention_type']!r}")
        act = d.get("hidden_act", "gelu")
        if act not in ("gelu", "gelu_pytorch_tanh"):
            raise ValueError(f"unsupported hidden_act {act!r}")
        kwargs = {ours: d[theirs] for theirs, ours in _HF_FIELDS.items() if theirs in d}
        kwargs["lora_rank"] = OFFICIAL_LORA_RANK if d.get("add_lora_spatial", False) else 0
        kwargs["gelu_approximate"] = act == "gelu_pytorch_tanh"
        return cls(**kwargs)

    def to_hf_dict(self) -> dict[str, Any]:
        if self.lora_rank not in (0, OFFICIAL_LORA_RANK):
            raise ValueError(
                f"the official class only supports LoRA rank {OFFICIAL_LORA_RANK} (or none); got {self.lora_rank}")
        d = {theirs: getattr(self, ours) for theirs, ours in _HF_FIELDS.items()}
        d.update(
            add_lora_spatial=self.lora_rank > 0,
            architectures=["TimesformerMultiTaskingModelSigLIP"],
            attention_probs_dropout_prob=0.0,
            attention_type="divided_space_time",
            clip_config=None,
            drop_path_rate=0,
            hidden_act="gelu_pytorch_tanh" if self.gelu_approximate else "gelu",
            hidden_dropout_prob=0.0,
            initializer_range=0.02,
            model_type="timesformer",
            torch_dtype="float32",
        )
        return dict(sorted(d.items()))

    @classmethod
    def from_hf_json(cls, path: str | os.PathLike) -> "StreamFormerConfig":
        with open(path) as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not valid JSON ({e})") from None
        return cls.from_hf_dict(d)


# ---- presets ----
def vit_b16(**overrides) -> StreamFormerConfig:
    """The released `StreamFormer/streamformer-timesformer` configuration (ViT-B/16, 16 frames, 224²)."""
    return StreamFormerConfig(**overrides)


def tiny(**overrides) -> StreamFormerConfig:
    """The `tiny` official-reference fixture configuration (64 wide, 2 layers, 32 px, 4 frames)."""
    base = dict(hidden_size=64, num_layers=2, num_heads=4, mlp_size=128, image_size=32, patch_size=16,
                num_frames=4)
    return StreamFormerConfig(**{**base, **overrides})


def small(**overrides) -> StreamFormerConfig:
    """The `small` official-reference fixture configuration (192 wide, 4 layers, 112 px, 8 frames)."""
    base = dict(hidden_size=192, num_layers=4, num_heads=3, mlp_size=768, image_size=112, patch_size=16,
                num_frames=8)
    return StreamFormerConfig(**{**base, **overrides})


PRESETS = {"vit_b16": vit_b16, "tiny": tiny, "small": small}


def get_preset(name: str, **overrides) -> StreamFormerConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name](**overrides)
