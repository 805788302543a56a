"""A pretraining checkpoint as zero-shot evaluation needs it: backbone, task heads, text tower, tokenizer.

    from eval.pretrained import load_pretrained
    from streamformer_jax.zero_shot.evaluate import evaluate
    from streamformer_jax.zero_shot.items import find_items

    zs = load_pretrained("WORKDIR/export")     # or the training WORKDIR itself, or our checkpoint + text=
    items, _ = find_items("HELDOUT/records", "retrieval")
    result = evaluate("retrieval", zs, items)

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

import json
import pathlib
from typing import Any, Callable, Sequence

from streamformer_jax.checkpoint import is_checkpoint
from streamformer_jax.tasks.model import MultiTaskModel
from streamformer_jax.text.tokenizer import load_tokenizer
from streamformer_jax.train.export import export
from streamformer_jax.train.multitask_kind import HashTokenizer
from streamformer_jax.train.pretrain_export import TEXT_CONFIG_FILE
from streamformer_jax.zero_shot.evaluate import ZeroShotModel, tasks as zero_shot_tasks


class PretrainedLoadError(ValueError):
    """The checkpoint cannot serve zero-shot evaluation (reported as one `error:` line)."""


def _latest_step(workdir: pathlib.Path) -> int | None:
    steps = [int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit()]
    return max(steps) if steps else None


def resolve_checkpoint(path: str | pathlib.Path, log: Callable[[str], None] = print) -> pathlib.Path:
    """A training run directory -> an export of its newest checkpoint (made once); anything else as is."""
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
    out = p / f"export_step{step}"
    log(f"exporting step {step} of {p} to {out}")
    return export(p, out)


def load_pretrained(path, *, tasks: Sequence[str] | None = None, text: str | None = None,
                    tokenizer: str | None = None, text_num_heads: int | None = None,
                    log: Callable[[str], None] = print) -> ZeroShotModel:
    """See the module docstring. `text`: a SigLIP directory (text tower + tokenizer) overriding the checkpoint's;
    `tokenizer`: a `spiece.model` (or the directory holding it) overriding the recorded tokenizer; `tasks`: the
    heads to load (default: every zero-shot task)."""
    p = resolve_checkpoint(path, log)
    meta_path = p / TEXT_CONFIG_FILE
    meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if text_num_heads is None and meta.get("text_config"):
        text_num_heads = int(meta["text_config"]["num_attention_heads"])
    try:
        model = MultiTaskModel.from_pretrained(p, list(tasks or zero_shot_tasks()), text=text,
                                               text_num_heads=text_num_heads)
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
        tok = HashTokenizer(spec["vocab_size"], spec["max_length"])
    elif spec.get("kind") == "sentencepiece":
        tok = load_tokenizer(p / spec["file"], max_length=int(spec.get("max_length", 64)))
    elif (p / "spiece.model").is_file():
        tok = load_tokenizer(p)
    else:
        raise PretrainedLoadError(f"{p}: no tokenizer recorded with the text tower (pass --tokenizer "
                                  "spiece.model, e.g. from google/siglip-base-patch16-224)")
    return ZeroShotModel(model=model, tokenizer=tok, label_sets=dict(meta.get("label_sets") or {}),
                           source=str(p))
