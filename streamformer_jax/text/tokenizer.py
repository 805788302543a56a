"""The SigLIP tokenizer (transformers `SiglipTokenizer` semantics) on a local SentencePiece file.

Pipeline per text, as transformers 4.52 with StreamFormer's settings (`do_lower_case=True`, pad = eos `</s>`):
1. replace "▁" by " " and prepend "▁"; lower-case everything except the special tokens `</s>`, `<unk>`;
2. split at special tokens (which swallow the whitespace around them);
3. each other piece: drop `string.punctuation`, collapse whitespace, strip, then SentencePiece-encode
   `"<unk>" + text` with `add_dummy_prefix` off and drop the encoding of "<unk>";
4. append `</s>` (unless already last); captions are truncated to `max_length - 1` tokens before it
   (`truncation=True`), label prompts are not (a prompt longer than `max_length` is an error);
5. pad with `</s>` to `max_length` (64).
Token ids are SentencePiece piece ids (the special tokens' too).
"""
from __future__ import annotations

import os
import pathlib
import re
import string
from typing import Sequence

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

SPIECE_UNDERLINE = "\u2581"
VOCAB_FILE = "spiece.model"
MAX_LENGTH = 64
_PUNCT = str.maketrans("", "", string.punctuation)


class TokenizerError(ValueError):
    pass


class SiglipTokenizer:
    def __init__(self, path: str | os.PathLike | None, *, max_length: int = MAX_LENGTH, do_lower_case: bool = True,
                 eos_token: str = "</s>", unk_token: str = "<unk>"):
        if path is None:
            raise TokenizerError("no SigLIP tokenizer given: pass the path of a SentencePiece `spiece.model` (or "
                                 "the directory that holds it, e.g. a google/siglip-base-patch16-224 download)")
        p = pathlib.Path(path)
        if p.is_dir():
            p = p / VOCAB_FILE
        if not p.is_file():
            raise FileNotFoundError(f"{p}: SigLIP tokenizer file not found (expected a SentencePiece "
                                    f"`{VOCAB_FILE}`)")
        proto = sentencepiece_model_pb2.ModelProto()
        try:
            proto.ParseFromString(p.read_bytes())
        except Exception as e:  # protobuf's DecodeError
            raise TokenizerError(f"{p}: not a SentencePiece model ({e})") from None
        proto.normalizer_spec.add_dummy_prefix = False
        self.sp = spm.SentencePieceProcessor()
        self.sp.LoadFromSerializedProto(proto.SerializeToString())
        self.path, self.max_length, self.do_lower_case = p, max_length, do_lower_case
        self.eos_token, self.unk_token = eos_token, unk_token
        self.special = (eos_token, unk_token)
        self.eos_id = self.pad_id = self.sp.piece_to_id(eos_token)
        self.unk_id = self.sp.piece_to_id(unk_token)
        self._unk_len = len(self.sp.encode(unk_token, out_type=str))
        alt = "|".join(re.escape(t) for t in sorted(self.special, key=len, reverse=True))
        self._split_re = re.compile(f"({alt})")
        self._lower_re = re.compile(f"({alt})|(.+?)", re.S)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def _canonicalize(self, text: str) -> str:
        return re.sub(r"\s+", " ", text.translate(_PUNCT)).strip()

    def _piece_tokens(self, text: str) -> list[str]:
        text = self._canonicalize(text)
        tokens = self.sp.encode(self.unk_token + text, out_type=str)
        return tokens[self._unk_len:] if len(tokens) >= self._unk_len else tokens

    def tokenize(self, text: str) -> list[str]:
        text = SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " ")
        if self.do_lower_case:
            text = self._lower_re.sub(lambda m: m.group(1) or m.group(2).lower(), text)
        parts = [x for x in self._split_re.split(text)]
        for i, part in enumerate(parts):  # special tokens strip the whitespace on both sides
            if part in self.special:
                if i > 0:
                    parts[i - 1] = parts[i - 1].rstrip()
                if i + 1 < len(parts):
                    parts[i + 1] = parts[i + 1].lstrip()
        tokens = []
        for part in parts:
            if not part:
                continue
            tokens.extend([part] if part in self.special else self._piece_tokens(part))
        if len(tokens) > 1 and tokens[0] == SPIECE_UNDERLINE and tokens[1] in self.special:
            tokens = tokens[1:]
        return tokens

    def encode(self, text: str, *, truncation: bool = True) -> list[int]:
        """Token ids with the final eos, unpadded."""
        ids = [self.sp.piece_to_id(t) for t in self.tokenize(text)]
        if truncation and len(ids) > self.max_length - 1:
            ids = ids[: self.max_length - 1]
        if not ids or ids[-1] != self.eos_id:
            ids = ids + [self.eos_id]
        return ids

    def __call__(self, texts: str | Sequence[str], *, truncation: bool = True) -> np.ndarray:
        """int32 [N, max_length], padded with eos. `truncation=True` for captions; label prompts use False
        (the original), which raises if a prompt does not fit."""
        if isinstance(texts, str):
            texts = [texts]
        out = np.full((len(texts), self.max_length), self.pad_id, np.int32)
        for i, t in enumerate(texts):
            ids = self.encode(str(t), truncation=truncation)
            if len(ids) > self.max_length:
                raise TokenizerError(f"text of {len(ids)} tokens exceeds max_length {self.max_length} "
                                     f"(truncation off): {str(t)[:80]!r}")
            out[i, : len(ids)] = ids
        return out


def load_tokenizer(path: str | os.PathLike | None, *, max_length: int = MAX_LENGTH) -> SiglipTokenizer:
    """`SiglipTokenizer(path, max_length=...)`: a `spiece.model` file or a directory holding one."""
    return SiglipTokenizer(path, max_length=max_length)
