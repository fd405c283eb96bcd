"""BatchNorm with PyTorch's semantics (NETY's encoder head)."""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from nety_jax.layers.partitioning import named


class BatchNorm(nn.Module):
    """BatchNorm over the leading axis with PyTorch's semantics.

    Training normalises with the biased batch variance and updates the running
    variance with the unbiased one (flax's BatchNorm uses the biased one there);
    ``momentum`` is PyTorch's (running = (1 - m) * running + m * batch). With an
    ``axis_name`` the statistics are averaged over devices (pmap / shard_map).
    """

    momentum: float = 0.1
    epsilon: float = 1e-5
    axis_name: Optional[str] = None

    @nn.compact
    def __call__(self, x, use_running_average: bool):
        features = x.shape[-1]
        scale = self.param("scale", named(nn.initializers.ones, ("embed",)), (features,))
        bias = self.param("bias", named(nn.initializers.zeros, ("embed",)), (features,))
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,))
        ra_var = self.variable("batch_stats", "var", jnp.ones, (features,))
        xf = x.astype(jnp.float32)
        if use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            mean = jnp.mean(xf, axis=0)
            mean_sq = jnp.mean(jnp.square(xf), axis=0)
            count = xf.shape[0]
            if self.axis_name is not None:
                mean, mean_sq = jax.lax.pmean((mean, mean_sq), self.axis_name)
                count = count * jax.lax.psum(1, self.axis_name)
            var = jnp.maximum(mean_sq - jnp.square(mean), 0.0)
            if not self.is_initializing():
                unbiased = var * count / jnp.maximum(count - 1, 1)
                m = self.momentum
                ra_mean.value = (1 - m) * ra_mean.value + m * mean
                ra_var.value = (1 - m) * ra_var.value + m * unbiased
        y = (xf - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
        return y.astype(x.dtype)
