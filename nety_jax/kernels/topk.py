"""``top_k``: each row's k largest values and indices, as ``lax.top_k`` (sorted, ties to the lower
index). XLA's CPU TopK sat on a batched decode step's critical path."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from nety_jax.kernels import TOP_K_TARGET, _static, enabled


def top_k(x: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """``lax.top_k`` over the last axis: our kernel for float32 rows on the CPU, XLA's otherwise."""
    if x.dtype != jnp.float32 or not _static(x.shape) or x.ndim < 1 or not 1 <= k <= x.shape[-1] \
            or not enabled():
        return jax.lax.top_k(x, k)
    rows = x.reshape(-1, x.shape[-1])
    call = jax.ffi.ffi_call(TOP_K_TARGET, (jax.ShapeDtypeStruct((rows.shape[0], k), jnp.float32),
                                           jax.ShapeDtypeStruct((rows.shape[0], k), jnp.int32)),
                            vmap_method="sequential")
    values, indices = call(rows)
    return values.reshape(x.shape[:-1] + (k,)), indices.reshape(x.shape[:-1] + (k,))
