"""The SigLIP text tower (transformers `SiglipTextModel`) in Flax NNX, frozen, plus its checkpoint loaders.

Semantics (transformers 4.52 `SiglipTextTransformer`, called with `input_ids` only, as StreamFormer does):
token embedding + absolute position embedding (positions 0..L-1) -> L pre-LN encoder layers
(x += attn(LN1(x)); x += MLP(LN2(x)); bidirectional attention, no attention mask, MLP activation
`hidden_act`, `gelu_pytorch_tanh` = tanh-approximate GELU for SigLIP) -> final LayerNorm ->
`pooler_output = head(last_hidden_state[:, -1])` (the last position, an eos/pad token).

Loaders (one declarative key table, `text_rules`, our name <- HF name + layout, applied by `key_rules`):
* a Hugging Face directory saved by `SiglipModel` / `SiglipTextModel.save_pretrained` (`config.json` +
  `model.safetensors`, keys `text_model.*`);
* the pretraining extras of our checkpoints (`pretrain_extras.safetensors`, keys `text_encoder.text_model.*`,
  written by `convert import-siglip` / `import-pytorch`), where the config is inferred from the shapes.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import load_file

from streamformer_jax.convert.pretrain import read_safetensors_dir
from streamformer_jax.key_rules import Rule, expand, layer_norm, linear, to_ours, to_theirs
from streamformer_jax.models.config import ArchitectureConfig
from streamformer_jax.models.layers import (MLP, Dense, HostRngs, LayerNorm, abstract_module, init_module,
                                            normal_init, param)
from streamformer_jax.param_tree import module_from_flat, shapes

HF_PREFIX = "text_model."
EXTRAS_PREFIX = "text_encoder.text_model."
SIGLIP_HEAD_DIM = 64  # used only when the head count must be guessed from shapes
_ACTS = {"gelu_pytorch_tanh": True, "gelu_new": True, "gelu_fast": True, "gelu": False}


class TextLoadError(ValueError):
    """A text-tower checkpoint that cannot be read or does not match the model."""


@dataclasses.dataclass(frozen=True)
class SiglipTextConfig(ArchitectureConfig):
    """`transformers.SiglipTextConfig` fields that define the architecture (same defaults)."""

    vocab_size: int = 32000
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 64
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    projection_size: int | None = None  # None: hidden_size
    dtype: str = "float32"

    def __post_init__(self):
        if self.hidden_act not in _ACTS:
            raise ValueError(f"unsupported hidden_act {self.hidden_act!r}; supported: {sorted(_ACTS)}")
        self.check_heads()

    @property
    def num_heads(self) -> int:  # transformers' name is num_attention_heads
        return self.num_attention_heads

    @property
    def output_size(self) -> int:
        return self.projection_size or self.hidden_size

    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any]) -> "SiglipTextConfig":
        """A `SiglipModel` config (its `text_config`) or a `SiglipTextConfig` dict."""
        if "text_config" in d:
            d = d["text_config"] or {}
        elif d.get("model_type") not in (None, "siglip_text_model"):
            raise TextLoadError(f"model_type {d.get('model_type')!r} is not a SigLIP (text) model")
        fields = {f.name for f in dataclasses.fields(cls)} - {"dtype"}
        return cls(**{k: v for k, v in d.items() if k in fields})


class TextAttention(nnx.Module):
    def __init__(self, cfg: SiglipTextConfig, *, rngs: HostRngs | None):
        d, h, hd = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim
        self.scale = hd**-0.5
        self.query = Dense((d,), (h, hd), ("embed",), ("heads", "kv"), rngs=rngs)
        self.key = Dense((d,), (h, hd), ("embed",), ("heads", "kv"), rngs=rngs)
        self.value = Dense((d,), (h, hd), ("embed",), ("heads", "kv"), rngs=rngs)
        self.out = Dense((h, hd), (d,), ("heads", "kv"), ("embed",), rngs=rngs)

    def __call__(self, x: jax.Array, dtype) -> jax.Array:
        q, k, v = self.query(x, dtype), self.key(x, dtype), self.value(x, dtype)  # [B, L, H, d]
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * self.scale
        probs = jax.nn.softmax(logits, axis=-1).astype(dtype)
        return self.out(jnp.einsum("bhqk,bkhd->bqhd", probs, v), dtype)


class TextLayer(nnx.Module):
    def __init__(self, cfg: SiglipTextConfig, *, rngs: HostRngs | None):
        self.layer_norm1 = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, rngs=rngs)
        self.attention = TextAttention(cfg, rngs=rngs)
        self.layer_norm2 = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, rngs=rngs)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size, _ACTS[cfg.hidden_act], rngs=rngs)

    def __call__(self, x: jax.Array, dtype) -> jax.Array:
        x = x + self.attention(self.layer_norm1(x), dtype)
        return x + self.mlp(self.layer_norm2(x), dtype)


class SiglipTextModel(nnx.Module):
    """`SiglipTextModel(input_ids)` -> {"last_hidden_state" [B, L, D], "pooler_output" [B, P]}."""

    def __init__(self, config: SiglipTextConfig, *, rngs: HostRngs | None):
        cfg = self.config = config
        d = cfg.hidden_size
        self.token_embedding = param(rngs, normal_init(0.02), (cfg.vocab_size, d), (None, "embed"))
        self.position_embedding = param(rngs, normal_init(0.02), (cfg.max_position_embeddings, d), (None, "embed"))
        self.layers = nnx.List([TextLayer(cfg, rngs=rngs) for _ in range(cfg.num_hidden_layers)])
        self.final_layer_norm = LayerNorm(d, cfg.layer_norm_eps, rngs=rngs)
        self.head = Dense((d,), (cfg.output_size,), ("embed",), ("embed_out",), rngs=rngs)

    def __call__(self, input_ids: jax.Array) -> dict[str, jax.Array]:
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        length = input_ids.shape[-1]
        if length > cfg.max_position_embeddings:
            raise ValueError(f"sequence length {length} exceeds max_position_embeddings "
                             f"{cfg.max_position_embeddings}")
        x = jnp.take(self.token_embedding[...], input_ids, axis=0) + self.position_embedding[...][:length]
        x = x.astype(dtype)
        for layer in self.layers:
            x = layer(x, dtype)
        x = self.final_layer_norm(x)
        return {"last_hidden_state": x, "pooler_output": self.head(x[:, -1], dtype).astype(jnp.float32)}

    def encode(self, input_ids: jax.Array) -> jax.Array:
        """The text embedding StreamFormer uses (`pooler_output`), float32 [B, P]."""
        return self(input_ids)["pooler_output"]


def abstract_text_model(config: SiglipTextConfig) -> SiglipTextModel:
    return abstract_module(SiglipTextModel, config)


def init_text_model(config: SiglipTextConfig, seed: int = 0) -> SiglipTextModel:
    return init_module(SiglipTextModel, config, seed)


# ---- the key table: our name <- HF name (without `text_model.`), layout (the rule engine's) ----
TEXT_GLOBAL_RULES = [
    Rule("token_embedding", "embeddings.token_embedding.weight"),
    Rule("position_embedding", "embeddings.position_embedding.weight"),
    *layer_norm("final_layer_norm", "final_layer_norm"),
    *linear("head", "head"),
]
TEXT_LAYER_RULES = [
    *layer_norm("layers.{l}.layer_norm1", "encoder.layers.{l}.layer_norm1"),
    *layer_norm("layers.{l}.layer_norm2", "encoder.layers.{l}.layer_norm2"),
    *linear("layers.{l}.attention.query", "encoder.layers.{l}.self_attn.q_proj"),
    *linear("layers.{l}.attention.key", "encoder.layers.{l}.self_attn.k_proj"),
    *linear("layers.{l}.attention.value", "encoder.layers.{l}.self_attn.v_proj"),
    *linear("layers.{l}.attention.out", "encoder.layers.{l}.self_attn.out_proj", n_in=2),  # [H, d] -> [D]
    *linear("layers.{l}.mlp.fc1", "encoder.layers.{l}.mlp.fc1"),
    *linear("layers.{l}.mlp.fc2", "encoder.layers.{l}.mlp.fc2"),
]
IGNORED_HF = ("embeddings.position_ids",)  # a buffer some checkpoints store


def text_rules(config: SiglipTextConfig) -> list[Rule]:
    return [*TEXT_GLOBAL_RULES, *expand(TEXT_LAYER_RULES, config.num_hidden_layers)]


def hf_to_ours(state: Mapping[str, np.ndarray], config: SiglipTextConfig, source: str = "text tower"
               ) -> dict[str, np.ndarray]:
    """HF text-tower tensors (no `text_model.` prefix) -> our flat params; strict on names and shapes."""
    return to_ours(state, text_rules(config), shapes(abstract_text_model(config)),
                   f"{source} does not match the SigLIP text config", ignored=IGNORED_HF, error=TextLoadError)


def ours_to_hf(params: Mapping[str, np.ndarray], config: SiglipTextConfig) -> dict[str, np.ndarray]:
    """Inverse of `hf_to_ours` (without prefix); used by tests and exports."""
    return to_theirs(params, text_rules(config))


def infer_text_config(state: Mapping[str, np.ndarray], num_heads: int | None = None) -> SiglipTextConfig:
    """A config from the tensor shapes (no prefix); the head count is guessed as D / 64 unless given."""
    try:
        vocab, d = np.shape(state["embeddings.token_embedding.weight"])
        positions = np.shape(state["embeddings.position_embedding.weight"])[0]
        mlp = np.shape(state["encoder.layers.0.mlp.fc1.weight"])[0]
        proj = np.shape(state["head.weight"])[0]
    except KeyError as e:
        raise TextLoadError(f"cannot infer the text config: missing {e.args[0]}") from None
    layers = len({m.group(1) for k in state if (m := re.match(r"encoder\.layers\.(\d+)\.", k))})
    if num_heads is None:
        if d % SIGLIP_HEAD_DIM:
            raise TextLoadError(f"hidden size {d} is not a multiple of {SIGLIP_HEAD_DIM}: pass num_heads")
        num_heads = d // SIGLIP_HEAD_DIM
    return SiglipTextConfig(vocab_size=int(vocab), hidden_size=int(d), intermediate_size=int(mlp),
                            num_hidden_layers=layers, num_attention_heads=int(num_heads),
                            max_position_embeddings=int(positions), projection_size=int(proj))


def text_model_from_flat(config: SiglipTextConfig, flat: Mapping[str, object]) -> SiglipTextModel:
    return module_from_flat(abstract_text_model(config), flat, "text-tower parameters")


def text_from_state(state: Mapping[str, np.ndarray], prefix: str, config: SiglipTextConfig | None = None,
                    num_heads: int | None = None, source: str = "text tower") -> SiglipTextModel:
    """Tensors with `prefix` (`text_model.` or `text_encoder.text_model.`) -> a text model."""
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not sub:
        raise TextLoadError(f"{source}: no '{prefix}*' tensors (no SigLIP text tower in it)")
    config = config or infer_text_config(sub, num_heads)
    return text_model_from_flat(config, hf_to_ours(sub, config, source))


def load_text_model(path, num_heads: int | None = None, config: SiglipTextConfig | None = None
                    ) -> SiglipTextModel:
    """The frozen text tower from
    * a Hugging Face SigLIP directory (`config.json` + `model.safetensors`, keys `text_model.*`),
    * one of our checkpoint directories with `pretrain_extras.safetensors` (keys `text_encoder.text_model.*`),
    * or a `.safetensors` file with either prefix.
    """
    p = pathlib.Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such text-tower checkpoint")
    if p.is_file():
        state = load_file(str(p))
    elif (p / "pretrain_extras.safetensors").is_file():
        state = load_file(str(p / "pretrain_extras.safetensors"))
    elif (p / "config.json").is_file():
        if config is None:
            config = SiglipTextConfig.from_hf_dict(json.loads((p / "config.json").read_text()))
        state = read_safetensors_dir(p)
    else:
        raise TextLoadError(f"{p}: neither a Hugging Face SigLIP directory (config.json + model.safetensors) nor a "
                            "checkpoint with pretrain_extras.safetensors")
    prefix = EXTRAS_PREFIX if any(k.startswith(EXTRAS_PREFIX) for k in state) else HF_PREFIX
    return text_from_state(state, prefix, config, num_heads, source=str(p))
