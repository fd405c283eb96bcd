"""Our int8 CPU kernel (nety_jax.kernels) against XLA's widened product, computed the portable way."""
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nety_jax import kernels

needs_compiler = pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++") or os.environ.get("CXX")),
                                    reason="the kernel is built with the machine's C++ compiler")


@needs_compiler
def test_int8_kernel_equals_xla_widened_product():
    from nety_jax.layers.linear import quantize_kernel
    assert kernels.load()  # CI has a compiler: a build failure must fail here
    rs = np.random.default_rng(0)
    for rows, k, n in [(1, 64, 48), (2, 13, 37), (3, 512, 130), (4, 7, 16), (6, 33, 200)]:  # tails of k and n
        q, scale = quantize_kernel(rs.standard_normal((k, n)).astype(np.float32))
        x = jnp.asarray(rs.standard_normal((rows, k)), jnp.float32)
        want = (x @ jnp.asarray(q, jnp.float32)) * scale
        got = jax.jit(kernels.int8_matmul)(x, jnp.asarray(q), jnp.asarray(scale))
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    batched = jax.vmap(kernels.int8_matmul, in_axes=(0, None, None))(x[:, None], jnp.asarray(q), scale)
    np.testing.assert_allclose(np.asarray(batched[:, 0]), np.asarray(want), rtol=1e-5, atol=1e-5)


@needs_compiler
def test_int8_linear_uses_the_kernel_for_few_rows_and_never_in_exports():
    from nety_jax.layers import Linear
    layer = Linear(24, quant="int8")
    variables = layer.init(jax.random.PRNGKey(0), jnp.ones((1, 16)))
    text = lambda rows: jax.jit(layer.apply).lower(variables, jnp.ones((rows, 16))).as_text()
    assert kernels.TARGET in text(1) and kernels.TARGET in text(kernels.MAX_ROWS)
    assert kernels.TARGET not in text(kernels.MAX_ROWS + 1)  # XLA's GEMM for larger batches
    assert kernels.TARGET not in jax.jit(Linear(24).apply).lower(
        Linear(24).init(jax.random.PRNGKey(0), jnp.ones((1, 16))), jnp.ones((1, 16))).as_text()
    with kernels.portable():
        exported = jax.export.export(jax.jit(layer.apply), platforms=("cpu",))(
            variables, jax.ShapeDtypeStruct((1, 16), jnp.float32))
    assert kernels.TARGET not in exported.mlir_module()

