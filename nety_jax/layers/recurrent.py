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
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from nety_jax.layers.dropout import Dropout
from nety_jax.layers.linear import Linear

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
        kernel = self.param("kernel", init, (self.directions, self.hidden, g))
        bias = self.param("bias", nn.initializers.zeros, (self.directions, g))
        hproj = jnp.einsum("dbh,dhg->dbg", carry[0], kernel) + bias[:, None, :]
        new = cell_update(self.cell, carry, xproj.astype(jnp.float32), hproj)
        if live is not None:  # rows whose sequence has ended keep their carry
            new = tuple(jnp.where(live[None, :, None], n, c) for n, c in zip(new, carry))
        return new, new[0]


def zero_carry(cell: str, directions: int, batch: int, hidden: int, like: jax.Array) -> tuple:
    # zeros_like keeps the input's device-varying type under shard_map
    zeros = jnp.zeros_like(like, jnp.float32, shape=(directions, batch, hidden))
    return (zeros, zeros) if cell == "lstm" else (zeros,)


class RecurrentLayer(nn.Module):
    """One layer, one or both directions, scanned over time (batch-major in and out)."""

    cell: str
    hidden: int
    bidirectional: bool = False
    length_aware: bool = True  # backward direction over flipped real tokens (False: NETY)
    unroll: int = 1
    dtype: jnp.dtype = jnp.float32
    quant: str = "none"

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
        g = GATES[self.cell] * self.hidden
        xproj = Linear(d * g, dtype=self.dtype, quant=self.quant, name="input")(x).reshape(b, t, d, g)
        if d == 2:
            backward = flip_sequences(xproj[:, :, 1], lengths if self.length_aware else None)
            xproj = jnp.stack([xproj[:, :, 0], backward], axis=2)
        xs = xproj.transpose(1, 2, 0, 3)  # (T, D, B, G*H): time-major for the scan
        if carry is None:
            carry = zero_carry(self.cell, d, b, self.hidden, x)
        scan = nn.scan(RecurrentStep, variable_broadcast="params", split_rngs={"params": False},
                       in_axes=0, out_axes=0, unroll=self.unroll)
        carry, ys = scan(self.cell, self.hidden, d, name="recurrent")(
            carry, (xs, None if live is None else live.T, None if reset is None else reset.T))
        ys = ys.transpose(2, 0, 1, 3)  # (B, T, D, H)
        outputs = ys[:, :, 0]
        if d == 2:
            backward = flip_sequences(ys[:, :, 1], lengths if self.length_aware else None)
            outputs = jnp.concatenate([outputs, backward], axis=-1)
        return outputs.astype(self.dtype), carry


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

    @nn.compact
    def __call__(self, x, lengths: Optional[jax.Array] = None, train: bool = False,
                 carries: Optional[tuple] = None, live: Optional[jax.Array] = None,
                 reset: Optional[jax.Array] = None):
        new_carries = []
        for k in range(self.layers):
            if k > 0:
                x = Dropout(self.dropout)(x, deterministic=not train)
            layer = RecurrentLayer(self.cell, self.hidden, self.bidirectional, self.length_aware,
                                   self.unroll, self.dtype, self.quant, name=f"l{k}")
            x, carry = layer(x, lengths, None if carries is None else carries[k], live, reset)
            new_carries.append(carry)
        return x, x[..., : self.hidden], tuple(new_carries)
