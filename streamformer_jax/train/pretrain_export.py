"""A multitask run's task heads and text tower, written beside its exported backbone in the original's layout.

`write_pretrain_export(out, flat, ...)` adds to the backbone checkpoint the trainer exports (`out/params`,
`out/streamformer_config.json`):

* `pretrain_extras.safetensors`: every non-backbone tensor of the original pretraining wrapper
  (`StreamformerForMultiTaskingSigLIP.state_dict()`, spec §1.9) under its original name: the wrapper's
  `logit_scale`/`logit_bias`, `task_heads.<Task>.logit_scale/logit_bias`, the VIS projection
  (`task_heads.TaskVIS.{w_v, v_proj, head_layernorm, head_mlp}.*`) and the text tower
  (`text_encoder.text_model.*`), plus the aliases the original stores once (every head's
  `text_encoder.text_model.*` and `task_heads.TaskVIS.head.*` = the backbone's MAP head) and the key order.
  `python -m streamformer_jax.convert export-pytorch --checkpoint OUT --out checkpoint-epoch.pth` therefore writes the
  full wrapper state dict, and `MultiTaskModel.from_pretrained(OUT, tasks)` reads the heads back.
* `text_config.json`: the text tower's architecture, its tokenizer (`{"kind": "sentencepiece", "file":
  "spiece.model"}` with the file copied here, or the hashing stand-in of the tiny recipe) and the label sets
  the run trained with (`{task: [class names]}`), so zero-shot evaluation needs nothing but this directory.

The original wrapper's own `logit_scale`/`logit_bias` receive no gradient there (each head has its own copy,
spec §10.10); they are written with the heads' initial values.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
from typing import Any, Mapping, Sequence

import numpy as np

from streamformer_jax.convert.keymap import OFFICIAL_PREFIX, ours_to_official
from streamformer_jax.convert.pretrain import write_extras
from streamformer_jax.key_rules import to_theirs
from streamformer_jax.models.config import StreamFormerConfig
from streamformer_jax.tasks import registry
from streamformer_jax.text.model import EXTRAS_PREFIX, SiglipTextConfig, ours_to_hf
from streamformer_jax.text.tokenizer import SiglipTokenizer

TEXT_CONFIG_FILE = "text_config.json"


def _under(flat: Mapping[str, Any], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix):]: np.asarray(v) for k, v in flat.items() if k.startswith(prefix)}


def official_extras(flat: Mapping[str, Any], tasks: Sequence[str], backbone_config: StreamFormerConfig,
                    text_config: SiglipTextConfig | None, *, wrapper_logit_scale: float, wrapper_logit_bias: float
                    ) -> tuple[dict[str, np.ndarray], dict[str, str], list[str]]:
    """Our flat multitask parameters -> (stored tensors, {alias: canonical key}, full key order of the .pth)."""
    tensors: dict[str, np.ndarray] = {"logit_scale": np.asarray(wrapper_logit_scale, np.float32),
                                      "logit_bias": np.asarray(wrapper_logit_bias, np.float32)}
    aliases: dict[str, str] = {}
    backbone_keys = [OFFICIAL_PREFIX + k for k in ours_to_official(_under(flat, "backbone."), backbone_config)]
    text_keys: list[str] = []
    if text_config is not None:
        for k, v in ours_to_hf(_under(flat, "text_encoder."), text_config).items():
            tensors[EXTRAS_PREFIX + k] = v
            text_keys.append(EXTRAS_PREFIX + k)
    order = ["logit_scale", "logit_bias", *backbone_keys, *text_keys]
    for task in tasks:
        spec = registry.get(task)
        theirs = f"task_heads.{spec.official_name}."
        head = _under(flat, f"heads.{task}.")
        for name in ("logit_scale", "logit_bias"):
            tensors[theirs + name] = np.asarray(head[name], np.float32).reshape(())
            order.append(theirs + name)
        for k in text_keys:  # every head registers the shared text encoder: aliases of one tensor
            aliases[theirs + "text_encoder." + k[len("text_encoder."):]] = k
            order.append(theirs + "text_encoder." + k[len("text_encoder."):])
        if spec.official_head_rules:  # a head with its own tensors (VIS) also registers the backbone's MAP head
            for k in backbone_keys:
                if k.startswith(OFFICIAL_PREFIX + "head."):
                    aliases[theirs + k[len(OFFICIAL_PREFIX):]] = k
                    order.append(theirs + k[len(OFFICIAL_PREFIX):])
            # the inverse of the import rules (`tasks.model.official_head_params`)
            for k, v in to_theirs(head, spec.official_head_rules).items():
                tensors[theirs + k] = v
                order.append(theirs + k)
    return tensors, aliases, order


def tokenizer_spec(tokenizer) -> dict:
    """How to rebuild the run's tokenizer: the SentencePiece file, or the hashing stand-in's settings."""
    if isinstance(tokenizer, SiglipTokenizer):
        return {"kind": "sentencepiece", "file": "spiece.model", "max_length": int(tokenizer.max_length),
                "source": str(tokenizer.path)}
    return {"kind": "hash", "vocab_size": int(tokenizer.vocab_size), "max_length": int(tokenizer.max_length)}


def write_pretrain_export(out: str | os.PathLike, flat: Mapping[str, Any], *, tasks: Sequence[str],
                          backbone_config: StreamFormerConfig, text_config: SiglipTextConfig | None, tokenizer,
                          label_sets: Mapping[str, Sequence[str] | Mapping[str, Sequence[str]]], wrapper_logit_scale: float,
                          wrapper_logit_bias: float) -> pathlib.Path:
    """Write `pretrain_extras.safetensors` and `text_config.json` (+ `spiece.model`) into `out` (see above)."""
    out = pathlib.Path(out)
    tensors, aliases, order = official_extras(flat, tasks, backbone_config, text_config,
                                              wrapper_logit_scale=wrapper_logit_scale,
                                              wrapper_logit_bias=wrapper_logit_bias)
    write_extras(out, tensors, aliases, order, source="streamformer_jax.train")
    meta = {"tasks": list(tasks), "label_sets": {t: _label_set(n) for t, n in label_sets.items()},
            "text_config": text_config.to_dict() if text_config is not None else None, "tokenizer": None}
    if tokenizer is not None:
        spec = tokenizer_spec(tokenizer)
        if spec["kind"] == "sentencepiece":
            shutil.copyfile(spec.pop("source"), out / spec["file"])
        meta["tokenizer"] = spec
    tmp = out / (TEXT_CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, out / TEXT_CONFIG_FILE)
    return out


def _label_set(names):
    """Names by id, or {dataset: names by id} (per-dataset tables), as JSON."""
    if isinstance(names, Mapping):
        return {str(ds): [str(n) for n in table] for ds, table in names.items()}
    return [str(n) for n in names]
