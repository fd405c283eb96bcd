"""Per-row PRNG keys from seeds (JAX only: exported artifacts use it without Flax)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def seed_keys(seeds) -> np.ndarray:
    """(..., 2) uint32 raw keys of seeds from 0 to 2**64 - 1: [seed >> 32, seed & 0xFFFFFFFF], the
    key ``jax.random.PRNGKey`` builds for a 64-bit seed. Seeds below 2**32 keep the keys they always
    had ([0, seed]); seeds 2**32 apart no longer share one, as they did when folded into 32 bits."""
    s = np.asarray(seeds, np.uint64)
    return np.stack([(s >> np.uint64(32)).astype(np.uint32), (s & np.uint64(0xFFFFFFFF)).astype(np.uint32)], -1)


def row_keys(seed, batch: int, first_row: int = 0) -> np.ndarray:
    """(B, 2) raw keys: one seed folded with the row index (counted from ``first_row``, so a
    batch cut in parts draws what it draws whole), or one seed per row."""
    if np.ndim(seed) == 0:
        base = jnp.asarray(seed_keys(int(seed)))
        return np.asarray(jax.vmap(lambda i: jax.random.fold_in(base, i))(first_row + jnp.arange(batch)))
    return seed_keys(np.broadcast_to(np.asarray(seed, np.uint64), (batch,)))
