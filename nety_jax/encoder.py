"""The recurrent encoder: self-attention -> stacked (Bi)RNN via nn.scan -> head -> memory.

Input projections for every time step are one matmul before the scan; the scan
carries only the hidden-to-hidden product. The backward direction runs over
length-aware flipped sequences, so it starts at the last real token and the
padding stays at the end (NETY's parity mode flips the whole padded sequence).
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import flax.linen as nn

from nety_jax.config import ModelConfig
from nety_jax.layers import BatchNorm, MultiHeadAttention, gelu_exact, length_mask

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


class RecurrentStep(nn.Module):
    """One time step given the precomputed input projection (PyTorch's gate order)."""

    cell: str
    hidden: int

    @nn.compact
    def __call__(self, carry, xproj):
        h = carry[0]
        hproj = nn.Dense(GATES[self.cell] * self.hidden, name="hidden")(h).astype(jnp.float32)
        xproj = xproj.astype(jnp.float32)
        if self.cell == "lstm":
            c = carry[1]
            xi, xf, xg, xo = jnp.split(xproj + hproj, 4, axis=-1)
            c = jax.nn.sigmoid(xf) * c + jax.nn.sigmoid(xi) * jnp.tanh(xg)
            h = jax.nn.sigmoid(xo) * jnp.tanh(c)
            return (h, c), h
        if self.cell == "gru":
            xr, xz, xn = jnp.split(xproj, 3, axis=-1)
            hr, hz, hn = jnp.split(hproj, 3, axis=-1)
            r = jax.nn.sigmoid(xr + hr)
            z = jax.nn.sigmoid(xz + hz)
            n = jnp.tanh(xn + r * hn)
            h = (1.0 - z) * n + z * h
            return (h,), h
        h = jnp.tanh(xproj + hproj)
        return (h,), h


class RecurrentLayer(nn.Module):
    """One direction of one layer, scanned over time."""

    cell: str
    hidden: int
    reverse: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, lengths: Optional[jax.Array] = None):
        xproj = nn.Dense(GATES[self.cell] * self.hidden, dtype=self.dtype, name="input")(x)
        if self.reverse:
            xproj = flip_sequences(xproj, lengths)
        scan = nn.scan(RecurrentStep, variable_broadcast="params",
                       split_rngs={"params": False}, in_axes=1, out_axes=1)
        # zeros_like keeps the input's device-varying type under shard_map
        zeros = jnp.zeros_like(xproj[:, 0, : self.hidden], jnp.float32)
        carry = (zeros, zeros) if self.cell == "lstm" else (zeros,)
        _, ys = scan(self.cell, self.hidden, name="recurrent")(carry, xproj)
        if self.reverse:
            ys = flip_sequences(ys, lengths)
        return ys.astype(self.dtype)


class RecurrentStack(nn.Module):
    """Stacked (bi)directional RNN, dropout between layers (not after the last).

    With ``lengths`` the backward direction is length-aware (packed-sequence
    semantics); with None it reverses the whole padded sequence (NETY).
    Returns (outputs (B, S, H or 2H), last layer's forward outputs (B, S, H)).
    """

    cell: str
    hidden: int
    layers: int
    bidirectional: bool
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, lengths: Optional[jax.Array] = None, train: bool = False):
        fwd = x
        for layer in range(self.layers):
            if layer > 0:
                x = nn.Dropout(self.dropout)(x, deterministic=not train)
            fwd = RecurrentLayer(self.cell, self.hidden, dtype=self.dtype, name=f"l{layer}")(x)
            if self.bidirectional:
                bwd = RecurrentLayer(self.cell, self.hidden, reverse=True, dtype=self.dtype,
                                     name=f"l{layer}_reverse")(x, lengths)
                x = jnp.concatenate([fwd, bwd], axis=-1)
            else:
                x = fwd
        return x, fwd


class Encoder(nn.Module):
    """Embedded source (B, S, D) -> (memory (B, M, D), memory mask (B, M))."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, emb, lengths, train: bool = False):
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        det = not train
        mask = length_mask(lengths, emb.shape[1])
        attn_mask = mask[:, None, None, :] if cfg.enc_attention_mask else None
        attn = MultiHeadAttention(cfg.d_model, cfg.enc_heads, dtype=dtype, name="attention")
        a = attn(emb, emb, attn_mask, deterministic=det)
        x = emb + a if cfg.enc_attention_residual else a

        packed = cfg.pooling == "last_real"
        outputs, fwd = RecurrentStack(cfg.cell, cfg.enc_hidden, cfg.enc_layers, cfg.bidirectional,
                                      cfg.dropout, dtype, name="rnn")(
            x, lengths if packed else None, train)

        if packed:
            last = jnp.maximum(lengths, 1) - 1
            pooled = jnp.take_along_axis(fwd, last[:, None, None], axis=1)[:, 0]
            if cfg.bidirectional:
                pooled = jnp.concatenate([pooled, outputs[:, 0, cfg.enc_hidden:]], axis=-1)
        else:  # NETY: lstm_out[:, -1, :], the last PADDED position for both directions
            pooled = outputs[:, -1, :]

        vector = EncoderHead(cfg, name="head")(pooled, train)  # (B, D)
        if cfg.memory == "pooled":
            return vector[:, None, :], jnp.ones((emb.shape[0], 1), bool)
        memory = nn.Dense(cfg.d_model, dtype=dtype, name="memory_proj")(outputs)
        if cfg.memory_prepend_pooled:
            memory = jnp.concatenate([vector[:, None, :].astype(memory.dtype), memory], axis=1)
            mask = jnp.concatenate([jnp.ones((emb.shape[0], 1), bool), mask], axis=1)
        return memory, mask


class EncoderHead(nn.Module):
    """Norm -> Dense -> exact GELU -> dropout, repeated, then Dense to d_model and LayerNorm."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x, train: bool = False):
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        dims = tuple(cfg.head_dims) + (cfg.d_model,)
        for i, dim in enumerate(dims):
            if cfg.head_norm == "batch":
                x = BatchNorm(axis_name=cfg.bn_axis_name, name=f"batch_norm{i + 1}")(
                    x, use_running_average=not train)
            else:
                x = nn.LayerNorm(epsilon=1e-5, name=f"norm{i + 1}")(x)
            x = nn.Dense(dim, dtype=dtype, name=f"fc{i + 1}")(x)
            if i < len(dims) - 1:
                x = gelu_exact(x)
                x = nn.Dropout(cfg.dropout)(x, deterministic=not train)
        return nn.LayerNorm(epsilon=1e-5, name="layer_norm")(x)
