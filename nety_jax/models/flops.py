"""Analytic FLOP counts of the building blocks every architecture shares (for MFU).

One multiply-add is 2 FLOPs. Only matrix products are counted (embedding lookups,
norms and elementwise work are not), and only the work the model needs: a program
that does more gets no credit for it. Training is forward + backward = 3x forward.
Each architecture adds its blocks up in its own ``flops.py`` and answers
``Model.train_flops(batch)``; ``training/flops.py`` turns that into MFU.
"""
from __future__ import annotations

TRAIN_FACTOR = 3.0  # forward + backward (twice the forward: input and weight gradients)
GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def attention_self(tokens: int, length: int, d: int) -> float:
    """q, k, v and output projections for ``tokens`` queries, plus scores and the weighted sum
    over ``length`` keys each (the full T x T scores, as computed)."""
    return 2 * (4 * tokens * d * d + 2 * tokens * length * d)


def feed_forward(tokens: int, d: int, d_ff: int) -> float:
    return 2.0 * tokens * 2 * d * d_ff


def dense(tokens: int, d_in: int, d_out: int) -> float:
    return 2.0 * tokens * d_in * d_out


def recurrent_layer(cell: str, width: int, hidden: int, tokens: int, directions: int = 1) -> float:
    """One recurrent layer over ``tokens`` steps: input and hidden projections of every gate."""
    gates = GATES[cell] * hidden
    return 2.0 * tokens * directions * (width * gates + hidden * gates)
