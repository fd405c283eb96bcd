"""Document-aware packing for language models: several documents per row, kept apart.

A document is one text line. Its example is ``ids <eos>``: the model reads ``ids``
from position 0, as a prompt is read at inference, and predicts each next token and
the closing ``<eos>`` (the token stream, ``nety_jax.data.text``, also predicts a line's
first token from the lines before; a document has none). A document longer than
``seq_len + 1`` tokens is cut into pieces of at most ``seq_len + 1`` tokens that
overlap by one (as the stream's windows do), each piece a segment of its own. Pieces are placed in their order, each in the first of the last ``OPEN_ROWS``
rows it fits in, else in a new row (first fit over a bounded window: a pure
function of the text, linear in its length).

A row holds ``tokens`` and ``targets`` (0 pads), ``segments`` (1, 2, ... per piece,
0 on padding) and ``positions`` (0, 1, ... within each piece): a model attends
within a segment only and places each token at its position in its piece, so a
document's loss in a packed row equals its loss alone.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from nety_jax.config.sections import EOS_ID, PAD_ID

OPEN_ROWS = 64  # rows a piece may still join (first fit among them)


@dataclasses.dataclass
class PackedRows:
    """Rows of ``seq_len`` inputs, each holding one or more document pieces (segments)."""

    tokens: np.ndarray  # (R, seq_len) int32
    targets: np.ndarray  # (R, seq_len) int32
    segments: np.ndarray  # (R, seq_len) int32, 0 on padding
    positions: np.ndarray  # (R, seq_len) int32
    documents: int  # pieces packed (documents, and the extra pieces of long ones)

    def __len__(self):
        return len(self.tokens)

    def length(self, i: int) -> int:
        return self.tokens.shape[1] + 1

    def collate(self, idx) -> dict:
        idx = np.asarray(idx)
        return {"tokens": self.tokens[idx], "targets": self.targets[idx], "segments": self.segments[idx],
                "positions": self.positions[idx]}


def document_pieces(ids: list[int], seq_len: int) -> list[list[int]]:
    """``ids <eos>`` in pieces of at most ``seq_len + 1`` tokens overlapping by one."""
    doc = list(ids) + [EOS_ID]
    return [doc[start: start + seq_len + 1] for start in range(0, len(doc) - 1, seq_len)]


def _place(pieces: list[list[int]], seq_len: int) -> list[list[list[int]]]:
    """Rows of pieces: each piece in the first recent row with room for its inputs."""
    rows, fills = [], []
    for piece in pieces:
        n = len(piece) - 1
        r = next((r for r in range(max(len(rows) - OPEN_ROWS, 0), len(rows)) if fills[r] + n <= seq_len),
                 len(rows))
        if r == len(rows):
            rows.append([])
            fills.append(0)
        rows[r].append(piece)
        fills[r] += n
    return rows


def pack(pieces: list[list[int]], seq_len: int) -> PackedRows:
    """Pieces (each at most ``seq_len + 1`` tokens) packed into rows of ``seq_len`` inputs."""
    rows = _place(pieces, seq_len)
    shape = (max(len(rows), 1), seq_len)
    tokens, targets = np.full(shape, PAD_ID, np.int32), np.full(shape, PAD_ID, np.int32)
    segments, positions = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
    for r, row in enumerate(rows):
        at = 0
        for s, piece in enumerate(row, 1):
            n = len(piece) - 1
            tokens[r, at: at + n], targets[r, at: at + n] = piece[:-1], piece[1:]
            segments[r, at: at + n], positions[r, at: at + n] = s, np.arange(n)
            at += n
    return PackedRows(tokens, targets, segments, positions, len(pieces))


def pack_text(lines: list[str], tokenizer, seq_len: int) -> PackedRows:
    pieces = [p for line in lines for p in document_pieces(tokenizer.encode(line), seq_len)]
    return pack(pieces, seq_len)
