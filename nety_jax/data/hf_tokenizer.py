"""HuggingFace tokenizers (the ``tokenizers`` library) behind our special ids: ``data.tokenizer: hf``.

Our ids 0-3 are pad, sos, eos and unk everywhere (losses, decoding, data). A HuggingFace
vocabulary has its own: GPT-2 has one, ``<|endoftext|>`` (50256), its bos, eos and unk
at once, and no pad. So an HF tokenizer is held with an id map, not changed:

- each of our four specials is the HF id that plays its role (``specials``: GPT-2's eos
  is 50256) or, when the vocabulary has none, an id of ours that no HF id maps to (its
  logit is blocked: ``model.blocked_ids``, so the model never predicts it);
- every other HF id keeps its order after them: ours = 4 + its rank among the non-special
  HF ids (GPT-2: HF id i < 50256 is our id i + 4).

A GPT-2 model then has 3 more embedding rows than in HuggingFace (50260: pad, sos and unk,
zeros, never read for a real token), and export writes exactly the HF rows back. A tokenizer
we train ourselves puts ``<pad> <sos> <eos> <unk>`` at HF ids 0-3: the map is the identity.

In a run directory: ``tokenizer.json`` (our descriptor: type hf, the specials, the model's
vocabulary size) and ``hf_tokenizer.json`` (the ``tokenizers`` file, unchanged).
"""
from __future__ import annotations

import json
import os
from typing import Iterable, Optional, Sequence

import numpy as np

from nety_jax.config.sections import UNK_ID
from nety_jax.data.tokenizer import SPECIALS, Tokenizer, write_descriptor
from nety_jax.errors import DataError

FILE = "hf_tokenizer.json"
ROLES = ("pad", "sos", "eos", "unk")  # our ids 0, 1, 2, 3
BYTE_ALPHABET = 256


def require_tokenizers():
    """The `tokenizers` package, or a one-line DataError saying how to install it."""
    try:
        import tokenizers
    except ImportError:
        raise DataError("data.tokenizer=hf needs the `tokenizers` package: pip install tokenizers") from None
    return tokenizers


class HFTokenizer(Tokenizer):
    """A ``tokenizers.Tokenizer`` with its ids mapped to ours (see the module docstring)."""

    subwords = True  # a word may span several ids (predict-next extends them)

    def __init__(self, tok, specials: dict, model_vocab: Optional[int] = None, where: str = "tokenizer"):
        self.tok = tok
        n = int(model_vocab or tok.get_vocab_size(with_added_tokens=True))
        self.specials = {role: (None if specials.get(role) is None else int(specials[role])) for role in ROLES}
        present = [i for i in self.specials.values() if i is not None]
        if any(not 0 <= i < n for i in present) or len(set(present)) != len(present):
            raise DataError(f"{where}: special ids {self.specials} must be distinct ids below the "
                            f"vocabulary size {n}")
        self.model_vocab = n
        self.to_ours = np.empty(n, np.int64)
        rest = np.setdiff1d(np.arange(n), np.asarray(present, np.int64))
        self.to_ours[rest] = len(ROLES) + np.arange(len(rest))
        self.to_hf = np.full(len(ROLES) + len(rest), -1, np.int64)
        self.to_hf[len(ROLES):] = rest
        for ours, role in enumerate(ROLES):
            if self.specials[role] is not None:
                self.to_ours[self.specials[role]] = ours
                self.to_hf[ours] = self.specials[role]

    @property
    def vocab_size(self) -> int:
        return len(self.to_hf)

    @property
    def blocked_ids(self) -> tuple:
        """Our special ids without an HF id: the model must never predict them."""
        return tuple(i for i, role in enumerate(ROLES) if self.specials[role] is None)

    def encode(self, text: str) -> list[int]:
        return self.to_ours[self.tok.encode(text, add_special_tokens=False).ids].tolist()

    def decode(self, ids: Sequence[int]) -> str:
        hf = [int(self.to_hf[i]) for i in self.strip(ids) if 0 <= i < len(self.to_hf) and self.to_hf[i] >= 0]
        return self.tok.decode(hf, skip_special_tokens=False)

    def piece(self, i: int) -> str:
        """The text of one id (specials by our names)."""
        i = int(i)
        if i < len(ROLES) and self.to_hf[i] < 0:
            return SPECIALS[i]
        return self.tok.decode([int(self.to_hf[i])], skip_special_tokens=False) if i < len(self.to_hf) \
            else SPECIALS[UNK_ID]

    def starts_word(self, i: int) -> bool:
        """Byte-level BPE marks a word start with a leading space (U+0120), SentencePiece-style
        vocabularies with U+2581."""
        i = int(i)
        token = self.tok.id_to_token(int(self.to_hf[i])) if i < len(self.to_hf) and self.to_hf[i] >= 0 else None
        return bool(token) and token[0] in ("\u0120", "\u2581", " ")

    def save(self, directory: str) -> None:
        with open(os.path.join(directory, FILE), "w", encoding="utf-8") as f:
            f.write(self.tok.to_str())
        write_descriptor(directory, {"type": "hf", "file": FILE, "specials": self.specials,
                                     "model_vocab": self.model_vocab})

    @classmethod
    def from_file(cls, path: str, specials: dict, model_vocab: Optional[int] = None) -> "HFTokenizer":
        tokenizers = require_tokenizers()
        try:
            tok = tokenizers.Tokenizer.from_file(path)
        except OSError as e:
            raise DataError(f"{path}: cannot read the tokenizer ({e.strerror or e})") from None
        except Exception as e:  # tokenizers raises its own Exception for malformed files
            raise DataError(f"{path}: not a `tokenizers` tokenizer file ({str(e).splitlines()[0][:160]})") from None
        return cls(tok, specials, model_vocab, where=path)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, lowercase: bool = False) -> "HFTokenizer":
        """A byte-level BPE (GPT-2's kind) with our four specials at ids 0-3."""
        tokenizers = require_tokenizers()
        from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers
        if vocab_size < BYTE_ALPHABET + len(SPECIALS) + 1:
            raise DataError(f"data.vocab_size={vocab_size} is too small for a byte-level BPE: use at least "
                            f"{BYTE_ALPHABET + len(SPECIALS) + 1} (256 bytes, 4 special ids and a merge)")
        tok = tokenizers.Tokenizer(models.BPE())
        if lowercase:
            tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(list(texts), trainer)
        return cls(tok, dict(zip(ROLES, range(len(ROLES)))))


def byte_level_bpe(vocab_path: str, merges_path: str, special_tokens: Sequence[str] = ()):
    """GPT-2's slow-tokenizer files (vocab.json + merges.txt) as a ``tokenizers`` byte-level BPE,
    as transformers converts them: the GPT-2 split pattern, no prefix space, ByteLevel decoding."""
    require_tokenizers()
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    try:
        bpe = models.BPE.from_file(vocab_path, merges_path)
    except Exception as e:  # tokenizers raises its own Exception type for bad files
        raise DataError(f"{vocab_path} / {merges_path}: not a BPE vocabulary and merges "
                        f"({str(e).splitlines()[0][:160]})") from None
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([t for t in special_tokens if tok.token_to_id(t) is not None])
    return tok


def load_hf_tokenizer(directory: str, info: dict, path: str) -> HFTokenizer:
    """Our run directory's hf tokenizer, from its descriptor ``info`` (read from ``path``)."""
    specials = info.get("specials")
    if not isinstance(specials, dict) or not all(v is None or isinstance(v, int) for v in specials.values()):
        raise DataError(f"{path}: an hf tokenizer descriptor needs 'specials' (role -> id or null)")
    vocab = info.get("model_vocab")
    if vocab is not None and (not isinstance(vocab, int) or vocab < 1):
        raise DataError(f"{path}: 'model_vocab' must be a positive integer")
    return HFTokenizer.from_file(os.path.join(directory, info["file"]), specials, vocab)


def read_special_tokens(tokenizer_config_path: str) -> dict:
    """tokenizer_config.json's special token strings (bos, eos, unk, pad), where given."""
    if not os.path.isfile(tokenizer_config_path):
        return {}
    try:
        with open(tokenizer_config_path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:  # its special tokens would be lost
        raise DataError(f"{tokenizer_config_path}: unreadable ({str(e).splitlines()[0][:160]})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{tokenizer_config_path}: expected a JSON object")
    out = {}
    for role in ("bos", "eos", "unk", "pad"):
        value = raw.get(f"{role}_token")
        if isinstance(value, dict):  # an AddedToken written as a mapping
            value = value.get("content")
        if isinstance(value, str):
            out[role] = value
    return out
