"""Initialise a StreamFormer backbone from a Hugging Face SigLIP checkpoint (spec §4,
`tools/initialize_SigLIP_weights.py`).

Two declarative tables drive it:
* `SIGLIP_GLOBAL_RULES` / `SIGLIP_LAYER_RULES` (`key_rules.Rule`, applied by the rule engine): official
  StreamFormer key <- SigLIP vision key(s) (without `vision_model.`) + layout (`copy`; `add_axis` for the
  position table; three keys = [q; k; v] concatenated along rows for the fused qkv);
* `NEW_PARAMS`: the parameters SigLIP lacks, with their initialisation (`normal` = N(0, 0.02²), `ones`,
  `zeros`) and their shape in terms of D (hidden), F (frames), R (LoRA rank).
The result is an official-format state dict, which then goes through the backbone key map
(`keymap.official_to_ours`), so every name and shape is checked once more.

A `SiglipModel` checkpoint also has the text tower and `logit_scale`/`logit_bias`; they are returned as
extras under the pretraining wrapper's names (`EXTRA_RULES`: `text_encoder.text_model.*`, 0-dim scalars).
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Mapping

import numpy as np

from streamformer_jax.convert.keymap import MASK_BUFFER, official_to_ours
from streamformer_jax.convert.pretrain import ConversionError, read_safetensors_dir
from streamformer_jax.key_rules import Rule, expand, to_ours
from streamformer_jax.models.config import StreamFormerConfig

VISION_PREFIX = "vision_model."
INIT_STD = 0.02
# `SiglipVisionConfig` defaults (transformers), for fields a saved config.json leaves out.
SIGLIP_VISION_DEFAULTS = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
    "num_channels": 3, "image_size": 224, "patch_size": 16, "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6, "vision_use_head": True,
}
# Vision keys that may be present and carry nothing (older checkpoints stored this buffer).
IGNORED_SIGLIP = ("embeddings.position_ids",)


INITS = {
    "normal": lambda rng, shape: (rng.standard_normal(shape) * INIT_STD).astype(np.float32),
    "ones": lambda rng, shape: np.ones(shape, np.float32),
    "zeros": lambda rng, shape: np.zeros(shape, np.float32),
}


def _qkv(part: str) -> tuple[str, ...]:
    return tuple(f"encoder.layers.{{l}}.self_attn.{p}_proj.{part}" for p in "qkv")


_HEAD_KEYS = ("probe", "attention.in_proj_weight", "attention.in_proj_bias", "attention.out_proj.weight",
              "attention.out_proj.bias", "layernorm.weight", "layernorm.bias", "mlp.fc1.weight", "mlp.fc1.bias",
              "mlp.fc2.weight", "mlp.fc2.bias")
# Rule(official StreamFormer key, SigLIP vision key(s), layout): both sides are PyTorch layouts.
SIGLIP_GLOBAL_RULES = [
    Rule("embeddings.patch_embeddings.projection.weight", "embeddings.patch_embedding.weight"),
    Rule("embeddings.patch_embeddings.projection.bias", "embeddings.patch_embedding.bias"),
    Rule("embeddings.position_embeddings", "embeddings.position_embedding.weight", "add_axis"),
    Rule("post_layernorm.weight", "post_layernorm.weight"),
    Rule("post_layernorm.bias", "post_layernorm.bias"),
    *[Rule(f"head.{k}", f"head.{k}") for k in _HEAD_KEYS],
]
SIGLIP_LAYER_RULES = [
    Rule("encoder.layer.{l}.attention.attention.qkv.weight", _qkv("weight")),
    Rule("encoder.layer.{l}.attention.attention.qkv.bias", _qkv("bias")),
    Rule("encoder.layer.{l}.attention.output.dense.weight", "encoder.layers.{l}.self_attn.out_proj.weight"),
    Rule("encoder.layer.{l}.attention.output.dense.bias", "encoder.layers.{l}.self_attn.out_proj.bias"),
    Rule("encoder.layer.{l}.layernorm_before.weight", "encoder.layers.{l}.layer_norm1.weight"),
    Rule("encoder.layer.{l}.layernorm_before.bias", "encoder.layers.{l}.layer_norm1.bias"),
    Rule("encoder.layer.{l}.layernorm_after.weight", "encoder.layers.{l}.layer_norm2.weight"),
    Rule("encoder.layer.{l}.layernorm_after.bias", "encoder.layers.{l}.layer_norm2.bias"),
    Rule("encoder.layer.{l}.intermediate.dense.weight", "encoder.layers.{l}.mlp.fc1.weight"),
    Rule("encoder.layer.{l}.intermediate.dense.bias", "encoder.layers.{l}.mlp.fc1.bias"),
    Rule("encoder.layer.{l}.output.dense.weight", "encoder.layers.{l}.mlp.fc2.weight"),
    Rule("encoder.layer.{l}.output.dense.bias", "encoder.layers.{l}.mlp.fc2.bias"),
]


@dataclasses.dataclass(frozen=True)
class NewParam:
    theirs: str
    init: str  # "normal" (N(0, 0.02²)), "ones", "zeros"
    shape: tuple[str, ...]  # symbols: D hidden, 3D, F frames, R LoRA rank, 1
    lora_only: bool = False


NEW_GLOBAL_PARAMS = [NewParam("embeddings.time_embeddings", "normal", ("1", "F", "D"))]
NEW_LAYER_PARAMS = [
    NewParam("encoder.layer.{l}.temporal_attention_gating", "zeros", ()),
    NewParam("encoder.layer.{l}.temporal_layernorm.weight", "ones", ("D",)),
    NewParam("encoder.layer.{l}.temporal_layernorm.bias", "zeros", ("D",)),
    NewParam("encoder.layer.{l}.temporal_attention.attention.qkv.weight", "normal", ("3D", "D")),
    NewParam("encoder.layer.{l}.temporal_attention.attention.qkv.bias", "normal", ("3D",)),
    NewParam("encoder.layer.{l}.temporal_attention.output.dense.weight", "normal", ("D", "D")),
    NewParam("encoder.layer.{l}.temporal_attention.output.dense.bias", "normal", ("D",)),
    NewParam("encoder.layer.{l}.temporal_dense.weight", "normal", ("D", "D")),
    NewParam("encoder.layer.{l}.temporal_dense.bias", "normal", ("D",)),
    # LoRA (only with --lora-rank > 0): A ~ N(0, 0.02²), B = 0, so the spatial path is unchanged (spec §1.7).
    NewParam("encoder.layer.{l}.attention.attention.qkv_lora_a.weight", "normal", ("R", "D"), lora_only=True),
    NewParam("encoder.layer.{l}.attention.attention.qkv_lora_b.weight", "zeros", ("3D", "R"), lora_only=True),
    NewParam("encoder.layer.{l}.attention.output.dense_lora_a.weight", "normal", ("R", "D"), lora_only=True),
    NewParam("encoder.layer.{l}.attention.output.dense_lora_b.weight", "zeros", ("D", "R"), lora_only=True),
]


@dataclasses.dataclass(frozen=True)
class ExtraRule:
    """SiglipModel's non-vision tensors -> the pretraining wrapper's names (prefix rename or exact key)."""
    siglip: str
    theirs: str
    scalar: bool = False  # SiglipModel's [1] logit scale/bias -> the wrapper's 0-dim parameters
    prefix: bool = False


EXTRA_RULES = [
    ExtraRule("text_model.", "text_encoder.text_model.", prefix=True),
    ExtraRule("logit_scale", "logit_scale", scalar=True),
    ExtraRule("logit_bias", "logit_bias", scalar=True),
]


# ---- reading a SigLIP directory ----
def is_siglip_dir(path) -> bool:
    """A Hugging Face SigLIP directory (SiglipModel or SiglipVisionModel config.json)."""
    try:
        return json.loads((pathlib.Path(path) / "config.json").read_text()).get("model_type") in (
            "siglip", "siglip_vision_model")
    except (OSError, json.JSONDecodeError):
        return False


def read_siglip_config(path: pathlib.Path) -> dict:
    try:
        d = json.loads((path / "config.json").read_text())
    except FileNotFoundError:
        raise ConversionError(f"{path}: not a Hugging Face SigLIP directory (no config.json)") from None
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path / 'config.json'}: not valid JSON ({e})") from None
    model_type = d.get("model_type")
    if "vision_config" in d:  # SiglipModel
        d = d["vision_config"] or {}
    elif model_type not in (None, "siglip_vision_model"):
        raise ConversionError(f"{path / 'config.json'}: model_type {model_type!r} is not a SigLIP model "
                              "(expected 'siglip' or 'siglip_vision_model')")
    return {**SIGLIP_VISION_DEFAULTS, **{k: v for k, v in d.items() if k in SIGLIP_VISION_DEFAULTS}}


def siglip_config(vision: Mapping, num_frames: int, lora_rank: int) -> StreamFormerConfig:
    try:
        return StreamFormerConfig(
            hidden_size=vision["hidden_size"], num_layers=vision["num_hidden_layers"],
            num_heads=vision["num_attention_heads"], mlp_size=vision["intermediate_size"],
            image_size=vision["image_size"], patch_size=vision["patch_size"], num_frames=num_frames,
            num_channels=vision["num_channels"], lora_rank=lora_rank, causal_temporal=True,
            layer_norm_eps=vision["layer_norm_eps"], gelu_approximate=False)
    except (ValueError, TypeError) as e:
        raise ConversionError(f"invalid StreamFormer config from the SigLIP config: {e}") from None


def _dims(config: StreamFormerConfig) -> dict[str, int]:
    d = config.hidden_size
    return {"D": d, "3D": 3 * d, "F": config.num_frames, "R": config.lora_rank, "1": 1}


def siglip_to_official(vision_state: Mapping[str, np.ndarray], config: StreamFormerConfig, seed: int
                       ) -> dict[str, np.ndarray]:
    """SigLIP vision tensors (no prefix) -> the official StreamFormer backbone state dict (incl. mask buffers).

    Strict: every SigLIP vision tensor must be used, and every source key must exist."""
    rules = [*SIGLIP_GLOBAL_RULES, *expand(SIGLIP_LAYER_RULES, config.num_layers)]
    state = to_ours(vision_state, rules, None, "the SigLIP vision tower does not match its config.json",
                    ignored=IGNORED_SIGLIP, error=ConversionError)
    rng = np.random.default_rng(seed)
    dims = _dims(config)
    new = [*NEW_GLOBAL_PARAMS, *[dataclasses.replace(p, theirs=p.theirs.format(l=l))
                                 for l in range(config.num_layers) for p in NEW_LAYER_PARAMS]]
    for p in new:
        if p.lora_only and not config.lora_rank:
            continue
        shape = tuple(dims[s] for s in p.shape)
        state[p.theirs] = INITS[p.init](rng, shape)
    tril = np.tril(np.ones((config.num_frames, config.num_frames), np.float32))
    state.update({MASK_BUFFER.format(l=l): tril.copy() for l in range(config.num_layers)})
    return state


def siglip_extras(other: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """SiglipModel's text tower and logit scale/bias under the wrapper's names; strict about the rest."""
    out, unknown = {}, []
    for key, value in other.items():
        rule = next((r for r in EXTRA_RULES if (key.startswith(r.siglip) if r.prefix else key == r.siglip)), None)
        if rule is None:
            unknown.append(key)
            continue
        name = rule.theirs + key[len(rule.siglip):] if rule.prefix else rule.theirs
        out[name] = np.asarray(value).reshape(()) if rule.scalar else np.asarray(value)
    if unknown:
        raise ConversionError(f"unexpected tensors outside the SigLIP vision/text towers ({len(unknown)}): "
                              + ", ".join(sorted(unknown)[:20]))
    return out


def import_siglip(path, num_frames: int = 16, lora_rank: int = 0, seed: int = 0, zero_time_embeddings: bool = False
                  ) -> tuple[StreamFormerConfig, dict[str, np.ndarray], dict[str, np.ndarray], list[str]]:
    """SigLIP HF directory -> (config, our flat params, wrapper extras (text tower; may be empty), notes)."""
    path = pathlib.Path(path)
    if not path.is_dir():
        raise ConversionError(f"{path}: no such directory")
    vision = read_siglip_config(path)
    notes = []
    if not vision["vision_use_head"]:
        raise ConversionError(f"{path}: the SigLIP vision tower has no MAP head (vision_use_head=false); "
                              "StreamFormer needs one")
    if vision["hidden_act"] != "gelu":
        notes.append(f"SigLIP uses hidden_act={vision['hidden_act']!r}; StreamFormer runs exact erf GELU (as the "
                     "official initialisation does), so per-frame outputs differ slightly from SigLIP's")
    config = siglip_config(vision, num_frames, lora_rank)
    state = read_safetensors_dir(path)
    vision_state = {k[len(VISION_PREFIX):]: v for k, v in state.items() if k.startswith(VISION_PREFIX)}
    if not vision_state:
        raise ConversionError(f"{path}: no '{VISION_PREFIX}*' tensors (is this a SigLIP checkpoint?)")
    dtypes = sorted({str(v.dtype) for v in vision_state.values()} - {"float32"})
    if dtypes:
        notes.append(f"SigLIP weights in {', '.join(dtypes)} were cast to float32")
    official = siglip_to_official(vision_state, config, seed)
    if zero_time_embeddings:
        official["embeddings.time_embeddings"] = np.zeros_like(official["embeddings.time_embeddings"])
        notes.append("time embeddings set to 0: with gate 0 the model reproduces SigLIP frame by frame (up to GELU)")
    params = official_to_ours(official, config, source=f"{path} (SigLIP)")
    extras = siglip_extras({k: v for k, v in state.items() if not k.startswith(VISION_PREFIX)})
    return config, params, extras, notes
