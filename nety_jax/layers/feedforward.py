"""The position-wise feed-forward block: Dense -> activation -> dropout -> Dense."""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from nety_jax.layers.dropout import Dropout

ACTIVATIONS = {
    "relu": nn.relu,
    "gelu": lambda x: nn.gelu(x, approximate=True),  # GPT-2's tanh approximation
    "gelu_exact": lambda x: nn.gelu(x, approximate=False),  # PyTorch's nn.GELU()
}


def gelu_exact(x):
    return nn.gelu(x, approximate=False)


class FeedForward(nn.Module):
    d_model: int
    d_ff: int
    dropout: float
    activation: str = "relu"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        h = ACTIVATIONS[self.activation](nn.Dense(self.d_ff, dtype=self.dtype, name="linear1")(x))
        h = Dropout(self.dropout)(h, deterministic=deterministic)
        return nn.Dense(self.d_model, dtype=self.dtype, name="linear2")(h)
