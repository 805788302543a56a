"""Exports of our backbone for the PyTorch downstream stacks (VideoQA / LLaVA, online VIS / CTVIS ViT-Adapter).

    # VideoQA: an HF directory the LLaVA vision tower (`TimesformerVisionTower`) loads with from_pretrained
    python -m eval.exports videoqa --checkpoint CKPT --out checkpoints/streamformer-all

    # OVIS (CTVIS + ViT-Adapter): the backbone keys under `timesformer.` in {"model": ...} for
    # MODEL.BACKBONE.CHECKPOINT (needs torch), or an HF directory with LoRA folded in for MODEL.BACKBONE.PRETRAINED
    python -m eval.exports ovis --checkpoint CKPT --out streamformer_ovis.pth
    python -m eval.exports ovis --checkpoint CKPT --out streamformer_ovis_hf

    # continuing pretraining in the original code: the pretraining checkpoint layout (exists already)
    python -m streamformer_jax.convert export-pytorch --checkpoint CKPT --out checkpoint-epoch.pth

(`--src` / `--dst` are accepted for `--checkpoint` / `--out`.)

VideoQA (spec §7.4, §3): the VideoQA copy of `TimesformerMultiTaskingModelSigLIP` always adds spatial LoRA
(rank 32) and registers no temporal `mask` buffers. The export therefore holds the backbone keys of §1.8
without the 12 mask buffers (the released file's are "unexpected" and ignored there), with zero LoRA
tensors when our model has none (B = A = 0 is an exact no-op, and leaves no key "missing"), and a config.json
that states `num_frames` explicitly (that class defaults to 8). The tower returns `last_hidden_state`
[T, 196, 768] (post-LN patch tokens), which is what our `FeatureExtractor(...)(frames)["last_hidden_state"]`
gives.

OVIS (spec §7.3): `TimesformerMultiTaskingModelSigLIPViTAdapter` is built with `from_pretrained(PRETRAINED)`,
then `add_lora_spatial()` (which creates fresh LoRA, B = 0), then the entries of `torch.load(CHECKPOINT)["model"]`
that start with `timesformer.` are loaded with the prefix stripped and `strict=False`. Its backbone keys are
`embeddings.*`, `encoder.*` (incl. LoRA after add_lora_spatial and the mask buffers) and `post_layernorm.*`; it
has no MAP head. The `.pth` export holds exactly those keys (head left out) under the prefix. Because the
loader is not strict, a wrong key would be silently ignored; the key table is tested against the spec. The
adapter's own parameters (`level_embed`, `spm.*`, `interactions.*`, `up.*`, `norm1..4.*`) stay PyTorch-side.
A directory export folds LoRA into the base weights (W + B A), since `add_lora_spatial()` after
`from_pretrained` would otherwise discard trained LoRA (spec §10.3).
"""
from __future__ import annotations

import pathlib
import sys
from typing import Mapping

import numpy as np

from streamformer_jax import cli
from streamformer_jax.checkpoint import load_any
from streamformer_jax.convert.keymap import ours_to_official
from streamformer_jax.convert.official import write_hf_dir
from streamformer_jax.convert.torch_io import require_torch, save_model_state
from streamformer_jax.models.config import OFFICIAL_LORA_RANK
OVIS_PREFIX = "timesformer."
OVIS_BACKBONE_PREFIXES = ("embeddings.", "encoder.", "post_layernorm.")
_LORA_SHAPES = {  # official key suffix -> shape as a function of (D, r)
    "attention.attention.qkv_lora_a.weight": lambda d, r: (r, d),
    "attention.attention.qkv_lora_b.weight": lambda d, r: (3 * d, r),
    "attention.output.dense_lora_a.weight": lambda d, r: (r, d),
    "attention.output.dense_lora_b.weight": lambda d, r: (d, r),
}


def _official(config, params, include_buffers: bool) -> dict[str, np.ndarray]:
    return ours_to_official({k: np.asarray(v) for k, v in params.items()}, config, include_buffers=include_buffers)


def _add_zero_lora(state: dict, config) -> dict:
    """Zero LoRA tensors (an exact no-op) for a model without LoRA, at the official rank."""
    if config.lora_rank:
        return state
    d = config.hidden_size
    for l in range(config.num_layers):
        for suffix, shape in _LORA_SHAPES.items():
            state[f"encoder.layer.{l}.{suffix}"] = np.zeros(shape(d, OFFICIAL_LORA_RANK), np.float32)
    return dict(sorted(state.items()))


def fold_lora(state: Mapping[str, np.ndarray], num_layers: int) -> dict[str, np.ndarray]:
    """W <- W + B A for the spatial qkv and out-projection; LoRA keys removed (float64 product, cast back)."""
    out = dict(state)
    for l in range(num_layers):
        p = f"encoder.layer.{l}.attention."
        for base, a, b in ((p + "attention.qkv.weight", p + "attention.qkv_lora_a.weight",
                            p + "attention.qkv_lora_b.weight"),
                           (p + "output.dense.weight", p + "output.dense_lora_a.weight",
                            p + "output.dense_lora_b.weight")):
            if a not in out:
                continue
            delta = out.pop(b).astype(np.float64) @ out.pop(a).astype(np.float64)
            out[base] = (out[base].astype(np.float64) + delta).astype(np.float32)
    return out


# --------------------------------------------------------------------------------------------------- VideoQA


def videoqa_state_dict(config, params) -> dict[str, np.ndarray]:
    """The keys the VideoQA copy of the backbone class loads: §1.8 without mask buffers, LoRA always."""
    return _add_zero_lora(_official(config, params, include_buffers=False), config)


def videoqa_config(config) -> dict:
    d = config.to_hf_dict() if config.lora_rank in (0, OFFICIAL_LORA_RANK) else None
    if d is None:
        raise ValueError(f"the official classes only support LoRA rank {OFFICIAL_LORA_RANK}, got {config.lora_rank}")
    d.update(add_lora_spatial=True, num_frames=config.num_frames)
    if config.num_frames > 16:
        raise ValueError("the VideoQA copy raises for clips longer than its time table beyond 16 frames; "
                         "export a 16-frame model")
    return d


def export_videoqa(config, params, dst) -> pathlib.Path:
    """Write `dst/config.json` + `dst/model.safetensors` for `TimesformerVisionTower` / from_pretrained."""
    return write_hf_dir(dst, videoqa_state_dict(config, params), videoqa_config(config))


# ------------------------------------------------------------------------------------------------------ OVIS


def ovis_state_dict(config, params, prefix: str = OVIS_PREFIX, fold: bool = False) -> dict[str, np.ndarray]:
    """Backbone keys of the ViT-Adapter class (embeddings, encoder incl. LoRA + mask buffers, post-LN), no head.

    fold=True folds LoRA into the base weights and drops the LoRA keys (for from_pretrained directories).
    """
    state = _add_zero_lora(_official(config, params, include_buffers=True), config)
    state = {k: v for k, v in state.items() if k.startswith(OVIS_BACKBONE_PREFIXES)}
    if fold:
        state = fold_lora(state, config.num_layers)
    return {prefix + k: v for k, v in sorted(state.items())}


def export_ovis(config, params, dst, prefix: str = OVIS_PREFIX) -> pathlib.Path:
    """`dst` ending in .pth/.pt: torch.save({"model": state}) for MODEL.BACKBONE.CHECKPOINT (needs torch).
    Otherwise an HF directory (config.json + model.safetensors, LoRA folded, no head) for
    MODEL.BACKBONE.PRETRAINED."""
    dst = pathlib.Path(dst)
    if dst.suffix in (".pth", ".pt"):
        torch = require_torch()
        state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in ovis_state_dict(config, params, prefix).items()}
        save_model_state(dst, state)
        return dst
    cfg = config.replace(lora_rank=0).to_hf_dict()  # LoRA is folded into the base weights
    cfg.update(add_lora_spatial=False, architectures=["TimesformerMultiTaskingModelSigLIPViTAdapter"])
    return write_hf_dir(dst, ovis_state_dict(config, params, prefix="", fold=True), cfg)


# ------------------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    p = cli.ArgumentParser(prog="python -m eval.exports", description="Backbone exports for the PyTorch "
                           "downstream stacks (VideoQA, OVIS). See the module docstring.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("videoqa", help="HF directory for the LLaVA vision tower")
    cli.add_checkpoint(s, "--src")
    cli.add_out(s, "--dst", help="output directory", metavar="DIR")
    s = sub.add_parser("ovis", help="ViT-Adapter backbone weights (.pth for CHECKPOINT, directory for PRETRAINED)")
    cli.add_checkpoint(s, "--src")
    cli.add_out(s, "--dst", help=".pth file or output directory")
    s.add_argument("--prefix", default=OVIS_PREFIX, help="key prefix in the .pth (default 'timesformer.')")
    args = p.parse_args(argv)

    def run() -> int:
        config, params = load_any(args.checkpoint)
        if args.command == "videoqa":
            out = export_videoqa(config, params, args.out)
        else:
            out = export_ovis(config, params, args.out, args.prefix)
        print(f"wrote {out}", file=sys.stderr)
        return 0

    return cli.run(run)


if __name__ == "__main__":
    sys.exit(main())
