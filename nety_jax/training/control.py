"""What keeps a run safe and its numbers right: signals, the run-directory lock, metric sums."""
from __future__ import annotations

import fcntl
import os
import signal

import jax
import numpy as np

from nety_jax.errors import CheckpointError, TrainingDiverged
from nety_jax.training.parallel import local

LOCK_FILE = ".lock"


class StopFlag:
    """SIGTERM / SIGINT set a flag; the loop saves and exits at the next step boundary."""

    def __init__(self):
        self.signal = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


class RunLock:
    """One training process per run directory: an advisory lock the kernel drops with the
    process (even after kill -9), so a stale lock never blocks a restart."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_FILE)
        self.file = None

    def __enter__(self):
        try:
            self.file = open(self.path, "a+")
        except OSError as e:
            raise CheckpointError(f"{self.path}: cannot write in the run directory ({e.strerror})") from None
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise CheckpointError(f"{os.path.dirname(self.path)} is in use by another training "
                                  f"process (pid {holder}); wait for it or use another --workdir") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(str(os.getpid()))
        self.file.flush()
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


class MetricSums:
    """Host-side sums of the steps' metric sums between two log lines."""

    KEYS = ("loss_sum", "nll_sum", "correct", "tokens")

    def __init__(self):
        self.reset()

    def reset(self):
        self.sums = {k: 0.0 for k in self.KEYS}
        self.grad_norm, self.steps = 0.0, 0

    def add(self, step: int, metrics) -> None:
        """Reads one step's (device) metrics; a non-finite loss raises ``TrainingDiverged``."""
        m = jax.device_get(local(metrics))
        if not np.isfinite(m["loss_sum"]) or not np.isfinite(m["grad_norm"]):
            raise TrainingDiverged(f"non-finite loss at step {step}")
        for k in self.KEYS:
            self.sums[k] += float(m[k])
        self.grad_norm += float(m["grad_norm"])
        self.steps += 1

    def means(self) -> dict:
        tokens = max(self.sums["tokens"], 1.0)
        return {"loss": self.sums["loss_sum"] / tokens, "nll": self.sums["nll_sum"] / tokens,
                "accuracy": self.sums["correct"] / tokens,
                "grad_norm": self.grad_norm / max(self.steps, 1)}
