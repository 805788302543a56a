"""Label embeddings: mean over templates of normalised SigLIP text embeddings (not re-normalised), rows by id,
checked against transformers' SiglipTokenizer + SiglipTextModel."""
import io

import numpy as np
import pytest

from streamformer_jax.text import SiglipTokenizer, compute_label_embeddings, load_text_model
from streamformer_jax.tasks import model as mt
from streamformer_jax.tasks.templates import CAPTION_PREFIXES, SCENE_TEMPLATES, VIDEO_TEMPLATES

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")

WORDS = ("a photo video example demonstration of person using doing during performing practicing "
         "abseiling air drumming playing guitar dog cat swimming").split()


@pytest.fixture(scope="module")
def tower(tmp_path_factory):
    root = tmp_path_factory.mktemp("emb")
    model = io.BytesIO()
    corpus = [" ".join(np.random.default_rng(i).choice(WORDS, 6)) for i in range(300)]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=model, vocab_size=40,
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
    (root / "spiece.model").write_bytes(model.getvalue())
    torch.manual_seed(0)
    cfg = transformers.SiglipTextConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, max_position_embeddings=64)
    ref = transformers.SiglipTextModel(cfg)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn(p.shape) * 0.1)
    ref.eval().save_pretrained(root / "text")
    return root, ref


def test_templates():
    assert len(VIDEO_TEMPLATES) == 28 and len(set(VIDEO_TEMPLATES)) == 28 and len(CAPTION_PREFIXES) == 17
    assert "a example of a person practicing {}." in VIDEO_TEMPLATES and SCENE_TEMPLATES == ("{}",)


def test_label_embeddings_match_transformers_and_are_not_renormalised(tower):
    root, ref = tower
    tok = SiglipTokenizer(root / "spiece.model")
    text_model = load_text_model(root / "text")
    label2id = {"playing guitar": 2, "abseiling": 0, "air drumming": 1}  # JSON order != id order
    names = mt.class_names_by_id(label2id)
    emb = compute_label_embeddings(text_model, tok, names, VIDEO_TEMPLATES, batch_size=32)
    hf_tok = transformers.SiglipTokenizer(vocab_file=str(root / "spiece.model"))
    expected = np.zeros((3, 32))
    for name, i in label2id.items():
        ids = hf_tok([t.format(name) for t in VIDEO_TEMPLATES], padding="max_length", max_length=64)["input_ids"]
        with torch.no_grad():
            e = ref(input_ids=torch.tensor(ids)).pooler_output.double().numpy()
        expected[i] = (e / np.linalg.norm(e, axis=-1, keepdims=True)).mean(0)  # row = id
    np.testing.assert_allclose(emb, expected, rtol=0, atol=2e-5)
    norms = np.linalg.norm(emb, axis=-1)
    assert np.all(norms < 0.999) and np.all(norms > 0.1)  # a mean of unit vectors, left as it is


def test_build_label_embeddings_pads_per_dataset_sets(tower):
    root, _ = tower
    tok = SiglipTokenizer(root)
    text_model = load_text_model(root / "text")
    text, datasets = mt.build_label_embeddings(
        text_model, tok, {"kinetics": ["abseiling", "air drumming"],
                          "vis": {"YoutubeVIS": ["dog", "cat", "person"], "COCO": ["cat"]}}, batch_size=32)
    assert text["kinetics"].shape == (2, 32) and datasets == {"vis": ["YoutubeVIS", "COCO"]}
    assert text["vis"].shape == (2, 3, 32)
    np.testing.assert_array_equal(text["vis_valid"], [[True, True, True], [True, False, False]])
    # VIS uses the single "{}" template: unit rows, and "cat" is the same vector in both sets
    np.testing.assert_allclose(np.linalg.norm(text["vis"][0], axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(text["vis"][1, 0], text["vis"][0, 1], atol=1e-6)
    assert not np.any(text["vis"][1, 1:])
