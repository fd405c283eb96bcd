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
import re
from typing import Iterable, Sequence

import sentencepiece as spm

from nety_jax.config.sections import EOS_ID, PAD_ID, SOS_ID, UNK_ID
from nety_jax.data.bpe_dropout import BpeDropout, is_bpe
from nety_jax.data.unigram_sampling import UnigramSampler
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

    def __init__(self, model_proto: bytes, where: str = "tokenizer"):
        self.proto = model_proto
        if not model_proto:  # SentencePiece would load nothing and log through absl at each call
            raise DataError(f"{where}: is empty (0 bytes), not a SentencePiece model")
        try:
            self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        except (RuntimeError, TypeError, OSError):
            raise DataError(f"{where}: not a SentencePiece model (damaged or truncated? "
                            f"{len(model_proto):,} bytes that do not parse)") from None
        if self.sp.get_piece_size() <= UNK_ID or self.sp.pad_id() != PAD_ID or self.sp.eos_id() != EOS_ID:
            raise DataError(f"{where}: a SentencePiece model without nety-jax's special ids "
                            "(pad 0, sos 1, eos 2, unk 3)")

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, model_type: str = "unigram",
              lowercase: bool = False) -> "SentencePieceTokenizer":
        texts = [piece for t in texts for piece in _sentences(t.lower() if lowercase else t)]
        chars = len(set("".join(texts)))
        if vocab_size < chars + len(SPECIALS) + 1:
            raise DataError(f"data.vocab_size={vocab_size} is smaller than the {chars} distinct "
                            f"characters of the training text plus {len(SPECIALS)} special ids: "
                            f"use at least {chars + len(SPECIALS) + 1}")
        out = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(texts), model_writer=out, vocab_size=vocab_size,
                model_type=model_type, hard_vocab_limit=False, character_coverage=1.0,
                pad_id=PAD_ID, bos_id=SOS_ID, eos_id=EOS_ID, unk_id=UNK_ID,
                pad_piece=SPECIALS[0], bos_piece=SPECIALS[1], eos_piece=SPECIALS[2],
                unk_piece=SPECIALS[3], minloglevel=2, num_threads=2)
        except RuntimeError as e:
            first = (str(e).strip().splitlines() or ["failed"])[-1][:200]
            raise DataError(f"SentencePiece could not train a tokenizer with "
                            f"data.vocab_size={vocab_size} on this text ({first})") from None
        tok = cls(out.getvalue())
        tok.lowercase = lowercase
        return tok

    lowercase = False
    _sampler = None  # built on first use: BpeDropout (BPE models) or UnigramSampler

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text.lower() if self.lowercase else text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode(self.strip(ids))

    def sample(self, text: str, alpha: float, seed: int) -> list[int]:
        """One segmentation drawn from all of them, a pure function of (text, alpha, seed), the
        same in every process, so a resumed run redraws an uninterrupted run's batches.

        BPE models: BPE-dropout with rate alpha (``bpe_dropout``). Unigram models: a segmentation
        drawn with probability proportional to p(segmentation)^alpha (``unigram_sampling``), the
        distribution of SentencePiece's own sampler, which draws differently in each process."""
        if self._sampler is None:
            self._sampler = BpeDropout(self.sp) if is_bpe(self.proto) else UnigramSampler(self.sp)
        return self._sampler.sample(text.lower() if self.lowercase else text, alpha, seed)

    def piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))

    def starts_word(self, i: int) -> bool:
        """True when the piece begins a new word (SentencePiece's leading U+2581)."""
        return self.piece(i).startswith("\u2581")

    def save(self, directory: str) -> None:
        with open(os.path.join(directory, self.FILE), "wb") as f:
            f.write(self.proto)
        write_descriptor(directory, {"type": "sentencepiece", "file": self.FILE,
                                     "lowercase": self.lowercase})


SPM_MAX_BYTES = 4000  # SentencePiece's trainer silently drops sentences over 4192 bytes


def _sentences(text: str) -> list[str]:
    """``text`` cut at spaces into pieces SentencePiece's trainer keeps (a long line was dropped
    whole: its characters became <unk>, or with no shorter line training failed blaming the
    vocabulary size). The tokenizer learns from statistics: the cut loses nothing it needs."""
    if len(text.encode("utf-8", "replace")) <= SPM_MAX_BYTES:
        return [text]
    pieces, current, size = [], [], 0
    for word in text.split(" "):
        n = len(word.encode("utf-8", "replace")) + 1
        if current and size + n > SPM_MAX_BYTES:
            pieces.append(" ".join(current))
            current, size = [], 0
        while n > SPM_MAX_BYTES:  # one 'word' longer than the limit: cut by characters
            cut = _prefix_within(word, SPM_MAX_BYTES)
            pieces.append(word[:cut])
            word = word[cut:]
            n = len(word.encode("utf-8", "replace")) + 1
        current.append(word)
        size += n
    return pieces + [" ".join(current)] if current else pieces


def _prefix_within(word: str, limit: int) -> int:
    """The longest prefix of ``word`` (in characters) whose UTF-8 fits in ``limit`` bytes."""
    size = 0
    for i, c in enumerate(word):
        size += len(c.encode("utf-8", "replace"))
        if size > limit:
            return max(i, 1)
    return len(word)


WORD_SPLITS = ("whitespace", "punctuation")
_WORDS = re.compile(r"\w+(?:['\u2019-]\w+)*|[^\w\s]")


class WordTokenizer(Tokenizer):
    """NETY's vocabulary: ``text.lower().split()`` looked up in ``word_to_idx``.

    ``split="punctuation"`` also separates punctuation from words ("du pain." ->
    "du", "pain", "."), better for a word-level language model.
    """

    FILE = "vocab.json"

    def __init__(self, word_to_idx: dict[str, int], split: str = "whitespace"):
        self.word_to_idx = dict(word_to_idx)
        self.idx_to_word = {i: w for w, i in self.word_to_idx.items()}
        self.split = split

    def words(self, text: str) -> list[str]:
        text = text.lower()
        return _WORDS.findall(text) if self.split == "punctuation" else text.split()

    @classmethod
    def load_vocab(cls, path: str, split: str = "whitespace") -> "WordTokenizer":
        raw = read_json(path, "vocabulary file not found", "not a JSON vocabulary")
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
        by_id = {v: k for k, v in w2i.items()}
        for i, special in enumerate(SPECIALS):  # the model's fixed ids: another word there is read as one
            if by_id.get(i) != special:
                raise DataError(f"{path}: id {i} must be {special!r} (ids 0-3 are {', '.join(SPECIALS)}, as in "
                                f"NETY's vocabulary), found {by_id.get(i)!r}")
        return cls(w2i, split)

    @classmethod
    def build(cls, texts: Iterable[str], vocab_size: int, split: str = "whitespace") -> "WordTokenizer":
        """NETY-style vocabulary from a corpus: specials, then words by frequency."""
        counts: dict[str, int] = {}
        tok = cls({}, split)
        for text in texts:
            for w in tok.words(text):
                counts[w] = counts.get(w, 0) + 1
        words = sorted(counts, key=lambda w: (-counts[w], w))[: max(vocab_size - len(SPECIALS), 0)]
        return cls({w: i for i, w in enumerate(list(SPECIALS) + words)}, split)

    @property
    def vocab_size(self) -> int:
        return len(self.word_to_idx)

    def encode(self, text: str) -> list[int]:
        return [self.word_to_idx.get(w, UNK_ID) for w in self.words(text)]

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.idx_to_word.get(i, SPECIALS[UNK_ID]) for i in self.strip(ids))

    def piece(self, i: int) -> str:
        return self.idx_to_word.get(int(i), SPECIALS[UNK_ID])

    def starts_word(self, i: int) -> bool:
        return True

    def save(self, directory: str) -> None:
        with open(os.path.join(directory, self.FILE), "w", encoding="utf-8") as f:
            json.dump({"word_to_idx": self.word_to_idx,
                       "idx_to_word": {str(i): w for i, w in self.idx_to_word.items()}},
                      f, ensure_ascii=False)
        write_descriptor(directory, {"type": "word", "file": self.FILE, "split": self.split})


def read_json(path: str, missing: str, malformed: str):
    """``path``'s JSON; a missing, malformed or unreadable file (a directory, no permission) is a
    DataError naming it, ``missing`` and ``malformed`` saying what the file should have been."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: {missing}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: {malformed} ({e})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None


def write_descriptor(directory: str, info: dict) -> None:
    """A run directory's ``tokenizer.json``: which tokenizer it holds (``type``), in which file."""
    with open(os.path.join(directory, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(info, f)


def load_tokenizer(directory: str) -> Tokenizer:
    path = os.path.join(directory, "tokenizer.json")
    info = read_json(path, "no tokenizer in this run directory", "unreadable")
    if not isinstance(info, dict) or not isinstance(info.get("file"), str):
        raise DataError(f"{path}: not a tokenizer descriptor (expected type and file)")
    file = os.path.join(directory, info["file"])
    if info.get("type") == "sentencepiece":
        try:
            with open(file, "rb") as f:
                tok = SentencePieceTokenizer(f.read(), where=file)
        except OSError as e:
            raise DataError(f"{file}: cannot read the tokenizer ({e.strerror})") from None
        tok.lowercase = bool(info.get("lowercase", False))
        return tok
    if info.get("type") == "word":
        split = info.get("split", "whitespace")
        if split not in WORD_SPLITS:
            raise DataError(f"{path}: unknown word split {split!r}")
        return WordTokenizer.load_vocab(file, split)
    if info.get("type") == "hf":
        from nety_jax.data.hf_tokenizer import load_hf_tokenizer
        return load_hf_tokenizer(directory, info, path)
    raise DataError(f"{path}: unknown tokenizer type {info.get('type')!r}")
