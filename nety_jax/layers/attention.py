"""Multi-head attention: fused self-attention with a per-row KV cache, and cross-attention.

Heads live in the (batch, heads, length, head_dim) layout everywhere, the cache
included: a decode step then reads keys with no transpose (the (B, L, H, D)
layout cost a full cache transpose per layer and step: docs/PERFORMANCE.md).

Self-attention projects q, k and v with one (D, 3D) matmul. Cross-attention over a
memory of length 1 (NETY's pooled memory) is reduced to what it computes: the
softmax over one key is 1, so the output is ``out(v(memory))`` for every query,
with attention dropout still applied per head and query.

On the GPU, self-attention without active attention dropout goes through cuDNN's fused
(flash) attention, ``jax.nn.dot_product_attention(implementation="cudnn")``, when its
inputs qualify (bfloat16 or float16, head_dim a multiple of 8 up to 128): causal
training, padding masks given as lengths, and the cached one-token decode step.
The choice is made in Python at trace time (``kernels.gpu_path``), never inside
``kernels.portable()``; everywhere else the explicit float32 softmax below runs.
"""
from __future__ import annotations

import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from nety_jax import kernels
from nety_jax.layers.dropout import Dropout
from nety_jax.layers.linear import Linear

NEG_INF = -1e9


def length_mask(lengths: jax.Array, size: int) -> jax.Array:
    """(B,) lengths -> (B, size) bool, True at real positions."""
    return jnp.arange(size)[None, :] < lengths[:, None]


def split_heads(x: jax.Array, heads: int) -> jax.Array:
    """(B, T, H * Dh) -> (B, H, T, Dh)."""
    b, t, d = x.shape
    return x.reshape(b, t, heads, d // heads).transpose(0, 2, 1, 3)


def merge_heads(x: jax.Array) -> jax.Array:
    """(B, H, T, Dh) -> (B, T, H * Dh)."""
    b, h, t, dh = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, t, h * dh)


def attention_weights(q, k, mask: Optional[jax.Array]) -> jax.Array:
    """Softmax of scaled scores in float32: (B, H, T, S)."""
    scores = jnp.einsum("bhtd,bhsd->bhts", q, k).astype(jnp.float32) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = jnp.where(mask, scores, NEG_INF)
    return jax.nn.softmax(scores, axis=-1)


def weighted_values(probs, v) -> jax.Array:
    """(B, H, T, S) weights, (B, H, S, Dh) values -> (B, H, T, Dh)."""
    return jnp.einsum("bhts,bhsd->bhtd", probs.astype(v.dtype), v)


def combined_mask(mask: Optional[jax.Array], causal: bool, lengths: Optional[jax.Array],
                  t: int) -> Optional[jax.Array]:
    """``mask`` and-ed with a causal (1, 1, T, T) mask and a (B, 1, 1, T) key-length mask."""
    parts = [m for m in (mask, jnp.tril(jnp.ones((t, t), bool))[None, None] if causal else None,
                         None if lengths is None else length_mask(lengths, t)[:, None, None, :])
             if m is not None]
    out = parts[0] if parts else None
    for m in parts[1:]:
        out = out & m
    return out


FUSED_DTYPES = (jnp.bfloat16, jnp.float16)  # cuDNN's fused attention takes half precision only
FUSED_HEAD_DIMS = 128  # the largest head_dim cuDNN's fused attention takes on every GPU


def fused_applies(dtype, head_dim: int, dropout_active: bool) -> bool:
    """Whether cuDNN's fused attention runs this attention (a static, trace-time choice)."""
    return (not dropout_active and jnp.dtype(dtype) in FUSED_DTYPES and head_dim % 8 == 0
            and head_dim <= FUSED_HEAD_DIMS and kernels.gpu_path("attention"))


def fused_attention(q, k, v, causal: bool = False, kv_lengths: Optional[jax.Array] = None,
                    implementation: Optional[str] = "cudnn") -> jax.Array:
    """q (B, T, H, Dh), k and v (B, S, H, Dh) -> (B, T, H, Dh): softmax attention, causal and/or
    over each row's first ``kv_lengths`` keys, through ``jax.nn.dot_product_attention``
    (``implementation=None`` is its XLA form: the same arguments, checked against ours on CPU)."""
    lengths = None if kv_lengths is None else kv_lengths.astype(jnp.int32)
    return jax.nn.dot_product_attention(q, k, v, is_causal=causal, key_value_seq_lengths=lengths,
                                        implementation=implementation)


def write_cache(cache: jax.Array, new: jax.Array, pos: jax.Array) -> jax.Array:
    """Writes ``new`` (B, H, T, Dh) into ``cache`` (B, H, L, Dh) at each row's own position."""
    return jax.vmap(lambda c, x, p: jax.lax.dynamic_update_slice(c, x, (0, p, 0)))(
        cache, new.astype(cache.dtype), pos)


class SelfAttention(nn.Module):
    """Self-attention with one fused q/k/v projection (``qkv``) and an output projection."""

    d_model: int
    heads: int
    dropout: float = 0.0
    qkv_bias: bool = True
    dtype: jnp.dtype = jnp.float32
    quant: str = "none"
    causal: bool = False  # each position attends to itself and earlier positions only

    def setup(self):
        self.qkv = Linear(3 * self.d_model, use_bias=self.qkv_bias, dtype=self.dtype, quant=self.quant,
                          axes=("embed", "heads"))
        self.out = Linear(self.d_model, dtype=self.dtype, quant=self.quant, axes=("heads", "embed"))
        self.drop = Dropout(self.dropout)

    def project(self, x):
        q, k, v = jnp.split(self.qkv(x), 3, axis=-1)
        return split_heads(q, self.heads), split_heads(k, self.heads), split_heads(v, self.heads)

    def _attend(self, q, k, v, mask, deterministic):
        probs = self.drop(attention_weights(q, k, mask), deterministic=deterministic)
        return self.out(merge_heads(weighted_values(probs, v)))

    def _fused(self, deterministic: bool) -> bool:
        active = not deterministic and self.dropout > 0.0
        return fused_applies(self.dtype, self.d_model // self.heads, active)

    def __call__(self, x, mask: Optional[jax.Array] = None, deterministic: bool = True,
                 lengths: Optional[jax.Array] = None):
        """x (B, T, D) -> (B, T, D). ``mask`` broadcastable to (B, H, T, T), True where a query
        may attend; ``lengths`` (B,): keys past each row's length are padding."""
        if mask is None and self._fused(deterministic):
            b, t, _ = x.shape
            q, k, v = (y.reshape(b, t, self.heads, -1) for y in jnp.split(self.qkv(x), 3, axis=-1))
            ctx = fused_attention(q, k, v, self.causal, lengths)
            return self.out(ctx.reshape(b, t, self.d_model))
        q, k, v = self.project(x)
        return self._attend(q, k, v, combined_mask(mask, self.causal, lengths, x.shape[1]), deterministic)

    def cached(self, x, cache: dict, pos: jax.Array):
        """x: (B, T, D) at positions pos..pos+T-1 of each row; cache {'k', 'v': (B, H, L, Dh)}."""
        q, k, v = self.project(x)
        k = write_cache(cache["k"], k, pos)
        v = write_cache(cache["v"], v, pos)
        if kernels.decode_attention_usable(q, k):  # one query a row: read only the filled positions
            ctx = kernels.decode_attention(q, k, v, pos + 1)
            return self.out(merge_heads(ctx)), {"k": k, "v": v}
        if x.shape[1] == 1 and self._fused(True):  # one query a row over its filled positions
            ctx = fused_attention(q.swapaxes(1, 2), k.swapaxes(1, 2), v.swapaxes(1, 2), False, pos + 1)
            return self.out(ctx.reshape(x.shape[0], 1, self.d_model)), {"k": k, "v": v}
        q_pos = pos[:, None] + jnp.arange(x.shape[1])[None, :]  # (B, T)
        mask = (jnp.arange(k.shape[2])[None, None, :] <= q_pos[:, :, None])[:, None]  # (B, 1, T, L)
        return self._attend(q, k, v, mask, True), {"k": k, "v": v}


class CrossAttention(nn.Module):
    """Queries from the decoder (``query``), keys and values from a memory (``kv``)."""

    d_model: int
    heads: int
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32
    quant: str = "none"

    def setup(self):
        self.query = Linear(self.d_model, dtype=self.dtype, quant=self.quant, axes=("embed", "heads"))
        self.kv = Linear(2 * self.d_model, dtype=self.dtype, quant=self.quant, axes=("embed", "heads"))
        self.out = Linear(self.d_model, dtype=self.dtype, quant=self.quant, axes=("heads", "embed"))
        self.drop = Dropout(self.dropout)

    def memory_kv(self, memory):
        k, v = jnp.split(self.kv(memory), 2, axis=-1)
        return split_heads(k, self.heads), split_heads(v, self.heads)

    def _single_key(self, x, v, deterministic):
        """Memory length 1: every query's weight on the one key is 1 (dropout aside)."""
        b, h, _, dh = v.shape
        kernel = self.out.weight().reshape(h, dh, self.d_model)
        per_head = jnp.einsum("bhd,hde->bhe", v[:, :, 0].astype(self.dtype), kernel.astype(self.dtype))
        bias = nn.unbox(self.out.variables["params"]["bias"]).astype(self.dtype)
        ones = jnp.ones((b, h, x.shape[1], 1), jnp.float32)
        keep = self.drop(ones, deterministic=deterministic)  # the same mask as on real weights
        if deterministic or self.dropout == 0.0:
            return (jnp.sum(per_head, axis=1) + bias)[:, None, :] + jnp.zeros_like(x)
        return jnp.einsum("bht,bhe->bte", keep[..., 0].astype(self.dtype), per_head) + bias

    def attend(self, x, k, v, mask: Optional[jax.Array], deterministic: bool = True):
        """x: (B, T, D); k, v: (B, H, M, Dh); mask broadcastable to (B, H, T, M)."""
        if self.is_initializing():
            self.out(jnp.zeros((1, 1, self.d_model), self.dtype))  # create the output projection
        if k.shape[2] == 1:
            return self._single_key(x, v, deterministic)
        q = split_heads(self.query(x), self.heads)
        probs = self.drop(attention_weights(q, k, mask), deterministic=deterministic)
        return self.out(merge_heads(weighted_values(probs, v)))

    def __call__(self, x, memory, mask: Optional[jax.Array] = None, deterministic: bool = True):
        if self.is_initializing():
            self.query(x)  # parameters exist even when the memory has one position
        k, v = self.memory_kv(memory)
        return self.attend(x, k, v, mask, deterministic)

    def precompute(self, memory, mask: jax.Array) -> dict:
        """What decoding keeps per sequence: keys and values, or, for a memory of length 1,
        the attention output itself (the same for every query)."""
        k, v = self.memory_kv(memory)
        if k.shape[2] == 1:
            return {"out": self._single_key(jnp.zeros((memory.shape[0], 1, self.d_model), self.dtype),
                                            v, True)}
        return {"k": k, "v": v, "mask": mask}

    def cached(self, x, pre: dict):
        if "out" in pre:
            return jnp.broadcast_to(pre["out"], x.shape[:2] + pre["out"].shape[2:]).astype(x.dtype)
        return self.attend(x, pre["k"], pre["v"], pre["mask"][:, None, None, :], True)
