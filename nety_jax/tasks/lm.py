"""Language modelling: plain text in, a continuation of a prefix out.

Text files are read line by line (``nety_jax.data.text``); the validation split is the last
lines, so no window crosses from training into validation text. The lines become
one token stream cut into windows of ``data.seq_len + 1`` tokens every
``data.stride``; a batch is ``{"tokens", "targets"}``. With ``data.packing`` each
line is a document instead, several to a row and kept apart (``nety_jax.data.packing``;
batches add ``segments`` and ``positions``). A prompt is a prefix (its end kept
when too long); a chat's whole conversation is the text continued.
"""
from __future__ import annotations

import hashlib
from typing import ClassVar, Sequence

import numpy as np

from nety_jax.data.packing import pack_text
from nety_jax.data.text import default_text_path, encode_text, read_text, split_text, window_sizes
from nety_jax.errors import ConfigError
from nety_jax.tasks.base import Corpus, DataSplit, Task
from nety_jax.tasks.prompting import PrefixPrompts


class LanguageModelTask(Task):
    name: ClassVar[str] = "lm"
    noun: ClassVar[str] = "a language model"
    data_option: ClassVar[str] = "--text"
    data_help: ClassVar[str] = "text files"
    default_val_fraction: ClassVar[float] = 0.1
    continues_text: ClassVar[bool] = True

    def default_paths(self) -> list[str]:
        return [default_text_path()]

    def read(self, cfg, paths: Sequence[str], skip_bad: bool) -> Corpus:
        report = read_text(paths, skip_bad=skip_bad)
        train, val = split_text(report.lines, self.val_fraction(cfg.data))
        return Corpus(train, val, train, report.skipped, report.first_error)

    def encode(self, cfg, tokenizer, corpus: Corpus, source: str) -> DataSplit:
        if cfg.data.subword_alpha > 0:
            raise ConfigError(f"data.subword_alpha={cfg.data.subword_alpha} re-segments (input, target) "
                              f"pairs; the {self.name} task trains on a token stream: set it to 0")
        seq_len, stride = window_sizes(cfg.data, cfg.model.max_len)
        if cfg.data.packing:
            return self._packed(cfg, tokenizer, corpus, source, seq_len)
        tr = encode_text(corpus.train, tokenizer, seq_len, stride)
        va = encode_text(corpus.val, tokenizer, seq_len, seq_len)
        desc = (f"{len(tr)} training / {len(va)} validation windows of {seq_len} tokens "
                f"({len(tr.stream):,} / {len(va.stream):,} tokens) from {source}")
        return DataSplit(tr, va, _fingerprint(tr), desc)

    def _packed(self, cfg, tokenizer, corpus: Corpus, source: str, seq_len: int) -> DataSplit:
        tr, va = (pack_text(lines, tokenizer, seq_len) for lines in (corpus.train, corpus.val))
        filled = lambda rows: int(np.sum(rows.segments > 0)) / max(rows.segments.size, 1)
        desc = (f"{len(tr)} training / {len(va)} validation packed rows of {seq_len} tokens "
                f"({tr.documents:,} / {va.documents:,} documents, {100 * filled(tr):.0f}% / "
                f"{100 * filled(va):.0f}% filled) from {source}")
        return DataSplit(tr, va, _packed_fingerprint(tr), desc)

    def example_prompt(self, item) -> str:
        return item

    def prompts(self, model_cfg) -> PrefixPrompts:
        return PrefixPrompts(model_cfg)

    def chat_prompt(self, messages: Sequence[tuple[str, str]]) -> str:
        """The conversation's text, one message a line (the model continues it)."""
        return "\n".join(content for _, content in messages if content.strip())


def _packed_fingerprint(rows) -> str:
    h = hashlib.sha256()
    for a in (rows.tokens, rows.targets, rows.segments):
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _fingerprint(windows) -> str:
    h = hashlib.sha256()
    h.update(windows.stream.tobytes())
    h.update(windows.starts.tobytes())
    return h.hexdigest()[:16]
