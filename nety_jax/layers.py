"""Building blocks: attention (with an explicit KV cache), positions, masks, BatchNorm."""
from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

NEG_INF = -1e9


def sinusoidal_table(max_len: int, d_model: int) -> np.ndarray:
    """PyTorch's table: sin on even features, cos on odd ones, base 10000."""
    position = np.arange(max_len, dtype=np.float64)[:, None]
    div = np.exp(np.arange(0, d_model, 2, dtype=np.float64) * (-math.log(10000.0) / d_model))
    table = np.zeros((max_len, d_model), dtype=np.float64)
    table[:, 0::2] = np.sin(position * div)
    table[:, 1::2] = np.cos(position * div)[:, : d_model // 2]
    return table.astype(np.float32)


def length_mask(lengths: jax.Array, size: int) -> jax.Array:
    """(B,) lengths -> (B, size) bool, True at real positions."""
    return jnp.arange(size)[None, :] < lengths[:, None]


def gelu_exact(x):
    return nn.gelu(x, approximate=False)


class MultiHeadAttention(nn.Module):
    """Attention with separate q, k, v and output projections (all with bias).

    ``project_kv`` and ``attend`` are separate so that a decoder can compute the
    keys and values of the encoder memory once and keep them in its cache.
    """

    d_model: int
    num_heads: int
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        dense = lambda: nn.Dense(self.d_model, dtype=self.dtype)
        self.query, self.key, self.value, self.out = dense(), dense(), dense(), dense()
        self.attn_dropout = nn.Dropout(self.dropout)

    def _heads(self, x):
        b, t, _ = x.shape
        return x.reshape(b, t, self.num_heads, self.d_model // self.num_heads)

    def project_kv(self, x):
        return self._heads(self.key(x)), self._heads(self.value(x))

    def attend(self, x, k, v, mask: Optional[jax.Array], deterministic: bool = True):
        """x: (B, T, D) queries; k, v: (B, S, H, Dh); mask broadcastable to (B, H, T, S)."""
        q = self._heads(self.query(x))
        scale = 1.0 / math.sqrt(q.shape[-1])
        scores = jnp.einsum("bthd,bshd->bhts", q, k).astype(jnp.float32) * scale
        if mask is not None:
            scores = jnp.where(mask, scores, NEG_INF)
        probs = jax.nn.softmax(scores, axis=-1)
        probs = self.attn_dropout(probs, deterministic=deterministic).astype(v.dtype)
        out = jnp.einsum("bhts,bshd->bthd", probs, v)
        return self.out(out.reshape(x.shape[0], x.shape[1], self.d_model))

    def __call__(self, x, kv, mask=None, deterministic: bool = True):
        k, v = self.project_kv(kv)
        return self.attend(x, k, v, mask, deterministic)


class FeedForward(nn.Module):
    d_model: int
    d_ff: int
    dropout: float
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        h = nn.relu(nn.Dense(self.d_ff, dtype=self.dtype, name="linear1")(x))
        h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
        return nn.Dense(self.d_model, dtype=self.dtype, name="linear2")(h)


class BatchNorm(nn.Module):
    """BatchNorm over the leading axis with PyTorch's semantics.

    Training normalises with the biased batch variance and updates the running
    variance with the unbiased one (flax's BatchNorm uses the biased one there);
    ``momentum`` is PyTorch's (running = (1 - m) * running + m * batch). With an
    ``axis_name`` the statistics are averaged over devices (pmap / shard_map).
    """

    momentum: float = 0.1
    epsilon: float = 1e-5
    axis_name: Optional[str] = None

    @nn.compact
    def __call__(self, x, use_running_average: bool):
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,))
        bias = self.param("bias", nn.initializers.zeros, (features,))
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,))
        ra_var = self.variable("batch_stats", "var", jnp.ones, (features,))
        xf = x.astype(jnp.float32)
        if use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            mean = jnp.mean(xf, axis=0)
            mean_sq = jnp.mean(jnp.square(xf), axis=0)
            count = xf.shape[0]
            if self.axis_name is not None:
                mean, mean_sq = jax.lax.pmean((mean, mean_sq), self.axis_name)
                count = count * jax.lax.psum(1, self.axis_name)
            var = jnp.maximum(mean_sq - jnp.square(mean), 0.0)
            if not self.is_initializing():
                unbiased = var * count / max(count - 1, 1) if isinstance(count, int) \
                    else var * count / jnp.maximum(count - 1, 1)
                m = self.momentum
                ra_mean.value = (1 - m) * ra_mean.value + m * mean
                ra_var.value = (1 - m) * ra_var.value + m * unbiased
        y = (xf - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
        return y.astype(x.dtype)
