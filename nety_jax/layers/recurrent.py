"""Recurrent cells (lstm / gru / rnn, PyTorch's gate order and two biases) scanned over time.

A layer computes the input projections of every time step, both directions, in
one matmul before the scan; the scan (``nn.scan``) carries only the
hidden-to-hidden product. Both directions of a bidirectional layer run in the
SAME scan, their weights stacked on a leading direction axis: half the
sequential steps of two scans, and twice the width per step. The backward
direction reads length-aware flipped sequences, so it starts at each row's last
real token and padding stays at the end (NETY's parity mode flips the whole
padded sequence instead).

Parameters of layer ``l{k}``: ``input/kernel`` (in, D * G * H) and ``input/bias``,
``recurrent/kernel`` (D, H, G * H) and ``recurrent/bias`` (D, G * H), for D
directions (forward first) and G gates.

On the GPU, an LSTM layer that starts from zeros and runs to the end (an encoder) goes
through cuDNN's LSTM (``jax.experimental.rnn.lstm``, where this JAX has it) with the same
parameters packed in cuDNN's flat layout (``cudnn_lstm_weights``): the backward direction
reads each row's real tokens (``length_aware``) or the whole padded sequence (NETY), as
the scan does. Outputs at padded steps are zeros there (the scan's are not, and nothing
reads them); the final carry is each row's last real step. Chosen at trace time by
``kernels.gpu_path("lstm")``, never inside ``kernels.portable()``.
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from nety_jax import kernels
from nety_jax.layers.dropout import Dropout
from nety_jax.layers.linear import Linear
from nety_jax.layers.partitioning import named
from nety_jax.layers.remat import Remat, checkpointed

GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def flip_sequences(x: jax.Array, lengths: Optional[jax.Array]) -> jax.Array:
    """Reverses each row's first ``lengths`` steps (axis 1); padding stays in place.

    With ``lengths=None`` the whole (padded) sequence is reversed.
    """
    if lengths is None:
        return jnp.flip(x, axis=1)
    steps = jnp.arange(x.shape[1])[None, :]
    idx = lengths[:, None] - 1 - steps
    idx = jnp.where(idx >= 0, idx, steps)
    idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)


def cell_update(cell: str, carry: tuple, xproj: jax.Array, hproj: jax.Array) -> tuple:
    """One step of ``cell`` given both projections; returns the new carry (h first)."""
    if cell == "lstm":
        xi, xf, xg, xo = jnp.split(xproj + hproj, 4, axis=-1)
        c = jax.nn.sigmoid(xf) * carry[1] + jax.nn.sigmoid(xi) * jnp.tanh(xg)
        return jax.nn.sigmoid(xo) * jnp.tanh(c), c
    if cell == "gru":
        xr, xz, xn = jnp.split(xproj, 3, axis=-1)
        hr, hz, hn = jnp.split(hproj, 3, axis=-1)
        r = jax.nn.sigmoid(xr + hr)
        z = jax.nn.sigmoid(xz + hz)
        n = jnp.tanh(xn + r * hn)
        return ((1.0 - z) * n + z * carry[0],)
    return (jnp.tanh(xproj + hproj),)


class RecurrentStep(nn.Module):
    """One time step for all directions: carry (D, B, H) each; input projection (D, B, G*H)."""

    cell: str
    hidden: int
    directions: int

    @nn.compact
    def __call__(self, carry, inputs):
        xproj, live, reset = inputs
        if reset is not None:  # a new segment of a packed row starts from a zero carry
            carry = tuple(jnp.where(reset[None, :, None], 0.0, c) for c in carry)
        g = GATES[self.cell] * self.hidden
        init = nn.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=(0,))
        kernel = self.param("kernel", named(init, ("directions", "hidden", "gates")),
                            (self.directions, self.hidden, g))
        bias = self.param("bias", named(nn.initializers.zeros, ("directions", "gates")), (self.directions, g))
        hproj = jnp.einsum("dbh,dhg->dbg", carry[0], kernel) + bias[:, None, :]
        new = cell_update(self.cell, carry, xproj.astype(jnp.float32), hproj)
        if live is not None:  # rows whose sequence has ended keep their carry
            new = tuple(jnp.where(live[None, :, None], n, c) for n, c in zip(new, carry))
        return new, new[0]


def zero_carry(cell: str, directions: int, batch: int, hidden: int, like: jax.Array) -> tuple:
    # zeros_like keeps the input's device-varying type under shard_map
    zeros = jnp.zeros_like(like, jnp.float32, shape=(directions, batch, hidden))
    return (zeros, zeros) if cell == "lstm" else (zeros,)


def cudnn_rnn():
    """``jax.experimental.rnn`` where this JAX has its cuDNN LSTM, else None."""
    try:
        from jax.experimental import rnn
    except ImportError:
        return None
    return rnn if hasattr(rnn, "lstm") and hasattr(rnn, "lstm_ref") else None


def cudnn_lstm_weights(params: dict, directions: int) -> tuple[dict, dict, dict, dict]:
    """One layer's ``input`` and ``recurrent`` parameters as cuDNN's per-direction W_ih (4H, in),
    W_hh (4H, H), b_ih, b_hh (4H,) (PyTorch's gate order, which cuDNN shares)."""
    g = params["recurrent"]["kernel"].shape[-1]
    w_in, b_in = params["input"]["kernel"], params["input"]["bias"]
    w_ih = {d: w_in[:, d * g:(d + 1) * g].T for d in range(directions)}
    w_hh = {d: params["recurrent"]["kernel"][d].T for d in range(directions)}
    b_ih = {d: b_in[d * g:(d + 1) * g] for d in range(directions)}
    b_hh = {d: params["recurrent"]["bias"][d] for d in range(directions)}
    return w_ih, w_hh, b_ih, b_hh


def pack_cudnn_weights(w_ih: dict, w_hh: dict, b_ih: dict, b_hh: dict) -> jax.Array:
    """cuDNN's flat layout for one layer: every direction's W_ih, W_hh, then every b_ih, b_hh
    (``jax.experimental.rnn.unpack_lstm_weights`` reads it back)."""
    dirs = range(len(w_ih))
    parts = [m.reshape(-1) for d in dirs for m in (w_ih[d], w_hh[d])]
    parts += [b for d in dirs for b in (b_ih[d], b_hh[d])]
    return jnp.concatenate([p.astype(jnp.float32) for p in parts])


class RecurrentLayer(nn.Module):
    """One layer, one or both directions, scanned over time (batch-major in and out)."""

    cell: str
    hidden: int
    bidirectional: bool = False
    length_aware: bool = True  # backward direction over flipped real tokens (False: NETY)
    unroll: int = 1
    dtype: jnp.dtype = jnp.float32
    quant: str = "none"
    step_remat: str = "none"  # each time step's rematerialisation (layers/remat.py)

    @nn.compact
    def __call__(self, x, lengths: Optional[jax.Array] = None, carry: Optional[tuple] = None,
                 live: Optional[jax.Array] = None, reset: Optional[jax.Array] = None):
        """x: (B, T, in) -> (outputs (B, T, D * H), final carry). ``live`` (B, T) bool freezes
        each row's carry after its last real step (language-model prefill); ``reset`` (B, T)
        bool zeroes it before a step (a segment's start in a packed row; forward only)."""
        d = 2 if self.bidirectional else 1
        b, t, _ = x.shape
        if reset is not None:  # resets run in the scan below: an explicit carry keeps fused kernels out
            if d == 2:
                raise ValueError("reset (packed rows) runs forward only; this layer is bidirectional")
            carry = zero_carry(self.cell, d, b, self.hidden, x) if carry is None else carry
        if carry is None and live is None and not self.is_initializing() and self._cudnn():
            return self._cudnn_lstm(x, lengths, d)
        g = GATES[self.cell] * self.hidden
        xproj = Linear(d * g, dtype=self.dtype, quant=self.quant, name="input", axes=("embed", "gates"))(x).reshape(b, t, d, g)
        if d == 2:
            backward = flip_sequences(xproj[:, :, 1], lengths if self.length_aware else None)
            xproj = jnp.stack([xproj[:, :, 0], backward], axis=2)
        xs = xproj.transpose(1, 2, 0, 3)  # (T, D, B, G*H): time-major for the scan
        if carry is None:
            carry = zero_carry(self.cell, d, b, self.hidden, x)
        scan = nn.scan(checkpointed(RecurrentStep, self.step_remat), variable_broadcast="params",
                       split_rngs={"params": False},
                       in_axes=0, out_axes=0, unroll=self.unroll)
        carry, ys = scan(self.cell, self.hidden, d, name="recurrent")(
            carry, (xs, None if live is None else live.T, None if reset is None else reset.T))
        ys = ys.transpose(2, 0, 1, 3)  # (B, T, D, H)
        outputs = ys[:, :, 0]
        if d == 2:
            backward = flip_sequences(ys[:, :, 1], lengths if self.length_aware else None)
            outputs = jnp.concatenate([outputs, backward], axis=-1)
        return outputs.astype(self.dtype), carry

    def _cudnn(self) -> bool:
        return self.cell == "lstm" and self.quant == "none" and kernels.gpu_path("lstm") \
            and cudnn_rnn() is not None

    def _cudnn_lstm(self, x, lengths, d: int):
        """The layer through cuDNN's LSTM: (outputs (B, T, D * H), carry (h, c) each (D, B, H))."""
        b, t, width = x.shape
        if lengths is None or not self.length_aware:
            lengths = jnp.full((b,), t, jnp.int32)  # NETY: the backward direction reads the padding too
        weights = pack_cudnn_weights(*cudnn_lstm_weights(nn.unbox(self.variables["params"]), d))
        zeros = jnp.zeros((d, b, self.hidden), jnp.float32)
        # a row of length 0 runs one step over its padding, as the scan's step 0 does
        seq = jnp.maximum(lengths, 1).astype(jnp.int32)
        y, h, c = cudnn_rnn().lstm(x.astype(jnp.float32), zeros, zeros, weights, seq, input_size=width,
                                   hidden_size=self.hidden, num_layers=1, dropout=0.0,
                                   bidirectional=d == 2)
        return y.astype(self.dtype), (h, c)


class RecurrentStack(nn.Module):
    """Stacked (bi)directional layers ``l0``, ``l1``, ..., dropout between layers (not after the
    last). Returns (outputs (B, T, D * H), last layer's forward outputs (B, T, H), carries)."""

    cell: str
    hidden: int
    layers: int
    bidirectional: bool
    dropout: float = 0.0
    length_aware: bool = True
    unroll: int = 1
    dtype: jnp.dtype = jnp.float32
    quant: str = "none"
    remat: Remat = Remat()  # per layer or per time step (layers/remat.py)

    @nn.compact
    def __call__(self, x, lengths: Optional[jax.Array] = None, train: bool = False,
                 carries: Optional[tuple] = None, live: Optional[jax.Array] = None,
                 reset: Optional[jax.Array] = None):
        new_carries = []
        for k in range(self.layers):
            if k > 0:
                x = Dropout(self.dropout)(x, deterministic=not train)
            per_layer = self.remat.policy if self.remat.scan == "layer" else "none"
            per_step = self.remat.policy if self.remat.scan == "step" else "none"
            layer = checkpointed(RecurrentLayer, per_layer)(
                self.cell, self.hidden, self.bidirectional, self.length_aware, self.unroll, self.dtype,
                self.quant, per_step, name=f"l{k}")
            x, carry = layer(x, lengths, None if carries is None else carries[k], live, reset)
            new_carries.append(carry)
        return x, x[..., : self.hidden], tuple(new_carries)
