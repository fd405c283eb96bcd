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

import numpy as np

from nety_jax.config.sections import EOS_ID, PAD_ID, SOS_ID, DataConfig
from nety_jax.data.pairs import padded_widths
from nety_jax.data.shards import ShardReader, encode_record
from nety_jax.errors import DataError

WHOLE = (0, 1)
_SKIPPED_PAIR = [np.asarray([EOS_ID], np.int32), np.asarray([SOS_ID], np.int32)]  # no target token: no loss
_SKIPPED_PAIR_RECORD = encode_record(_SKIPPED_PAIR)


def joined(records: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(words, starts, sizes): the int32 words of records whose checksums matched in one array
    (every record is a whole number of them), the word each record starts at and its number of
    words: a batch is then cut with NumPy, not record by record."""
    words = np.frombuffer(b"".join(records), np.int32)
    sizes = np.fromiter(map(len, records), np.int64, len(records)) // 4
    return words, np.cumsum(sizes) - sizes, sizes


def rows_of(words: np.ndarray, starts: np.ndarray, sizes: np.ndarray, width: int) -> np.ndarray:
    """(B, width) int32: row r is ``words[starts[r]: starts[r] + sizes[r]]``, then pads."""
    col = np.arange(width)
    at = np.minimum(starts[:, None] + col, max(len(words) - 1, 0))
    return np.where(col < sizes[:, None], words[at], PAD_ID).astype(np.int32, copy=False)


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
        if self.order is None:
            return idx
        records = np.asarray(self.order[idx])
        if records.size and not (0 <= records.min() and records.max() < len(self.reader)):
            raise DataError(f"{self.reader.directory}: its order file names records it does not have; prepare "
                            "the data again")
        return records

    def length(self, i: int) -> int:
        return int(self._lengths[self._records(i)].sum())

    def lengths(self, idx) -> np.ndarray:
        return self._lengths[self._records(idx)].sum(axis=1)

    def collate(self, idx, part: tuple[int, int] = WHOLE) -> dict:
        records = self._records(idx)
        s_len, t_len = padded_widths(tuple(int(v) for v in self._lengths[records].max(axis=0)), self.cfg)
        mine = part_of(records, part)
        read = self.reader.records(mine)
        raw = [_SKIPPED_PAIR_RECORD if r is None else r for r in read]
        words, starts, sizes = joined(raw)
        # a pair's record: crc32, 2 (arrays), source size, target size, source ids, target ids
        s_size, t_size = words[starts + 2], words[starts + 3]
        # each intact record has the lengths prepare recorded for it (a record of another prepare has not)
        listed = np.asarray(self._lengths[mine]).reshape(-1, 2)
        intact = np.fromiter((r is not None for r in read), bool, len(read))
        if (words[starts + 1] != 2).any() or (4 + s_size + t_size != sizes).any() or (s_size > s_len).any() \
                or (t_size > t_len + 1).any() or (intact & ((s_size != listed[:, 0]) | (t_size != listed[:, 1]))).any():
            raise DataError(f"{self.reader.directory}: records that are not the pairs its lengths describe; "
                            "prepare the data again")
        tgt = rows_of(words, starts + 4 + s_size, t_size, t_len + 1)
        return {"src": rows_of(words, starts + 4, s_size, s_len), "src_len": s_size.astype(np.int32),
                "tgt_in": tgt[:, :-1], "targets": tgt[:, 1:]}

    def _pair(self, i: int) -> list[np.ndarray]:
        row = self.reader[i]
        return _SKIPPED_PAIR if row is None else row

    def reference(self, i: int) -> list[int]:
        return self._pair(int(self._records(i)))[1][1:].tolist()


class _FixedLength:
    """Examples of one length, ``seq_len + 1`` tokens (``seq_len`` inputs and their targets)."""

    fixed_length = True  # the batcher has nothing to bucket
    seq_len: int

    def length(self, i: int) -> int:
        return self.seq_len + 1

    def lengths(self, idx) -> np.ndarray:
        return np.full(len(idx), self.seq_len + 1, np.int64)


class StreamWindows(_FixedLength):
    """Windows of ``seq_len + 1`` tokens every ``stride`` over a token stream stored in chunks:
    each shard holds a contiguous run of the stream in records of ``chunk`` tokens (its last one
    shorter). The windows are those of ``text.encode_text`` over the same stream."""

    reads_parts = True  # collate(idx, part) reads only that part of a batch

    def __init__(self, reader: ShardReader, shard_tokens: list[int], chunk: int, seq_len: int, stride: int):
        self.reader, self.chunk, self.seq_len = reader, chunk, seq_len
        self.token_offsets = np.cumsum([0] + list(shard_tokens)).tolist()
        self._token_starts = np.asarray(self.token_offsets[:-1], np.int64)
        self._shard_tokens = np.asarray(shard_tokens, np.int64)
        self._record_starts = np.asarray(reader.offsets[:-1], np.int64)
        last = self.token_offsets[-1] - (seq_len + 1)
        self.stride, self.count = stride, (last // stride + 1 if last >= 0 else 1)

    def __len__(self) -> int:
        return self.count

    def collate(self, idx, part: tuple[int, int] = WHOLE) -> dict:
        at = part_of(idx, part).astype(np.int64)[:, None] * self.stride + np.arange(self.seq_len + 1)
        inside = at < self.token_offsets[-1]  # past the stream's end: pads
        rows = np.full(at.shape, PAD_ID, np.int32)
        if inside.any():
            at = np.where(inside, at, 0)
            shard = np.searchsorted(self._token_starts, at, side="right") - 1
            local = at - self._token_starts[shard]
            wanted, which = np.unique((self._record_starts[shard] + local // self.chunk).ravel(),
                                      return_inverse=True)
            words, starts = self._chunks(wanted)
            # a chunk's record: crc32, 1 (array), its size, its ids
            values = words[starts[which.reshape(at.shape)] + 3 + local % self.chunk]
            rows = np.where(inside, values, PAD_ID).astype(np.int32)
        return {"tokens": rows[:, :-1], "targets": rows[:, 1:]}

    def _chunks(self, records: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``joined`` records (global indices) of stream chunks, each checked to hold its chunk's
        size; a skipped one (damaged, ``--skip-bad``) is a chunk of pads."""
        shard = np.searchsorted(self._record_starts, records, side="right") - 1
        first = (records - self._record_starts[shard]) * self.chunk  # the chunk's first token in its shard
        sizes = np.minimum(self.chunk, self._shard_tokens[shard] - first)
        raw = [encode_record([np.full(int(n), PAD_ID, np.int32)]) if r is None else r
               for r, n in zip(self.reader.records(records), sizes)]
        words, starts, lengths = joined(raw)
        if (words[starts + 1] != 1).any() or (words[starts + 2] != sizes).any() or (lengths != 3 + sizes).any():
            raise DataError(f"{self.reader.directory}: records that are not the token stream's chunks of "
                            f"{self.chunk}; prepare the data again")
        return words, starts


class PackedShards(_FixedLength):
    """Packed rows (``packing.PackedRows``), one record each: tokens, targets, segments, positions."""

    reads_parts = True  # collate(idx, part) reads only that part of a batch

    KEYS = ("tokens", "targets", "segments", "positions")

    def __init__(self, reader: ShardReader, seq_len: int):
        self.reader, self.seq_len = reader, seq_len
        self._empty = encode_record([np.zeros(seq_len, np.int32)] * len(self.KEYS))  # a skipped row: all pads

    def __len__(self) -> int:
        return len(self.reader)

    def collate(self, idx, part: tuple[int, int] = WHOLE) -> dict:
        keys, empty = len(self.KEYS), self._empty
        raw = [empty if r is None else r for r in self.reader.records(part_of(idx, part))]
        words, _, sizes = joined(raw)
        head = 2 + keys  # crc32, the number of arrays, their sizes: then the arrays, seq_len ids each
        width = len(empty) // 4
        table = words.reshape(len(raw), width) if (sizes == width).all() else None
        if table is None or (table[:, 1] != keys).any() or (table[:, 2: head] != self.seq_len).any():
            raise DataError(f"{self.reader.directory}: records that are not packed rows of "
                            f"{self.seq_len} ids; prepare the data again")
        table = table[:, head:].reshape(len(raw), keys, self.seq_len)
        return {k: np.ascontiguousarray(table[:, j]) for j, k in enumerate(self.KEYS)}
