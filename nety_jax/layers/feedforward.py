"""The position-wise feed-forward block: Dense -> activation -> dropout -> Dense."""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from nety_jax.layers.dropout import Dropout
from nety_jax.layers.linear import Linear

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
    quant: str = "none"

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        h = ACTIVATIONS[self.activation](Linear(self.d_ff, dtype=self.dtype, quant=self.quant, name="linear1",
                                                     axes=("embed", "mlp"))(x))
        h = Dropout(self.dropout)(h, deterministic=deterministic)
        return Linear(self.d_model, dtype=self.dtype, quant=self.quant, name="linear2", axes=("mlp", "embed"))(h)
