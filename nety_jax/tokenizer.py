"""Tokenizers with NETY's special ids (pad 0, sos 1, eos 2, unk 3).

``SentencePieceTokenizer`` (our default) is trained on the user's corpus.
``WordTokenizer`` is NETY's own vocabulary (lowercase, whitespace split), used
for weights imported from PyTorch. Both are saved in a run directory as
``tokenizer.json`` (the type) plus their model file.
"""
from __future__ import annotations

import io
import json
import os
from typing import Iterable, Sequence

import sentencepiece as spm

from nety_jax.config import EOS_ID, PAD_ID, SOS_ID, UNK_ID
from nety_jax.errors import DataError

SPECIALS = ("<pad>", "<sos>", "<eos>", "<unk>")


class Tokenizer:
    pad_id, sos_id, eos_id, unk_id = PAD_ID, SOS_ID, EOS_ID, UNK_ID

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def save(self, directory: str) -> None:
        raise NotImplementedError

    @staticmethod
    def strip(ids: Sequence[int]) -> list[int]:
        """Ids up to the first <eos>, without specials."""
        out = []
        for i in ids:
            i = int(i)
            if i == EOS_ID:
                break
            if i not in (PAD_ID, SOS_ID):
                out.append(i)
        return out


class SentencePieceTokenizer(Tokenizer):
    FILE = "tokenizer.model"

    def __init__(self, model_proto: bytes):
        self.proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, model_type: str = "unigram",
              lowercase: bool = False) -> "SentencePieceTokenizer":
        texts = [t.lower() if lowercase else t for t in texts]
        out = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=out, vocab_size=vocab_size,
            model_type=model_type, hard_vocab_limit=False, character_coverage=1.0,
            pad_id=PAD_ID, bos_id=SOS_ID, eos_id=EOS_ID, unk_id=UNK_ID,
            pad_piece=SPECIALS[0], bos_piece=SPECIALS[1], eos_piece=SPECIALS[2],
            unk_piece=SPECIALS[3], minloglevel=2, num_threads=2)
        tok = cls(out.getvalue())
        tok.lowercase = lowercase
        return tok

    lowercase = False

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text.lower() if self.lowercase else text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode(self.strip(ids))

    def save(self, directory: str) -> None:
        with open(os.path.join(directory, self.FILE), "wb") as f:
            f.write(self.proto)
        _write_descriptor(directory, {"type": "sentencepiece", "file": self.FILE,
                                      "lowercase": self.lowercase})


class WordTokenizer(Tokenizer):
    """NETY's vocabulary: ``text.lower().split()`` looked up in ``word_to_idx``."""

    FILE = "vocab.json"

    def __init__(self, word_to_idx: dict[str, int]):
        self.word_to_idx = dict(word_to_idx)
        self.idx_to_word = {i: w for w, i in self.word_to_idx.items()}

    @classmethod
    def load_vocab(cls, path: str) -> "WordTokenizer":
        try:
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
        except FileNotFoundError:
            raise DataError(f"{path}: vocabulary file not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: not a JSON vocabulary ({e})") from None
        if not isinstance(raw, dict):
            raise DataError(f"{path}: expected a JSON object with 'word_to_idx'")
        w2i = raw.get("word_to_idx", raw if all(isinstance(v, int) for v in raw.values()) else None)
        if not isinstance(w2i, dict) or not w2i:
            raise DataError(f"{path}: missing 'word_to_idx' mapping")
        if not all(isinstance(k, str) and isinstance(v, int) for k, v in w2i.items()):
            raise DataError(f"{path}: 'word_to_idx' must map words to integer ids")
        ids = sorted(w2i.values())
        if ids != list(range(len(ids))):
            raise DataError(f"{path}: ids in 'word_to_idx' must be 0..{len(ids) - 1} without gaps")
        return cls(w2i)

    @classmethod
    def build(cls, texts: Iterable[str], vocab_size: int) -> "WordTokenizer":
        """NETY-style vocabulary from a corpus: specials, then words by frequency."""
        counts: dict[str, int] = {}
        for text in texts:
            for w in text.lower().split():
                counts[w] = counts.get(w, 0) + 1
        words = sorted(counts, key=lambda w: (-counts[w], w))[: max(vocab_size - len(SPECIALS), 0)]
        return cls({w: i for i, w in enumerate(list(SPECIALS) + words)})

    @property
    def vocab_size(self) -> int:
        return len(self.word_to_idx)

    def encode(self, text: str) -> list[int]:
        return [self.word_to_idx.get(w, UNK_ID) for w in text.lower().split()]

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.idx_to_word.get(i, SPECIALS[UNK_ID]) for i in self.strip(ids))

    def save(self, directory: str) -> None:
        with open(os.path.join(directory, self.FILE), "w", encoding="utf-8") as f:
            json.dump({"word_to_idx": self.word_to_idx,
                       "idx_to_word": {str(i): w for i, w in self.idx_to_word.items()}},
                      f, ensure_ascii=False)
        _write_descriptor(directory, {"type": "word", "file": self.FILE})


def _write_descriptor(directory: str, info: dict) -> None:
    with open(os.path.join(directory, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(info, f)


def load_tokenizer(directory: str) -> Tokenizer:
    path = os.path.join(directory, "tokenizer.json")
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: no tokenizer in this run directory") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: unreadable ({e})") from None
    file = os.path.join(directory, info.get("file", ""))
    if info.get("type") == "sentencepiece":
        with open(file, "rb") as f:
            tok = SentencePieceTokenizer(f.read())
        tok.lowercase = bool(info.get("lowercase", False))
        return tok
    if info.get("type") == "word":
        return WordTokenizer.load_vocab(file)
    raise DataError(f"{path}: unknown tokenizer type {info.get('type')!r}")
