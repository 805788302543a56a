"""Our SigLIP tokenizer against transformers' SiglipTokenizer on a tiny SentencePiece model trained here."""
import io

import numpy as np
import pytest

from streamformer_jax.text import SiglipTokenizer, TokenizerError, load_tokenizer
from streamformer_jax.tasks.templates import CAPTION_PREFIXES, VIDEO_TEMPLATES

spm = pytest.importorskip("sentencepiece")
transformers = pytest.importorskip("transformers")

CORPUS = [
    "a photo of a person playing guitar", "a video of someone riding a bike", "the dog jumps over the fence",
    "people dancing at a wedding party", "a man is cooking pasta in the kitchen", "she opens the door slowly",
    "a demonstration of juggling balls", "kids swim in the pool", "abseiling down a cliff", "air drumming",
    "pushing something from left to right", "watch this action where a cat climbs a tree",
] * 20
TEXTS = [
    "A photo of a person playing guitar.",
    "Pushing [something] from left to right!!",
    "  Multiple   spaces,\tand TABS\nnewlines  ",
    "Hello</s>world",  # a literal special token is kept as one token
    "café naïve — unicode ▁underline",
    "",
    "a " * 80,  # longer than 64 tokens: truncated (captions)
    "What's up? (Don't) stop; [it] {now} ...",
] + [t.format("air drumming") for t in VIDEO_TEMPLATES[:5]] + [f"{CAPTION_PREFIXES[0]} A dog runs."]


@pytest.fixture(scope="module")
def spiece(tmp_path_factory):
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_writer=model, vocab_size=80,
                                   model_type="unigram", character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2,
                                   bos_id=-1, minloglevel=2)
    path = tmp_path_factory.mktemp("tok") / "spiece.model"
    path.write_bytes(model.getvalue())
    return path


def test_ids_match_transformers_siglip_tokenizer(spiece):
    ours = SiglipTokenizer(spiece.parent)  # a directory holding spiece.model works too
    theirs = transformers.SiglipTokenizer(vocab_file=str(spiece))
    assert ours.pad_id == ours.eos_id == theirs.pad_token_id == theirs.eos_token_id
    got = ours(TEXTS, truncation=True)
    ref = np.asarray(theirs(TEXTS, padding="max_length", max_length=64, truncation=True)["input_ids"])
    assert got.shape == (len(TEXTS), 64) and got.dtype == np.int32
    np.testing.assert_array_equal(got, ref)
    # the long text was really truncated to 63 tokens + eos, everything is eos-padded
    assert got[6, -1] == ours.eos_id and (got[0] == ours.eos_id).sum() > 40
    # lower-casing and punctuation stripping: these differ only in case/punctuation
    np.testing.assert_array_equal(ours(["A Photo, of: DOGS!"]), ours(["a photo of dogs"]))
    short = load_tokenizer(spiece, max_length=8)
    np.testing.assert_array_equal(
        short(TEXTS), np.asarray(theirs(TEXTS, padding="max_length", max_length=8, truncation=True)["input_ids"]))


def test_label_prompts_are_not_truncated(spiece):
    ours = SiglipTokenizer(spiece)
    theirs = transformers.SiglipTokenizer(vocab_file=str(spiece))
    prompts = [t.format("pushing something from left to right") for t in VIDEO_TEMPLATES]
    np.testing.assert_array_equal(
        ours(prompts, truncation=False),
        np.asarray(theirs(prompts, padding="max_length", max_length=64)["input_ids"]))
    with pytest.raises(TokenizerError, match="exceeds max_length"):
        ours(["a " * 80], truncation=False)


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(TokenizerError, match="no SigLIP tokenizer given"):
        SiglipTokenizer(None)
    with pytest.raises(FileNotFoundError, match="spiece.model"):
        SiglipTokenizer(tmp_path)
    (tmp_path / "bad.model").write_bytes(b"\xff\x00not a model")
    with pytest.raises(TokenizerError, match="not a SentencePiece model"):
        SiglipTokenizer(tmp_path / "bad.model")
