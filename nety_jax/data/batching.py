"""A deterministic, resumable, length-bucketed batcher over any dataset.

A dataset has ``len()``, ``length(i)`` (for bucketing) and ``collate(indices) ->
batch``. The batch for a given step is a pure function of (seed, epoch, index):
the checkpoint stores ``{"epoch", "index"}`` and resuming continues exactly.

The plan is of GLOBAL batches: a batch's examples depend on (seed, epoch, index) and the
batch size, never on the number of processes. A dataset read from shards (``data.streamed``)
collates only this process's ``part`` of each batch (a ``LocalBatch``), so a job resumed on
another number of processes continues at the same global batch: no example is repeated or
skipped (with the same ``train.batch_size``).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from nety_jax.config.sections import PAD_ID
from nety_jax.data.index_shuffle import index_shuffle, keys_of, shuffled_range
from nety_jax.errors import DataError

PLAN = 2  # the version of the order of an epoch's batches (1: a whole-epoch shuffle, before 2026-12)
_EXAMPLES, _BATCHES = 0, 1  # the two shuffles of an epoch, keyed apart


class LocalBatch(dict):
    """This process's rows of a global batch (already sliced: the runner places it as it is)."""


class BatchIterator:
    """Shuffle, sort by length within windows of 50 batches, shuffle the batches of each window.

    ``batches_per_epoch`` is fixed (the remainder is dropped), so the position
    ``(epoch, index)`` identifies a batch exactly. The plan is computed window by window and
    never built whole: the examples of window ``w`` are the positions ``[w * 50 * batch_size,
    (w + 1) * 50 * batch_size)`` of the epoch's shuffle (``index_shuffle``, keyed by (seed,
    epoch)), sorted by length (stable), cut into batches, and those handed out in a shuffled
    order. A position's batch costs one window's work (50 batches' lengths) whatever the corpus
    size, and the plan's memory is one window: a resume in the middle of an epoch reads nothing
    before its position. A window is a uniform sample of the epoch, so its 50 batches span the
    whole range of lengths: consecutive steps see short and long batches alike, as a
    whole-epoch batch shuffle gives.
    """

    WINDOW = 50

    def __init__(self, data, batch_size: int, seed: int, epoch: int = 0, index: int = 0,
                 part: tuple[int, int] = (0, 1)):
        if len(data) < batch_size:
            raise DataError(f"only {len(data)} training example{'s' * (len(data) != 1)} for "
                            f"train.batch_size={batch_size}; "
                            "use more data or a smaller batch")
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.batches_per_epoch = len(data) // batch_size
        self.epoch, self.index = epoch + index // self.batches_per_epoch, index % self.batches_per_epoch
        self._cached = (None, None)  # ((epoch, window), its batches): replaced whole (a thread may read it)
        self.part = part  # (process, processes): only datasets read from shards honour it

    def indices(self, epoch: int, index: int) -> np.ndarray:
        """(batch_size,) int64: the example indices of the global batch at ``(epoch, index)``."""
        window, k = divmod(index, self.WINDOW)
        key, batches = self._cached
        if key != (epoch, window):
            batches = self._window(epoch, window)
            self._cached = ((epoch, window), batches)
        return batches[k]

    def _window(self, epoch: int, window: int) -> np.ndarray:
        """(batches, batch_size) example indices of ``window``'s batches in the order handed out."""
        b, first = self.batch_size, window * self.WINDOW
        count = min(self.WINDOW, self.batches_per_epoch - first)
        slots = np.arange(first * b, (first + count) * b, dtype=np.int64)
        examples = index_shuffle(slots, len(self.data), keys_of(self.seed, epoch, _EXAMPLES))
        if not getattr(self.data, "fixed_length", False):  # equal lengths: a stable sort keeps the order
            examples = examples[np.argsort(_lengths(self.data, examples), kind="stable")]
        order = shuffled_range(count, keys_of(self.seed, epoch, _BATCHES, window, count=1)[0])
        return examples.reshape(count, b)[order]

    def state(self) -> dict:
        return {"epoch": int(self.epoch), "index": int(self.index)}

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        idx = self.indices(self.epoch, self.index)
        self.index += 1
        if self.index == self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        if self.part[1] > 1 and getattr(self.data, "reads_parts", False):
            return LocalBatch(self.data.collate(idx, self.part))
        return self.data.collate(idx)

    def padding_fraction(self, limit: int = WINDOW) -> float:
        """Fraction of pad tokens over (at most ``limit`` batches of) one epoch of batches (the
        integer arrays of ids in the batch; a packed row's ``positions`` start every segment at
        0, which is no padding). Bounded: a streamed epoch is not read at start-up. One window
        by default: a uniform sample of the epoch, bucketed as training buckets it, and every
        (re)start reads it from the shards."""
        pads = total = 0
        for index in range(min(limit, self.batches_per_epoch)):
            window, k = divmod(index, self.WINDOW)
            if not k:  # its own windows: the prefetch thread may be using the iterator's
                batches = self._window(self.epoch, window)
            batch = self.data.collate(batches[k])
            for key, value in batch.items():
                if value.ndim == 2 and key != "positions":
                    total += value.size
                    pads += int(np.sum(value == PAD_ID))
        return pads / max(total, 1)


def _lengths(data, idx) -> np.ndarray:
    if hasattr(data, "lengths"):  # vectorized (datasets read from shards)
        return np.asarray(data.lengths(idx))
    return np.asarray([data.length(i) for i in idx])


def eval_batches(data, batch_size: int, limit: int = 0) -> list[dict]:
    """Fixed validation batches, sorted by length; the last one is padded with copies
    of its first row and a ``weight`` of 0 so every batch has the same size."""
    if getattr(data, "fixed_length", False):  # the stable sort of one length is the identity: no
        order = np.arange(min(len(data), limit * batch_size) if limit else len(data))  # per-example array
    else:
        order = np.argsort(_lengths(data, np.arange(len(data))), kind="stable")
    out = []
    for start in range(0, len(order), batch_size):
        idx = list(order[start: start + batch_size])
        weight = np.ones(batch_size, np.float32)
        weight[len(idx):] = 0.0
        idx += [idx[0]] * (batch_size - len(idx))
        batch = data.collate(idx)
        batch["weight"] = weight
        out.append(batch)
        if limit and len(out) >= limit:
            break
    return out
