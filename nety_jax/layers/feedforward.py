"""The position-wise feed-forward block: Dense -> activation -> dropout -> Dense."""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nety_jax.layers.dropout import Dropout
from nety_jax.layers.linear import Linear


@jax.custom_jvp
def _erfc(x):
    return jax.lax.erfc(x)


# jax's own rule from 0.10.2 (d erfc/dx = -2/sqrt(pi) exp(-x^2)). jax 0.12's rule evaluates exp(-x^2)
# through lax.polynomial, whose constant coefficients fail shard_map's varying-manual-axes check
# ("Primitive polynomial requires varying manual axes to match") in the gradient of any sharded input
@_erfc.defjvp
def _erfc_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    # a Python float (weakly typed) keeps bfloat16 tangents bfloat16
    return jax.lax.erfc(x), (-2.0 / math.sqrt(math.pi)) * (dx * jnp.exp(-jnp.square(x)))


def gelu_exact(x):
    """PyTorch's nn.GELU(): x/2 erfc(-x/sqrt(2)), the same value as ``nn.gelu(x, approximate=False)``,
    differentiable inside ``jax.shard_map`` on every jax we support."""
    x = jnp.asarray(x)
    x = x if jnp.issubdtype(x.dtype, jnp.inexact) else x.astype(jnp.float32)
    return 0.5 * x * _erfc(-x * np.sqrt(0.5).astype(x.dtype))


ACTIVATIONS = {
    "relu": nn.relu,
    "gelu": lambda x: nn.gelu(x, approximate=True),  # GPT-2's tanh approximation
    "gelu_exact": gelu_exact,  # PyTorch's nn.GELU()
}


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
