"""Plain text for language models: reading, a contiguous split, and sliding windows.

Every non-empty line is encoded and ended with <eos>, the lines are joined into
one token stream, and training examples are windows of ``seq_len + 1`` tokens
taken every ``stride`` tokens (inputs are the first ``seq_len``, targets the
last ``seq_len``). The validation split is the LAST fraction of the lines, so no
window crosses from training into validation text.
"""
from __future__ import annotations

import dataclasses
from importlib import resources
from typing import Optional, Sequence

import numpy as np

from nety_jax.config.sections import EOS_ID, PAD_ID, DataConfig
from nety_jax.data.readers import read_lines
from nety_jax.errors import DataError

DEFAULT_TEXT = "textes_fr.txt"


def default_text_path() -> str:
    return str(resources.files("nety_jax") / "resources" / DEFAULT_TEXT)


@dataclasses.dataclass
class TextReport:
    lines: list[str]
    skipped: int = 0
    first_error: Optional[str] = None


def read_text(paths: Sequence[str], skip_bad: bool = False) -> TextReport:
    """The non-empty lines of one or many UTF-8 (or gzip) text files, in order."""
    report = TextReport(lines=[])
    for path in paths:
        for _, line, error in read_lines(path, "text file"):
            if error:
                if not skip_bad:
                    raise DataError(error)
                report.skipped += 1
                report.first_error = report.first_error or error
            elif line.strip():
                report.lines.append(line.strip())
    if not report.lines:
        raise DataError(f"{', '.join(paths)}: no text found")
    return report


def split_text(lines: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """The first lines for training, the last ``val_fraction`` of them for validation."""
    n_val = int(round(len(lines) * val_fraction))
    if val_fraction > 0 and len(lines) > 1:
        n_val = min(max(n_val, 1), len(lines) - 1)
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
