"""Batches made in a background thread while the device runs the step before.

``Prefetcher(iterator)`` yields exactly the batches of ``iterator``, in order; ``state()`` is
the position after the last batch handed out (not the ones made ahead), so a checkpoint
resumes where the training steps are. Reading shards and collating are NumPy and file
work that mostly releases the GIL, so a thread overlaps them with JAX's dispatch.
"""
from __future__ import annotations

import queue
import threading

DEPTH = 2  # batches made ahead


class Prefetcher:
    def __init__(self, iterator, depth: int = DEPTH):
        self.iterator, self.depth = iterator, depth
        self._position = iterator.state()
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._thread = None
        self._stop = threading.Event()

    def _produce(self) -> None:
        while not self._stop.is_set():
            try:
                item = (next(self.iterator), self.iterator.state(), None)
            except BaseException as e:  # handed to the consumer, raised there
                item = (None, None, e)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[2] is not None:
                return

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self._thread is None:
            self._thread = threading.Thread(target=self._produce, name="nety-jax-prefetch", daemon=True)
            self._thread.start()
        batch, position, error = self._queue.get()
        if error is not None:
            raise error
        self._position = position
        return batch

    def state(self) -> dict:
        return dict(self._position)

    def close(self) -> None:
        self._stop.set()

    def __getattr__(self, name):  # batches_per_epoch, padding_fraction, ... of the wrapped iterator
        if name == "iterator":
            raise AttributeError(name)
        return getattr(self.iterator, name)
