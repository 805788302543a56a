"""The tiny recipe's stand-in text tower (random, frozen) must give the built-in captions distinct embeddings:
caption tasks (retrieval, grounding) can learn only what the caption embeddings tell apart. Measured on the
recipe's own tower and tokenizer; the reference is plain NumPy cosine similarity."""
import numpy as np

from test_train_support import load_config


def _normalized(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_tiny_recipe_tower_tells_the_builtin_captions_apart():
    from data_pipelines.pipeline import builtin
    from streamformer_jax.tasks import registry
    from streamformer_jax.text.embeddings import encode_texts
    from streamformer_jax.train.model_kinds import build_task_model
    from streamformer_jax.train.task_model import ModelSettings

    config = load_config("pretrain_multitask", "tiny")
    tm = build_task_model(ModelSettings.from_config(config), {"retrieval": [], "grounding": []})
    # the built-in captions of every (colour, direction) clip (the held-out retrieval queries), and grounding's
    clips = [builtin.BuiltinClip(40, (96, 72), 8, c, r, (0, 40)) for c in range(len(builtin.CLASS_NAMES))
             for r in (False, True)]
    captions = [registry.get("retrieval").builtin_fields(c)["captions"][0] for c in clips]
    grounding = sorted({registry.get("grounding").builtin_fields(c)["captions"][0] for c in clips})
    assert len(set(captions)) == 8 and len(grounding) == 4
    for texts, bound in ((captions, 0.95), (grounding, 0.95)):
        u = _normalized(encode_texts(tm.model.text_encoder, tm.tokenizer, texts))
        cos = u @ u.T
        off = cos[~np.eye(len(texts), dtype=bool)]
        assert off.max() < bound, (texts, np.round(cos, 3))  # measured: 0.90 (captions), 0.84 (grounding)
