"""The frozen SigLIP text tower (Flax NNX), its tokenizer and label embeddings."""
from streamformer_jax.text.embeddings import compute_label_embeddings, encode_texts
from streamformer_jax.text.model import (SiglipTextConfig, SiglipTextModel, init_text_model, load_text_model,
                                         text_from_state, text_model_from_flat)
from streamformer_jax.text.tokenizer import SiglipTokenizer, TokenizerError, load_tokenizer

__all__ = ["SiglipTextConfig", "SiglipTextModel", "SiglipTokenizer", "TokenizerError", "compute_label_embeddings",
           "encode_texts", "init_text_model", "load_text_model", "load_tokenizer", "text_from_state",
           "text_model_from_flat"]
