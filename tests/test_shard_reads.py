"""Reads of prepared shards: a batch's records, every one checked, also from two threads at once;
and the datasets' NumPy-cut batches equal to the ones padded row by row (shards written here, small)."""
import os
import threading
import time

import numpy as np
import pytest

pytest.importorskip("array_record")

from nety_jax.config.sections import EOS_ID, PAD_ID, SOS_ID, DataConfig  # noqa: E402
from nety_jax.data.pairs import pad_pairs  # noqa: E402
from nety_jax.data.shards import Damage, ShardReader, ShardWriter, shard_name  # noqa: E402
from nety_jax.data.streamed import PackedShards, PairShards, StreamWindows  # noqa: E402
from nety_jax.errors import DataError  # noqa: E402


def _write(directory, rows_per_shard: list[list[list[np.ndarray]]]) -> list[dict]:
    shards = []
    for k, rows in enumerate(rows_per_shard):
        writer = ShardWriter(os.path.join(directory, shard_name("train", k)))
        for arrays in rows:
            writer.write(arrays)
        writer.close()
        shards.append({"file": shard_name("train", k), "records": len(rows)})
    return shards


def _pairs(rng, n):
    return [[rng.integers(3, 50, rng.integers(1, 12)).astype(np.int32),
             rng.integers(3, 50, rng.integers(2, 14)).astype(np.int32)] for _ in range(n)]


@pytest.fixture
def pair_shards(tmp_path):
    rng = np.random.default_rng(0)
    rows = [_pairs(rng, n) for n in (7, 1, 12)]
    return str(tmp_path), _write(str(tmp_path), rows), [r for shard in rows for r in shard]


def _flip_record(directory, shard, record_bytes):
    """Flips a byte inside the (uncompressed) record whose bytes are ``record_bytes``."""
    path = os.path.join(directory, shard["file"])
    raw = bytearray(open(path, "rb").read())
    at = bytes(raw).index(record_bytes) + len(record_bytes) - 2
    raw[at] ^= 0xFF
    open(path, "wb").write(bytes(raw))


def test_records_across_shards_in_any_order_are_the_written_ones(pair_shards):
    directory, shards, rows = pair_shards
    reader = ShardReader(directory, shards)
    idx = np.random.default_rng(1).permutation(len(rows)).tolist() + [0, 19, 7, 7]
    got = reader.records(idx)
    assert len(got) == len(idx)
    for i, record in zip(idx, got):
        arrays = reader[i]
        assert all(np.array_equal(a, b) for a, b in zip(arrays, rows[i]))
        assert record is not None and len(record) == 4 * (4 + sum(len(a) for a in rows[i]))


def test_two_threads_reading_one_reader_get_their_own_records(pair_shards, monkeypatch):
    """A reader seeks then reads: the prefetch thread and the main thread must not interleave (the
    readers here yield the interpreter after each seek, as a reader releasing the GIL would)."""
    directory, shards, rows = pair_shards
    reader = ShardReader(directory, shards)
    want = [reader.records([i])[0] for i in range(len(rows))]
    monkeypatch.setattr(reader, "_readers", {k: _Yielding(r) for k, r in reader._readers.items()})
    wrong = []

    def read(seed):
        rng = np.random.default_rng(seed)
        for _ in range(100):
            idx = rng.integers(0, len(rows), 5)
            wrong.extend(int(i) for i, r in zip(idx, reader.records(idx)) if r != want[i])
            time.sleep(0)

    threads = [threading.Thread(target=read, args=(s,)) for s in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong


class _Yielding:
    def __init__(self, reader):
        self.reader = reader

    def seek(self, i):
        self.reader.seek(i)
        time.sleep(0)

    def read(self):
        return self.reader.read()


def test_a_damaged_record_in_a_batch_is_named_or_skipped_alone(pair_shards):
    directory, shards, rows = pair_shards
    from nety_jax.data.shards import encode_record
    _flip_record(directory, shards[2], encode_record(rows[8 + 5]))  # shard 2, record 5
    with pytest.raises(DataError, match=r"train-00002\.arrayrecord: record 5: (damaged|unreadable)"):
        ShardReader(directory, shards).records([0, 8, 13, 9])
    damage = Damage()
    reader = ShardReader(directory, shards, damage)
    for _ in range(2):
        got = reader.records([0, 8, 13, 9])
    assert got[2] is None and all(r is not None for r in got[:2] + got[3:])
    assert damage.count == 1 and "record 5" in damage.first


def _reference_pairs(rows, idx, cfg, lengths, skipped=()):
    longest = tuple(int(v) for v in lengths[idx].max(axis=0))
    picked = [[np.asarray([EOS_ID]), np.asarray([SOS_ID])] if i in skipped else rows[i] for i in idx]
    return pad_pairs([r[0] for r in picked], [r[1] for r in picked], cfg, longest)


def test_pair_batches_equal_the_row_by_row_ones_also_in_parts_and_with_skips(pair_shards):
    directory, shards, rows = pair_shards
    cfg = DataConfig(max_src_len=16, max_tgt_len=16, bucket_multiple=4)
    lengths = np.asarray([[len(s), len(t)] for s, t in rows], np.int32)
    order = np.random.default_rng(2).permutation(len(rows)).astype(np.int32)
    data = PairShards(ShardReader(directory, shards), lengths, cfg, order)
    for idx in (np.arange(8), np.asarray([19, 3, 7, 7, 0, 12])):
        want = _reference_pairs(rows, order[idx], cfg, lengths)
        got = data.collate(idx)
        assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
        halves = [data.collate(idx, (p, 2)) for p in range(2)]
        for k in want:
            np.testing.assert_array_equal(np.concatenate([h[k] for h in halves]), want[k])
    from nety_jax.data.shards import encode_record
    _flip_record(directory, shards[0], encode_record(rows[2]))
    skipping = PairShards(ShardReader(directory, shards, Damage()), lengths, cfg)
    want = _reference_pairs(rows, np.arange(6), cfg, lengths, skipped={2})
    got = skipping.collate(np.arange(6))
    assert all(np.array_equal(got[k], want[k]) for k in want)


def test_windows_cut_from_the_stream_across_chunks_and_shards(tmp_path):
    """A stream of 3 shards (one empty) in chunks of 5: every window is the stream's slice, pads past
    its end; a skipped chunk is pads."""
    rng = np.random.default_rng(3)
    shard_tokens, chunk = [23, 0, 12], 5
    stream = rng.integers(3, 90, sum(shard_tokens)).astype(np.int32)
    pieces, at = [], 0
    for n in shard_tokens:
        part = stream[at: at + n]
        pieces.append([[part[j: j + chunk]] for j in range(0, n, chunk)])
        at += n
    shards = _write(str(tmp_path), pieces)
    for seq_len, stride in ((6, 6), (9, 4), (40, 3)):  # the last: longer than the stream
        data = StreamWindows(ShardReader(str(tmp_path), shards), shard_tokens, chunk, seq_len, stride)
        idx = np.arange(len(data))[::-1]
        got = data.collate(idx)
        want = np.full((len(idx), seq_len + 1), PAD_ID, np.int32)
        for r, i in enumerate(idx):
            piece = stream[i * stride: i * stride + seq_len + 1]
            want[r, : len(piece)] = piece
        np.testing.assert_array_equal(got["tokens"], want[:, :-1])
        np.testing.assert_array_equal(got["targets"], want[:, 1:])
    from nety_jax.data.shards import encode_record
    _flip_record(str(tmp_path), shards[0], encode_record([stream[10:15]]))  # the third chunk
    data = StreamWindows(ShardReader(str(tmp_path), shards, Damage()), shard_tokens, chunk, 6, 6)
    tokens = data.collate(np.arange(len(data)))["tokens"]
    np.testing.assert_array_equal(tokens.ravel()[10:15], PAD_ID)
    np.testing.assert_array_equal(tokens.ravel()[:10], stream[:10])


def test_packed_rows_are_stacked_and_a_skipped_one_is_pads(tmp_path):
    rng = np.random.default_rng(4)
    rows = [[rng.integers(0, 50, 8).astype(np.int32) for _ in PackedShards.KEYS] for _ in range(9)]
    shards = _write(str(tmp_path), [rows[:4], rows[4:]])
    data = PackedShards(ShardReader(str(tmp_path), shards), 8)
    idx = np.asarray([5, 0, 8, 3])
    got = data.collate(idx)
    for j, k in enumerate(PackedShards.KEYS):
        np.testing.assert_array_equal(got[k], np.stack([rows[i][j] for i in idx]))
    from nety_jax.data.shards import encode_record
    _flip_record(str(tmp_path), shards[1], encode_record(rows[8]))
    got = PackedShards(ShardReader(str(tmp_path), shards, Damage()), 8).collate(idx)
    assert (got["tokens"][2] == 0).all() and np.array_equal(got["tokens"][0], rows[5][0])
