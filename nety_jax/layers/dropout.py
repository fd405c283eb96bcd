"""Dropout whose mask comes from a cheap counter-based hash instead of Threefry.

flax's ``nn.Dropout`` draws one Threefry value per element: on XLA's CPU backend
that was a large share of NETY's training step and of its compile time
(docs/PERFORMANCE.md has the figures). Here the step's dropout key gives two 32-bit seeds (one
Threefry call per layer) and each element's bits are a 32-bit integer hash of its
index and the seeds (two rounds of Wellons' lowbias32, a bijection each): a few
integer operations per element, fused into the consumer. Masks of different
layers and steps come from different keys, as with ``nn.Dropout``.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def _lowbias32(x: jax.Array) -> jax.Array:
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def keep_mask(key: jax.Array, shape: tuple, rate: float) -> jax.Array:
    """Bernoulli(1 - rate) booleans: hash(hash(index + seed0) + seed1) >= rate * 2**32."""
    seeds = jax.random.bits(key, (2,), jnp.uint32)
    size = int(np.prod(shape))
    index = jax.lax.iota(jnp.uint32, size).reshape(shape)
    bits = _lowbias32(_lowbias32(index + seeds[0]) + seeds[1])
    threshold = jnp.uint32(min(int(round(rate * 2.0 ** 32)), 2 ** 32 - 1))
    return bits >= threshold


class Dropout(nn.Module):
    """Drop-in for ``nn.Dropout`` (rng collection ``dropout``), scaled by 1 / (1 - rate)."""

    rate: float

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        if deterministic or self.rate == 0.0:
            return x
        if self.rate >= 1.0:
            return jnp.zeros_like(x)
        keep = keep_mask(self.make_rng("dropout"), x.shape, self.rate)
        return jnp.where(keep, x / (1.0 - self.rate), jnp.zeros((), x.dtype)).astype(x.dtype)
