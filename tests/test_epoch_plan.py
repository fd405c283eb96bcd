"""The epoch plan in constant time: the index shuffle is a bijection (against a pure-Python
Feistel), a position's batch needs one window's work and memory, the plan is pure in (seed,
epoch), resumes anywhere, covers the epoch once and still buckets by length."""
import types

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import TINY
from nety_jax.config import load_config
from nety_jax.data.batching import PLAN, BatchIterator
from nety_jax.data.index_shuffle import ROUNDS, index_shuffle, keys_of, shuffled_range

MASK64 = (1 << 64) - 1


def _mix_reference(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def _shuffle_reference(position: int, n: int, keys) -> int:
    """The same permutation on Python integers, one position at a time."""
    half = max(1, ((n - 1).bit_length() + 1) // 2)
    mask, x = (1 << half) - 1, position
    while True:
        left, right = x >> half, x & mask
        for key in keys:
            left, right = right, left ^ (_mix_reference(right ^ int(key)) & mask)
        x = (left << half) | right
        if x < n:
            return x


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 5000), seed=st.integers(0, 2**32 - 1), epoch=st.integers(0, 1000))
def test_the_index_shuffle_is_a_permutation_of_the_range(n, seed, epoch):
    keys = keys_of(seed, epoch, 0)
    out = index_shuffle(np.arange(n), n, keys)
    np.testing.assert_array_equal(np.sort(out), np.arange(n))
    for p in (0, n // 2, n - 1):
        assert out[p] == _shuffle_reference(p, n, keys)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(2**31, 2**62), seed=st.integers(0, 2**32 - 1))
def test_the_index_shuffle_of_a_huge_range_is_in_range_distinct_and_the_reference(n, seed):
    keys = keys_of(seed, 0, 0)
    positions = np.unique(np.random.default_rng(seed).integers(0, n, 2000))
    out = index_shuffle(positions, n, keys)
    assert out.min() >= 0 and out.max() < n and len(np.unique(out)) == len(out)
    for p, o in zip(positions[:5], out[:5]):
        assert o == _shuffle_reference(int(p), n, keys)


def test_the_index_shuffle_spreads_each_position_over_the_range():
    """Over 1,500 keys, where position 0 and position 1 land is near uniform over 10 values."""
    n, draws = 10, 1500
    got = np.array([index_shuffle(np.arange(2), n, keys_of(7, k, 0)) for k in range(draws)])
    for column in got.T:
        counts = np.bincount(column, minlength=n)
        chi2 = ((counts - draws / n) ** 2 / (draws / n)).sum()
        assert chi2 < 40, counts  # 9 degrees of freedom: p < 1e-5 past 40
    assert len(keys_of(0, 0, 0)) == ROUNDS
    assert sorted(shuffled_range(50, keys_of(1, 2, count=1)[0]).tolist()) == list(range(50))


class _Lengths:
    """A dataset of ``n`` examples whose lengths are a hash of their index (no per-example memory);
    ``asked`` counts the lengths read."""

    def __init__(self, n: int, top: int = 40):
        self.n, self.top, self.asked = n, top, 0

    def __len__(self):
        return self.n

    def lengths(self, idx):
        self.asked += len(idx)
        hashed = (np.asarray(idx, np.uint64) * np.uint64(2654435761)) >> np.uint64(7)
        return (hashed % np.uint64(self.top)).astype(np.int64) + 1

    def length(self, i):
        return int(self.lengths([i])[0])

    def collate(self, idx):
        return {"idx": np.asarray(idx)}


def _epoch(it, epoch):
    return np.stack([it.indices(epoch, i) for i in range(it.batches_per_epoch)])


def test_a_resume_in_the_middle_of_a_large_epoch_reads_one_window_of_lengths():
    """The old plan shuffled and sorted the whole epoch before its first batch (2 M lengths read
    here); now a position's batch reads its window's lengths alone and holds one window."""
    data, b = _Lengths(2_000_000), 64
    it = BatchIterator(data, b, seed=5, index=(len(data) // b) // 2)
    batch = next(it)["idx"]
    assert data.asked == BatchIterator.WINDOW * b
    assert it._cached[1].size == BatchIterator.WINDOW * b
    assert len(batch) == b and batch.min() >= 0 and batch.max() < len(data)
    for _ in range(BatchIterator.WINDOW - 1 - it.index % BatchIterator.WINDOW):
        next(it)  # the rest of the window: nothing more read
    assert data.asked == BatchIterator.WINDOW * b


def test_the_plan_covers_the_epoch_once_buckets_by_window_and_is_pure():
    data, b = _Lengths(5_003), 8  # 625 batches: 12 windows of 50 and one of 25; 3 examples left out
    it = BatchIterator(data, b, seed=3)
    epoch = _epoch(it, 0)
    assert epoch.shape == (625, b) and len(np.unique(epoch)) == epoch.size
    for start in range(0, 625, BatchIterator.WINDOW):  # a window's batches: disjoint length ranges
        lengths = np.sort(data.lengths(epoch[start: start + BatchIterator.WINDOW].ravel())).reshape(-1, b)
        rows = sorted(data.lengths(batch).tolist() for batch in epoch[start: start + BatchIterator.WINDOW])
        assert [sorted(r) for r in rows] == lengths.tolist()
    again = BatchIterator(_Lengths(5_003), b, seed=3)
    np.testing.assert_array_equal(_epoch(again, 0), epoch)
    assert not np.array_equal(_epoch(it, 1), epoch)
    assert not np.array_equal(_epoch(BatchIterator(data, b, seed=4), 0), epoch)
    left_out = [set(range(len(data))) - set(_epoch(it, e).ravel().tolist()) for e in range(3)]
    assert len({frozenset(s) for s in left_out}) == 3  # each epoch leaves out other examples


def test_iterating_equals_resuming_at_any_position():
    data, b = _Lengths(2_345), 16
    it = BatchIterator(data, b, seed=11)
    run = [next(it)["idx"] for _ in range(2 * it.batches_per_epoch + 7)]
    for position in (0, 1, 49, 50, 51, 99, it.batches_per_epoch - 1, it.batches_per_epoch + 3):
        resumed = BatchIterator(data, b, seed=11, index=position)
        np.testing.assert_array_equal(next(resumed)["idx"], run[position])
        np.testing.assert_array_equal(next(resumed)["idx"], run[position + 1])


def _padding(batches, lengths) -> float:
    rows = lengths[batches]
    return float((rows.max(axis=1, keepdims=True) - rows).sum() / (rows.max(axis=1).sum() * batches.shape[1]))


def test_bucketing_cuts_padding_as_sorting_within_the_window_does():
    """On lognormal lengths (1-200), padding is a third of an unsorted shuffle's."""
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(3, 0.8, 20_000), 1, 200).astype(np.int64)
    data = _Fixed(lengths)
    it = BatchIterator(data, 32, seed=0)
    epoch = _epoch(it, 0)
    unsorted = rng.permutation(len(lengths))[: epoch.size].reshape(epoch.shape)
    assert _padding(epoch, lengths) < _padding(unsorted, lengths) / 3


class _Fixed:
    def __init__(self, lengths):
        self._lengths = lengths

    def __len__(self):
        return len(self._lengths)

    def lengths(self, idx):
        return self._lengths[idx]


def test_a_checkpoint_of_the_earlier_plan_resumes_at_its_position_and_says_so():
    from nety_jax.training.setup import _data_position
    cfg = load_config(TINY)
    data, said = types.SimpleNamespace(fingerprint="f"), []
    saved = {"epoch": 2, "index": 7, "fingerprint": "f", "batch_size": cfg.train.batch_size}
    assert _data_position(saved, data, cfg, said.append) == {"epoch": 2, "index": 7}
    assert len(said) == 1 and "earlier version's batch order" in said[0] and "epoch 2" in said[0]
    said.clear()
    assert _data_position({**saved, "plan": PLAN}, data, cfg, said.append) == {"epoch": 2, "index": 7}
    assert not said


@pytest.mark.parametrize("fixed_length", [False, True])
def test_equal_lengths_keep_the_shuffled_order(fixed_length):
    """Datasets of one length skip the sort (``fixed_length``): the same batches as sorting them."""
    data = _Fixed(np.full(1000, 9))
    if fixed_length:
        data.fixed_length = True
    it = BatchIterator(data, 10, seed=2)
    reference = index_shuffle(np.arange(1000), 1000, keys_of(2, 0, 0)).reshape(100, 10)
    assert sorted(map(tuple, _epoch(it, 0).tolist())) == sorted(map(tuple, reference.tolist()))


@pytest.mark.parametrize("limit", [0, 3])
def test_validation_batches_of_one_length_are_the_sorted_ones_without_the_sort(limit):
    """``fixed_length`` data (streamed windows) skip the validation sort and its per-example
    lengths: the same batches."""
    from nety_jax.data.batching import eval_batches

    class Rows(_Fixed):
        asked = 0

        def lengths(self, idx):
            self.asked += len(idx)
            return super().lengths(idx)

        def collate(self, idx):
            return {"idx": np.asarray(idx)[:, None]}

    fixed, plain = Rows(np.full(45, 7)), Rows(np.full(45, 7))
    fixed.fixed_length = True
    got, want = eval_batches(fixed, 8, limit), eval_batches(plain, 8, limit)
    assert len(got) == len(want) == (limit or 6) and fixed.asked == 0 and plain.asked == 45
    for x, y in zip(got, want):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
