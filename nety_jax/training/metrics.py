"""Where metrics go: a JSONL log for tools, TensorBoard events, and a loss plot for people.

Both survive restarts: when a run resumes from step S, the JSONL rows after S are
dropped (they are logged again as the run redoes those steps; rows up to S are
kept as they were), and TensorBoard is told to purge events after S
(``purge_step``), so neither shows a step twice.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from typing import Optional

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"


def _rows(path: str) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if isinstance(row, dict) and isinstance(row.get("step"), int):
                rows.append(row)
    return rows


def keep_rows_up_to(workdir: str, step: int) -> None:
    """Rewrites metrics.jsonl (atomically) without the rows after ``step``."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.isfile(path):
        return
    kept = [r for r in _rows(path) if r["step"] <= step]
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)
    os.replace(tmp, path)


class MetricsWriter:
    def __init__(self, workdir: str, resume_step: Optional[int] = None):
        self.path = os.path.join(workdir, METRICS_FILE)
        if resume_step is not None:
            keep_rows_up_to(workdir, resume_step)
        self.file = open(self.path, "a", encoding="utf-8")
        from tensorboardX import SummaryWriter  # imported here: heavy, and only for training
        self.tb = SummaryWriter(logdir=workdir, purge_step=None if resume_step is None else resume_step + 1)

    def write(self, step: int, split: str, values: dict) -> None:
        clean = {k: (float(v) if v is not None else None) for k, v in values.items()}
        self.file.write(json.dumps({"step": int(step), "split": split, **clean}) + "\n")
        self.file.flush()
        for k, v in clean.items():
            if v is not None and math.isfinite(v):
                self.tb.add_scalar(f"{split}/{k}", v, step)
        self.tb.flush()  # on disk at every log line: a kill -9 loses nothing already logged

    def close(self) -> None:
        """Closes both logs, each even if the other fails (a full disk); the first failure is
        raised. TensorBoard's writer is closed for good either way: left open after a failed flush,
        its exit handler and worker thread printed two tracebacks after the run's one-line error."""
        failures = []
        for closer in (self.file.close, lambda: _close_tensorboard(self.tb)):
            try:
                closer()
            except OSError as e:
                failures.append(e)
        if failures:
            raise failures[0]


def _close_tensorboard(tb) -> None:
    """``tb.close()``; when its final flush fails, each event file is still shut: its worker thread
    stopped, its queue and file closed and the writer marked closed, so that tensorboardX's exit
    handler has nothing left to flush."""
    try:
        tb.close()
    except OSError:
        for file_writer in list(getattr(tb, "all_writers", {}).values()):
            events = getattr(file_writer, "event_writer", None)
            if events is None or getattr(events, "_closed", True):
                continue
            events._closed = True
            with contextlib.suppress(Exception):
                events._worker.stop()
            with contextlib.suppress(Exception):
                events._ev_writer.close()
            with contextlib.suppress(Exception):
                events._event_queue.close()
        raise


class NullWriter:
    """The metrics writer of processes other than the first in a multi-host job."""

    def write(self, step: int, split: str, values: dict) -> None:
        pass

    def close(self) -> None:
        pass


def read_metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, METRICS_FILE)
    return _rows(path) if os.path.isfile(path) else []


def plot_losses(workdir: str) -> Optional[str]:
    """Writes loss.png with the train and validation loss curves; returns its path."""
    rows = read_metrics(workdir)
    # the plain cross-entropy on both sides (the training loss may include label smoothing)
    train = {r["step"]: r.get("nll", r.get("loss")) for r in rows
             if r["split"] == "train" and r.get("nll", r.get("loss")) is not None}
    val = {r["step"]: r["loss"] for r in rows if r["split"] == "val" and r.get("loss") is not None}
    if not train and not val:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(sorted(train), [train[s] for s in sorted(train)], label="train (cross-entropy)")
    if val:
        ax.plot(sorted(val), [val[s] for s in sorted(val)], "o-", label="validation (cross-entropy)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss per token")
    ax.set_title(os.path.basename(os.path.abspath(workdir)))
    ax.grid(alpha=0.3)
    ax.legend()
    path = os.path.join(workdir, PLOT_FILE)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
