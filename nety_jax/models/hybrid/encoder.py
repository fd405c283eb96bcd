"""The hybrid's encoder: self-attention -> stacked (Bi)RNN -> pooling -> head -> memory.

NETY's quirks are config fields, not a fork: ``enc_attention_mask: false`` lets
tokens attend to padding, ``enc_attention_residual: false`` replaces the
embeddings by the attention output, ``pooling: last_padded`` reads both
directions at the last PADDED position (the backward half has then seen only
padding) and ``memory: pooled`` gives the decoder one vector.
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from nety_jax.layers import BatchNorm, RecurrentStack, SelfAttention, gelu_exact, length_mask
from nety_jax.layers.dropout import Dropout
from nety_jax.layers.linear import Linear
from nety_jax.layers.partitioning import layer_norm
from nety_jax.layers.remat import Remat
from nety_jax.models.hybrid.config import HybridConfig


class Encoder(nn.Module):
    """Embedded source (B, S, D) -> (memory (B, M, D), memory mask (B, M))."""

    cfg: HybridConfig
    axis_name: Optional[str] = None  # device axis the BatchNorm statistics average over
    remat: Remat = Remat()  # the recurrent layers' (layers/remat.py)

    @nn.compact
    def __call__(self, emb, lengths, train: bool = False):
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        mask = length_mask(lengths, emb.shape[1])
        a = SelfAttention(cfg.d_model, cfg.enc_heads, dtype=dtype, quant=cfg.quant, name="attention")(
            emb, None, deterministic=not train, lengths=lengths if cfg.enc_attention_mask else None)
        x = emb + a if cfg.enc_attention_residual else a

        packed = cfg.pooling == "last_real"
        outputs, fwd, _ = RecurrentStack(cfg.cell, cfg.enc_hidden, cfg.enc_layers, cfg.bidirectional,
                                         cfg.dropout, length_aware=packed, dtype=dtype, quant=cfg.quant,
                                         remat=self.remat, name="rnn")(
            x, lengths, train)

        if packed:
            last = jnp.maximum(lengths, 1) - 1
            pooled = jnp.take_along_axis(fwd, last[:, None, None], axis=1)[:, 0]
            if cfg.bidirectional:
                pooled = jnp.concatenate([pooled, outputs[:, 0, cfg.enc_hidden:]], axis=-1)
        else:  # NETY: lstm_out[:, -1, :], the last PADDED position for both directions
            pooled = outputs[:, -1, :]

        vector = EncoderHead(cfg, self.axis_name, name="head")(pooled, train)  # (B, D)
        if cfg.memory == "pooled":
            return vector[:, None, :], jnp.ones((emb.shape[0], 1), bool)
        memory = Linear(cfg.d_model, dtype=dtype, quant=cfg.quant, name="memory_proj",
                        axes=("hidden", "embed"))(outputs)
        if cfg.memory_prepend_pooled:
            memory = jnp.concatenate([vector[:, None, :].astype(memory.dtype), memory], axis=1)
            mask = jnp.concatenate([jnp.ones((emb.shape[0], 1), bool), mask], axis=1)
        return memory, mask


class EncoderHead(nn.Module):
    """Norm -> Dense -> exact GELU -> dropout, repeated, then Dense to d_model and LayerNorm."""

    cfg: HybridConfig
    axis_name: Optional[str] = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        dims = tuple(cfg.head_dims) + (cfg.d_model,)
        for i, dim in enumerate(dims):
            if cfg.head_norm == "batch":
                x = BatchNorm(axis_name=self.axis_name, name=f"batch_norm{i + 1}")(
                    x, use_running_average=not train)
            else:
                x = layer_norm(1e-5, name=f"norm{i + 1}")(x)
            axes = ("hidden", "mlp") if i < len(dims) - 1 else ("mlp", "embed")
            x = Linear(dim, dtype=dtype, quant=cfg.quant, name=f"fc{i + 1}", axes=axes)(x)
            if i < len(dims) - 1:
                x = gelu_exact(x)
                x = Dropout(cfg.dropout)(x, deterministic=not train)
        return layer_norm(1e-5, name="layer_norm")(x)
