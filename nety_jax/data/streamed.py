"""Datasets read from prepared shards (``data.shards``), batched like the in-memory ones.

Each has ``len()``, ``length(i)``, ``lengths(indices)`` (vectorized, for bucketing) and
``collate(indices, part=(p, n))``: the batch the in-memory dataset of the same examples
collates, or with ``part`` only the ``p``-th of ``n`` equal row slices of it, read from
disk alone and padded to the whole batch's shape (every process of a multi-host job reads
its own rows). Nothing but the shards' offsets and the memory-mapped lengths stays in memory.

A damaged record skipped under ``--skip-bad`` (the reader gives ``None``, ``shards.Damage``
counts it) becomes a row the loss ignores, never a shorter batch: a pair becomes ``<eos>`` ->
``<sos>`` (no target token), a stream chunk becomes pads (targets never scored), a packed row
becomes all pads. The batch plan, its shapes and a resumed run's batches are unchanged.
"""
from __future__ import annotations

import bisect

import numpy as np

from nety_jax.config.sections import EOS_ID, PAD_ID, SOS_ID, DataConfig
from nety_jax.data.pairs import pad_pairs
from nety_jax.data.shards import ShardReader

WHOLE = (0, 1)
_SKIPPED_PAIR = [np.asarray([EOS_ID], np.int32), np.asarray([SOS_ID], np.int32)]  # no target token: no loss


def part_of(idx, part: tuple[int, int]) -> np.ndarray:
    p, n = part
    idx = np.asarray(idx)
    size = len(idx) // n
    return idx[p * size: (p + 1) * size]


class PairShards:
    """Framed (source, target) pairs; ``lengths`` is (N, 2) source / target ids of the records;
    ``order`` (N,) the record of each example (shards hold a split in file order, its dataset is
    in the split's random order: ``tasks.SplitPlan``), None when they are the same."""

    reads_parts = True  # collate(idx, part) reads only that part of a batch

    def __init__(self, reader: ShardReader, lengths: np.ndarray, cfg: DataConfig, order=None):
        self.reader, self._lengths, self.cfg, self.order = reader, lengths, cfg, order

    def __len__(self) -> int:
        return len(self.reader)

    def _records(self, idx) -> np.ndarray:
        idx = np.asarray(idx)
        return idx if self.order is None else np.asarray(self.order[idx])

    def length(self, i: int) -> int:
        return int(self._lengths[self._records(i)].sum())

    def lengths(self, idx) -> np.ndarray:
        return self._lengths[self._records(idx)].sum(axis=1)

    def collate(self, idx, part: tuple[int, int] = WHOLE) -> dict:
        longest = tuple(int(v) for v in self._lengths[self._records(idx)].max(axis=0))
        rows = [self._pair(int(i)) for i in self._records(part_of(idx, part))]
        return pad_pairs([r[0] for r in rows], [r[1] for r in rows], self.cfg, longest)

    def _pair(self, i: int) -> list[np.ndarray]:
        row = self.reader[i]
        return _SKIPPED_PAIR if row is None else row

    def reference(self, i: int) -> list[int]:
        return self._pair(int(self._records(i)))[1][1:].tolist()


class StreamWindows:
    """Windows of ``seq_len + 1`` tokens every ``stride`` over a token stream stored in chunks:
    each shard holds a contiguous run of the stream in records of ``chunk`` tokens (its last one
    shorter). The windows are those of ``text.encode_text`` over the same stream."""

    reads_parts = True  # collate(idx, part) reads only that part of a batch
    fixed_length = True  # every example has one length: the batcher has nothing to bucket

    def __init__(self, reader: ShardReader, shard_tokens: list[int], chunk: int, seq_len: int, stride: int):
        self.reader, self.chunk, self.seq_len = reader, chunk, seq_len
        self.token_offsets = np.cumsum([0] + list(shard_tokens)).tolist()
        last = self.token_offsets[-1] - (seq_len + 1)
        self.stride, self.count = stride, (last // stride + 1 if last >= 0 else 1)

    def __len__(self) -> int:
        return self.count

    def length(self, i: int) -> int:
        return self.seq_len + 1

    def lengths(self, idx) -> np.ndarray:
        return np.full(len(idx), self.seq_len + 1, np.int64)

    def tokens(self, start: int, stop: int) -> np.ndarray:
        """Stream tokens ``[start, stop)`` (cut at the stream's end)."""
        stop, out = min(stop, self.token_offsets[-1]), []
        while start < stop:
            k = bisect.bisect_right(self.token_offsets, start) - 1
            local = start - self.token_offsets[k]
            record = self.reader.offsets[k] + local // self.chunk
            piece = self._chunk(k, record, local)[local % self.chunk:]
            piece = piece[: stop - start]
            out.append(piece)
            start += len(piece)
        return np.concatenate(out) if out else np.zeros(0, np.int32)

    def _chunk(self, k: int, record: int, local: int) -> np.ndarray:
        """The tokens of one record (shard ``k``, stream offset ``local`` in it); pads if skipped."""
        got = self.reader[record]
        if got is not None:
            return got[0]
        first = local - local % self.chunk
        return np.full(min(self.chunk, self.token_offsets[k + 1] - self.token_offsets[k] - first), PAD_ID, np.int32)

    def collate(self, idx, part: tuple[int, int] = WHOLE) -> dict:
        idx = part_of(idx, part)
        rows = np.full((len(idx), self.seq_len + 1), PAD_ID, np.int32)
        for r, i in enumerate(idx):
            piece = self.tokens(int(i) * self.stride, int(i) * self.stride + self.seq_len + 1)
            rows[r, : len(piece)] = piece
        return {"tokens": rows[:, :-1], "targets": rows[:, 1:]}


class PackedShards:
    """Packed rows (``packing.PackedRows``), one record each: tokens, targets, segments, positions."""

    reads_parts = True  # collate(idx, part) reads only that part of a batch

    KEYS = ("tokens", "targets", "segments", "positions")
    fixed_length = True  # every example has one length: the batcher has nothing to bucket

    def __init__(self, reader: ShardReader, seq_len: int):
        self.reader, self.seq_len = reader, seq_len

    def __len__(self) -> int:
        return len(self.reader)

    def length(self, i: int) -> int:
        return self.seq_len + 1

    def lengths(self, idx) -> np.ndarray:
        return np.full(len(idx), self.seq_len + 1, np.int64)

    def collate(self, idx, part: tuple[int, int] = WHOLE) -> dict:
        rows = [self.reader[int(i)] for i in part_of(idx, part)]
        empty = [np.zeros(self.seq_len, np.int32)] * len(self.KEYS)  # a skipped row: all pads
        rows = [empty if r is None else r for r in rows]
        return {k: np.stack([r[j] for r in rows]).astype(np.int32) for j, k in enumerate(self.KEYS)}
