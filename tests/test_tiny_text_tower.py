"""The stand-in text tower of the pretraining quality check (`scripts/pretrain_quality.py`: random, frozen) must
give the built-in captions distinct embeddings: caption tasks (retrieval, grounding) can learn only what the
caption embeddings tell apart. Measured on the script's own config (tower and tokenizer) with NumPy cosines; the
tiny config's default stand-in is shown to fail the same check (why the script sets its own)."""
import importlib.util

import numpy as np
import pytest

from test_train_support import REPO, load_config


def _script():
    spec = importlib.util.spec_from_file_location("_pretrain_quality", REPO / "scripts" / "pretrain_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _max_offdiagonal_cosine(config, texts) -> float:
    from streamformer_jax.text.embeddings import encode_texts
    from streamformer_jax.train.model_kinds import build_task_model
    from streamformer_jax.train.task_model import ModelSettings

    tm = build_task_model(ModelSettings.from_config(config), {"retrieval": [], "grounding": []})
    u = np.asarray(encode_texts(tm.model.text_encoder, tm.tokenizer, texts), np.float64)
    u /= np.linalg.norm(u, axis=-1, keepdims=True)
    cos = u @ u.T
    return float(cos[~np.eye(len(texts), dtype=bool)].max())


def _builtin_captions():
    from data_pipelines.pipeline import builtin
    from streamformer_jax.tasks import registry

    # the built-in captions of every (colour, direction) clip (the held-out retrieval queries), and grounding's
    clips = [builtin.BuiltinClip(40, (96, 72), 8, c, r, (0, 40)) for c in range(len(builtin.CLASS_NAMES))
             for r in (False, True)]
    captions = [registry.get("retrieval").builtin_fields(c)["captions"][0] for c in clips]
    grounding = sorted({registry.get("grounding").builtin_fields(c)["captions"][0] for c in clips})
    assert len(set(captions)) == 8 and len(grounding) == 4
    return captions, grounding


def test_quality_script_tower_tells_the_builtin_captions_apart():
    config = _script().load_config(10, 8)
    captions, grounding = _builtin_captions()
    assert _max_offdiagonal_cosine(config, captions) < 0.95  # measured 0.90
    assert _max_offdiagonal_cosine(config, grounding) < 0.95  # measured 0.84


@pytest.mark.parametrize("which", ["tiny_default", "2x4_at_25x"])
def test_weaker_towers_do_not(which):
    """The tiny config's own one-layer tower at SigLIP's scale, and the 2 x 4 tower at 25x this script used before."""
    if which == "tiny_default":
        config = load_config("pretrain_multitask", "tiny")
    else:
        config = _script().load_config(10, 8, text_layers=2, text_heads=4)
    captions, _ = _builtin_captions()
    assert _max_offdiagonal_cosine(config, captions) > 0.99  # measured 1.000 for both
