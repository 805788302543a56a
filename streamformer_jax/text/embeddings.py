"""Label embeddings from prompt templates (spec §5.3): computed once at start-up, in float32."""
from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from flax import nnx

from streamformer_jax.text.model import SiglipTextModel


@nnx.jit
def _encode(model: SiglipTextModel, ids):
    return model.encode(ids)


def encode_texts(text_model: SiglipTextModel, tokenizer, texts: Sequence[str], *, truncation: bool = True,
                 batch_size: int = 256) -> np.ndarray:
    """Texts -> float32 [N, P] `pooler_output` (not normalised). Every batch is padded to `batch_size` rows so
    the encoder compiles once."""
    out = []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start:start + batch_size])
        ids = tokenizer(chunk, truncation=truncation)
        if len(chunk) < batch_size:
            ids = np.concatenate([ids, np.repeat(ids[-1:], batch_size - len(chunk), axis=0)])
        out.append(np.asarray(jax.device_get(_encode(text_model, ids)))[: len(chunk)])
    return np.concatenate(out, axis=0) if out else np.zeros((0, text_model.config.output_size), np.float32)


def compute_label_embeddings(text_model: SiglipTextModel, tokenizer, class_names: Sequence[str],
                             templates: Sequence[str], *, batch_size: int = 256) -> np.ndarray:
    """E_c = mean_k n(text(template_k(name_c))), float32 [C, D], rows in the order of `class_names`.

    Each template embedding is L2-normalised; the mean is **not** re-normalised (the original, spec §10.10).
    Prompts are tokenised without truncation (as the original's label prompts).
    """
    prompts = [t.format(name) for name in class_names for t in templates]
    emb = encode_texts(text_model, tokenizer, prompts, truncation=False, batch_size=batch_size)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
    return emb.reshape(len(class_names), len(templates), -1).mean(axis=1).astype(np.float32)
