"""A pretraining checkpoint as zero-shot evaluation needs it: backbone, task heads, text tower, tokenizer.

    from eval.pretrained import load_pretrained
    pm = load_pretrained("WORKDIR/export")     # or the training WORKDIR itself, or our checkpoint + --text

Sources accepted by `load_pretrained(path)`:
* the trainer's export (`WORKDIR/export`, written when a run finishes, or `python -m streamformer_jax.train.export
  --workdir WORKDIR`): backbone checkpoint + `pretrain_extras.safetensors` (heads, text tower in the original
  names) + `text_config.json` (text architecture, tokenizer, label sets);
* a training run directory (`config.json` + `checkpoints/`, orbax): its newest checkpoint is exported first to
  `WORKDIR/export_step<N>` (once) and read from there;
* any of our checkpoints with pretraining extras (`convert import-pytorch` of an official `checkpoint-epoch.pth`,
  `convert import-siglip`), or a backbone-only checkpoint / official HF directory together with `text=` (a
  SigLIP directory: text tower + `spiece.model`); heads missing from the checkpoint keep SigLIP's initial
  logit scale/bias (log 10, -10).
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Callable, Sequence

import numpy as np

from streamformer_jax.train.multitask import MultiTaskModel
from streamformer_jax.train.pretrain_export import TEXT_CONFIG_FILE

ZERO_SHOT_TASKS = ("retrieval", "grounding", "localization")


class PretrainedLoadError(ValueError):
    """The checkpoint cannot serve zero-shot evaluation (reported as one `error:` line)."""


@dataclasses.dataclass
class PretrainedModel:
    model: MultiTaskModel  # backbone, heads (per-task logit scale/bias), frozen text tower
    tokenizer: Callable  # texts -> int32 [N, L]
    label_sets: dict[str, list[str]]  # {task: class names} the run trained with ({} when unknown)
    source: str

    def head_scalars(self, task: str) -> tuple[float, float]:
        """(s, b) of a task head: logits = s * cos + b, with s = exp(logit_scale)."""
        head = self.model.heads[task]
        return float(np.exp(np.asarray(head.logit_scale[...]))), float(np.asarray(head.logit_bias[...]))


def _latest_step(workdir: pathlib.Path) -> int | None:
    steps = [int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit()]
    return max(steps) if steps else None


def resolve_checkpoint(path: str | pathlib.Path, log: Callable[[str], None] = print) -> pathlib.Path:
    """A training run directory -> an export of its newest checkpoint (made once); anything else as is."""
    from streamformer_jax.checkpoint import is_checkpoint

    p = pathlib.Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such checkpoint")
    if is_checkpoint(p) or not ((p / "config.json").is_file() and (p / "checkpoints").is_dir()):
        return p
    step = _latest_step(p)
    if step is None:
        raise PretrainedLoadError(f"{p}: a training run directory without checkpoints")
    for candidate in (p / "export", p / f"export_step{step}"):
        meta = candidate / "streamformer_config.json"
        if meta.is_file() and json.loads(meta.read_text()).get("step") == step and \
                (candidate / TEXT_CONFIG_FILE).is_file():
            return candidate
    from streamformer_jax.train.export import export

    out = p / f"export_step{step}"
    log(f"exporting step {step} of {p} to {out}")
    return export(p, out)


def _hash_tokenizer(spec: dict):
    from streamformer_jax.train.multitask_adapter import HashTokenizer

    return HashTokenizer(spec["vocab_size"], spec["max_length"])


def load_pretrained(path, *, tasks: Sequence[str] = ZERO_SHOT_TASKS, text: str | None = None,
                    tokenizer: str | None = None, text_num_heads: int | None = None,
                    log: Callable[[str], None] = print) -> PretrainedModel:
    """See the module docstring. `text`: a SigLIP directory (text tower + tokenizer) overriding the checkpoint's;
    `tokenizer`: a `spiece.model` (or the directory holding it) overriding the recorded tokenizer."""
    from streamformer_jax.text.tokenizer import load_tokenizer

    p = resolve_checkpoint(path, log)
    meta_path = p / TEXT_CONFIG_FILE
    meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if text_num_heads is None and meta.get("text_config"):
        text_num_heads = int(meta["text_config"]["num_attention_heads"])
    try:
        model = MultiTaskModel.from_pretrained(p, list(tasks), text=text, text_num_heads=text_num_heads)
    except (KeyError, ValueError) as e:
        raise PretrainedLoadError(f"{p}: {e}") from None
    if model.text_encoder is None:
        raise PretrainedLoadError(f"{p}: no text tower in this checkpoint (pass a SigLIP directory with --text; "
                                  "a pretraining export or an imported checkpoint-epoch.pth carries one)")
    spec = meta.get("tokenizer") or {}
    if tokenizer is not None:
        tok = load_tokenizer(tokenizer, max_length=int(spec.get("max_length", 64)))
    elif text is not None:
        tok = load_tokenizer(text, max_length=int(spec.get("max_length", 64)))
    elif spec.get("kind") == "hash":
        tok = _hash_tokenizer(spec)
    elif spec.get("kind") == "sentencepiece":
        tok = load_tokenizer(p / spec["file"], max_length=int(spec.get("max_length", 64)))
    elif (p / "spiece.model").is_file():
        tok = load_tokenizer(p)
    else:
        raise PretrainedLoadError(f"{p}: no tokenizer recorded with the text tower (pass --tokenizer "
                                  "spiece.model, e.g. from google/siglip-base-patch16-224)")
    return PretrainedModel(model=model, tokenizer=tok, label_sets=dict(meta.get("label_sets") or {}),
                           source=str(p))
