"""``decode_attention``: one query a row over the filled positions of its KV cache only (XLA's
masked product reads every position of every cache every step; ``SelfAttention.cached`` calls
it for one-token steps)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from nety_jax.kernels import ATTENTION_TARGET, _static, enabled


def decode_attention_usable(q: jax.Array, k: jax.Array) -> bool:
    """Whether a cached step may use our one-query attention: float32, one query, static shapes."""
    return (q.ndim == 4 and q.shape[2] == 1 and q.dtype == jnp.float32 and k.dtype == jnp.float32
            and _static(q.shape, k.shape) and enabled())


def decode_attention(q: jax.Array, k: jax.Array, v: jax.Array, lengths: jax.Array) -> jax.Array:
    """q (B, H, 1, D), caches (B, H, L, D), lengths (B,) filled positions -> (B, H, 1, D):
    softmax attention over each row's first ``lengths`` cache positions."""
    b, h, _, d = q.shape
    call = jax.ffi.ffi_call(ATTENTION_TARGET, jax.ShapeDtypeStruct((b, h, d), jnp.float32),
                            vmap_method="sequential")
    return call(q[:, :, 0], k, v, lengths.astype(jnp.int32))[:, :, None]
