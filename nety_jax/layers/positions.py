"""Position information: PyTorch's sinusoidal table or learned embeddings, at per-row positions."""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nety_jax.layers.partitioning import named


def sinusoidal_table(max_len: int, d_model: int) -> np.ndarray:
    """PyTorch's table: sin on even features, cos on odd ones, base 10000."""
    position = np.arange(max_len, dtype=np.float64)[:, None]
    div = np.exp(np.arange(0, d_model, 2, dtype=np.float64) * (-math.log(10000.0) / d_model))
    table = np.zeros((max_len, d_model), dtype=np.float64)
    table[:, 0::2] = np.sin(position * div)
    table[:, 1::2] = np.cos(position * div)[:, : d_model // 2]
    return table.astype(np.float32)


class Positions(nn.Module):
    """(B, T) positions -> (B, T, D) vectors: ``sinusoidal`` (a constant) or ``learned``."""

    kind: str
    max_len: int
    d_model: int

    @nn.compact
    def __call__(self, positions: jax.Array) -> jax.Array:
        if self.kind == "learned":
            table = self.param("embedding", named(nn.initializers.normal(0.02), ("position", "embed")),
                               (self.max_len, self.d_model))
        else:
            table = jnp.asarray(sinusoidal_table(self.max_len, self.d_model))
        return jnp.take(table, positions, axis=0, mode="clip")
