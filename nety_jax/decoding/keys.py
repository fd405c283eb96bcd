"""Per-row PRNG keys from seeds (JAX only: exported artifacts use it without Flax)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def row_keys(seed, batch: int, first_row: int = 0) -> np.ndarray:
    """(B, 2) raw keys: one seed folded with the row index (counted from ``first_row``, so a
    batch cut in parts draws what it draws whole), or one seed per row."""
    if np.ndim(seed) == 0:
        base = jax.random.PRNGKey(int(seed))
        return np.asarray(jax.vmap(lambda i: jax.random.fold_in(base, i))(first_row + jnp.arange(batch)))
    seeds = np.broadcast_to(np.asarray(seed, np.int64), (batch,))
    return np.asarray(jax.vmap(jax.random.PRNGKey)(jnp.asarray(seeds % (1 << 32), jnp.uint32)))
