"""``Linear``: flax's Dense (same parameter names), with an int8 weight-only form.

Quantized (``quant="int8"``), the kernel is int8 with one float32 scale per output
channel (``scale``: max |w| of the column / 127); activations stay in the compute
dtype (float32 or bfloat16). On the CPU, a product of a few float32 rows (a decode
step) goes through our int8 kernel (``nety_jax.kernels``: it reads one byte per weight);
everywhere else the kernel is widened on the fly for XLA's dot. Float32 products of a
batched decode step (``kernels.MATMUL_ROWS`` rows) go through our float32 kernel, from the
kernel's packed panels when generation made them (a ``packed`` collection). ``nety-jax
quantize`` converts a trained run; nothing trains in int8.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nety_jax import kernels
from nety_jax.layers.partitioning import named


class Linear(nn.Module):
    features: int
    use_bias: bool = True
    dtype: Any = jnp.float32
    quant: str = "none"
    axes: tuple = ("embed", "mlp")  # logical names of the kernel's (input, output) axes

    def _kernel(self, fan_in: int):
        out = (self.axes[1],)
        if self.quant == "int8":
            q = self.param("kernel", named(nn.initializers.zeros, self.axes), (fan_in, self.features), jnp.int8)
            scale = self.param("scale", named(nn.initializers.ones, out), (self.features,), jnp.float32)
            return q, scale
        return self.param("kernel", named(nn.linear.default_kernel_init, self.axes), (fan_in, self.features),
                          jnp.float32), None

    @nn.compact
    def __call__(self, x):
        dtype = jnp.dtype(self.dtype)
        kernel, scale = self._kernel(x.shape[-1])
        if scale is not None and kernels.int8_usable(x, dtype):
            y = kernels.int8_matmul(x, kernel, scale)
        elif scale is None and kernels.matmul_usable(x, dtype, self.features):
            y = self._float_product(x, kernel)
        else:
            y = jnp.dot(x.astype(dtype), kernel.astype(dtype))
            if scale is not None:
                y = y * scale.astype(dtype)
        if self.use_bias:
            bias = self.param("bias", named(nn.initializers.zeros, (self.axes[1],)), (self.features,), jnp.float32)
            y = y + bias.astype(dtype)
        return y

    def _float_product(self, x, kernel):
        """Through our kernel; from the kernel's packed panels where decoding made them
        (``kernels.with_packed``) and the product is not a few rows' (``nety_matvec``)."""
        if self.has_variable("packed", "kernel") and x.size // x.shape[-1] > kernels.MATVEC_ROWS:
            return kernels.matmul_packed(x, self.get_variable("packed", "kernel"), kernel)
        return kernels.matmul(x, kernel)

    def weight(self) -> jax.Array:
        """The (dequantized) float32 kernel, for callers that use it directly (after a call)."""
        params = nn.unbox(self.variables["params"])  # boxed while initialising
        kernel = params["kernel"].astype(jnp.float32)
        return kernel * params["scale"] if "scale" in params else kernel


def quantize_kernel(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float (in, out) -> (int8 kernel, float32 per-output-channel scale)."""
    kernel = np.asarray(kernel, np.float32)
    scale = np.max(np.abs(kernel), axis=0) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    return np.clip(np.round(kernel / scale), -127, 127).astype(np.int8), scale


def dequantize_variables(tree):
    """Variables with int8 kernels (and their per-channel scales) -> the same variables with
    float32 kernels ``kernel * scale``, as the float model has them (other leaves unchanged)."""
    if not isinstance(tree, dict):
        return tree
    quantized = "scale" in tree and getattr(tree.get("kernel"), "dtype", None) == np.int8
    out = {k: dequantize_variables(v) for k, v in tree.items() if not (quantized and k == "scale")}
    if quantized:
        out["kernel"] = np.asarray(tree["kernel"], np.float32) * np.asarray(tree["scale"], np.float32)
    return out
