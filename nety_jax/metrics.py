"""Where metrics go: a JSONL log for tools, TensorBoard events, and a loss plot for people."""
from __future__ import annotations

import json
import math
import os

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"


class MetricsWriter:
    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, METRICS_FILE)
        self.file = open(self.path, "a", encoding="utf-8")
        from tensorboardX import SummaryWriter  # imported here: heavy, and only for training
        self.tb = SummaryWriter(logdir=workdir)

    def write(self, step: int, split: str, values: dict) -> None:
        clean = {k: (float(v) if v is not None else None) for k, v in values.items()}
        self.file.write(json.dumps({"step": int(step), "split": split, **clean}) + "\n")
        self.file.flush()
        for k, v in clean.items():
            if v is not None and math.isfinite(v):
                self.tb.add_scalar(f"{split}/{k}", v, step)

    def close(self) -> None:
        self.file.close()
        self.tb.close()


def read_metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_losses(workdir: str) -> str | None:
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
