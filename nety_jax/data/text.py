"""Plain text for language models: reading, a contiguous split, and sliding windows.

Every non-empty line is encoded and ended with <eos>, the lines are joined into
one token stream, and training examples are windows of ``seq_len + 1`` tokens
taken every ``stride`` tokens (inputs are the first ``seq_len``, targets the
last ``seq_len``). The validation split is the LAST fraction of the lines, so no
window crosses from training into validation text.
"""
from __future__ import annotations

import dataclasses
import os
from importlib import resources
from typing import Iterator, Optional, Sequence

import numpy as np

from nety_jax.config.sections import EOS_ID, PAD_ID, DataConfig
from nety_jax.data.readers import Skips, read_lines
from nety_jax.errors import DataError

DEFAULT_TEXT = "textes_fr.txt"


def default_text_path() -> str:
    return str(resources.files("nety_jax") / "resources" / DEFAULT_TEXT)


@dataclasses.dataclass
class TextReport:
    lines: list[str]
    skipped: int = 0
    first_error: Optional[str] = None


def iter_text(paths: Sequence[str], skip_bad: bool, skips: Skips) -> Iterator[str]:
    """The non-empty lines of one or many UTF-8 (or gzip) text files, in order, read as they
    are consumed; a bad line raises (or, with ``skip_bad``, is counted in ``skips``)."""
    _distinct(paths)
    for path in paths:
        for _, line, error in read_lines(path, "text file"):
            if error:
                if not skip_bad:
                    raise DataError(error)
                skips.add(error)
            elif line.strip():
                yield line.strip()


def _distinct(paths: Sequence[str]) -> None:
    """A file given twice (``--text a.txt a.txt``, ``./a.txt``, a link to it) is refused: its lines
    would be trained on twice and, since the validation split is the last lines of all the files
    together, the held-out copy's lines trained on too (a flattered validation loss)."""
    seen: dict = {}
    for path in paths:
        real = os.path.realpath(path)
        if real in seen:
            raise DataError(f"{path}: given twice (also as {seen[real]}); each text file is read once")
        seen[real] = path


def no_text(paths: Sequence[str]) -> DataError:
    return DataError(f"{', '.join(paths)}: no text found")


def read_text(paths: Sequence[str], skip_bad: bool = False) -> TextReport:
    """The non-empty lines of one or many UTF-8 (or gzip) text files, in order."""
    skips = Skips()
    lines = list(iter_text(paths, skip_bad, skips))
    if not lines:
        raise no_text(paths)
    return TextReport(lines, skips.skipped, skips.first_error)


def val_count(n: int, val_fraction: float) -> int:
    """How many of ``n`` lines (the last ones) are held out."""
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and n > 1:
        n_val = min(max(n_val, 1), n - 1)
    return n_val


def split_text(lines: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """The first lines for training, the last ``val_fraction`` of them for validation."""
    n_val = val_count(len(lines), val_fraction)
    return lines[: len(lines) - n_val], lines[len(lines) - n_val:]


@dataclasses.dataclass
class Windows:
    """Windows of ``seq_len + 1`` tokens over one stream (stored once, sliced on demand)."""

    stream: np.ndarray
    starts: np.ndarray
    seq_len: int

    def __len__(self):
        return len(self.starts)

    def length(self, i: int) -> int:
        return self.seq_len + 1

    def collate(self, idx) -> dict:
        rows = np.full((len(idx), self.seq_len + 1), PAD_ID, np.int32)
        for r, i in enumerate(idx):
            piece = self.stream[self.starts[i]: self.starts[i] + self.seq_len + 1]
            rows[r, : len(piece)] = piece
        return {"tokens": rows[:, :-1], "targets": rows[:, 1:]}


def encode_text(lines: list[str], tokenizer, seq_len: int, stride: int) -> Windows:
    ids: list[int] = []
    for line in lines:
        ids += tokenizer.encode(line) + [EOS_ID]
    stream = np.asarray(ids, np.int32)
    last = len(stream) - (seq_len + 1)
    starts = np.arange(0, last + 1, stride) if last >= 0 else np.zeros((1,), np.int64)
    return Windows(stream, starts.astype(np.int64), seq_len)


def window_sizes(cfg: DataConfig, max_len: int) -> tuple[int, int]:
    seq_len = cfg.seq_len or max_len
    return seq_len, cfg.stride or seq_len
