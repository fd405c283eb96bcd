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
from nety_jax.errors import DataError


class LocalBatch(dict):
    """This process's rows of a global batch (already sliced: the runner places it as it is)."""


class BatchIterator:
    """Shuffle, sort by length within windows of 50 batches, shuffle the batches.

    ``batches_per_epoch`` is fixed (the remainder is dropped), so the position
    ``(epoch, index)`` identifies a batch exactly.
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
        self._plan_epoch = None
        self.part = part  # (process, processes): only datasets read from shards honour it

    def _plan(self, epoch: int) -> np.ndarray:
        """(batches_per_epoch, batch_size) example indices of ``epoch``'s batches, in order: one
        array of 4 bytes an example (8 past 2**31 examples), the only per-example memory of a
        streamed epoch."""
        if self._plan_epoch != epoch:
            self._batches = None  # the previous epoch's plan is freed before the next is built
            rng = np.random.default_rng([self.seed, epoch])
            dtype = np.int32 if len(self.data) < 2**31 else np.int64
            order = np.arange(len(self.data), dtype=dtype)
            rng.shuffle(order)  # rng.permutation(n)'s draws, in place: no int64 copy of the epoch
            order = order[: self.batches_per_epoch * self.batch_size]
            size = self.WINDOW * self.batch_size
            sort = not getattr(self.data, "fixed_length", False)  # equal lengths: a stable sort keeps the order
            for start in range(0, len(order) if sort else 0, size):  # windows hold whole batches
                window = order[start: start + size]
                order[start: start + size] = window[np.argsort(_lengths(self.data, window), kind="stable")]
            batches = order.reshape(-1, self.batch_size)
            self._batches = batches[rng.permutation(len(batches))]
            self._plan_epoch = epoch
        return self._batches

    def state(self) -> dict:
        return {"epoch": int(self.epoch), "index": int(self.index)}

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        idx = self._plan(self.epoch)[self.index]
        self.index += 1
        if self.index == self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        if self.part[1] > 1 and getattr(self.data, "reads_parts", False):
            return LocalBatch(self.data.collate(idx, self.part))
        return self.data.collate(idx)

    def padding_fraction(self, limit: int = 256) -> float:
        """Fraction of pad tokens over (at most ``limit`` batches of) one epoch of batches (the
        integer arrays of ids in the batch; a packed row's ``positions`` start every segment at
        0, which is no padding). Bounded: a streamed epoch is not read at start-up."""
        pads = total = 0
        for idx in self._plan(self.epoch)[:limit]:
            batch = self.data.collate(idx)
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
