"""``int8_matmul``: int8 weights x float32 rows, for a few rows (a decode step's batch: ``Linear``).
XLA's CPU backend widens int8 weights to float32 first, so int8 decoding was no faster than
float32 there; the kernel streams the int8 bytes."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from nety_jax.kernels import MAX_ROWS, TARGET, _product, _static, enabled


def int8_usable(x: jax.Array, dtype) -> bool:
    """Whether ``Linear`` should call the int8 kernel for input ``x``."""
    return (jnp.dtype(dtype) == jnp.float32 and _static(x.shape)
            and math.prod(x.shape[:-1]) <= MAX_ROWS and enabled())


def int8_matmul(x: jax.Array, kernel: jax.Array, scale: jax.Array) -> jax.Array:
    """(..., K) float32 @ (K, N) int8, times (N,) scales -> (..., N) float32, through the kernel."""
    k, n = kernel.shape
    return _product(TARGET, x.astype(jnp.float32), k, n, kernel, scale.astype(jnp.float32))
