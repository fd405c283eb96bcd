"""Shared layers: the hash-based dropout and the int8 matrix kernel."""
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nety_jax.layers import Dropout
from nety_jax.layers.dropout import keep_mask


def test_dropout_keeps_the_right_fraction_and_scales():
    x = jnp.ones((256, 512))
    y = Dropout(0.1).apply({}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(0)})
    kept = np.asarray(y) > 0
    assert abs(kept.mean() - 0.9) < 0.003  # 131k draws: 5 standard deviations is 0.004
    np.testing.assert_allclose(np.asarray(y)[kept], 1 / 0.9, rtol=1e-6)
    assert abs(float(jnp.mean(y)) - 1.0) < 0.005
    assert Dropout(0.1).apply({}, x, deterministic=True) is x


def test_dropout_masks_are_independent_across_keys_and_neighbours():
    a = np.asarray(keep_mask(jax.random.PRNGKey(1), (1 << 18,), 0.5), np.float64)
    b = np.asarray(keep_mask(jax.random.PRNGKey(2), (1 << 18,), 0.5), np.float64)
    corr = lambda u, v: np.corrcoef(u, v)[0, 1]
    assert abs(corr(a, b)) < 0.01  # two keys
    assert abs(corr(a[:-1], a[1:])) < 0.01  # neighbouring elements
    assert abs(corr(a[:-64], a[64:])) < 0.01
    assert not np.array_equal(a, b)


needs_compiler = pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++") or os.environ.get("CXX")),
                                    reason="the int8 kernel is built with the machine's C++ compiler")


@needs_compiler
def test_int8_kernel_equals_xla_widened_product():
    from nety_jax.layers import int8_matmul
    from nety_jax.layers.linear import quantize_kernel
    assert int8_matmul.load()
    rs = np.random.default_rng(0)
    for rows, k, n in [(1, 64, 48), (2, 13, 37), (3, 512, 130), (4, 7, 16), (6, 33, 200)]:  # tails of k and n
        q, scale = quantize_kernel(rs.standard_normal((k, n)).astype(np.float32))
        x = jnp.asarray(rs.standard_normal((rows, k)), jnp.float32)
        want = (x @ jnp.asarray(q, jnp.float32)) * scale
        got = jax.jit(int8_matmul.int8_matmul)(x, jnp.asarray(q), jnp.asarray(scale))
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    batched = jax.vmap(int8_matmul.int8_matmul, in_axes=(0, None, None))(x[:, None], jnp.asarray(q), scale)
    np.testing.assert_allclose(np.asarray(batched[:, 0]), np.asarray(want), rtol=1e-5, atol=1e-5)


@needs_compiler
def test_int8_linear_uses_the_kernel_for_few_rows_and_never_in_exports():
    from nety_jax.layers import Linear, int8_matmul
    layer = Linear(24, quant="int8")
    variables = layer.init(jax.random.PRNGKey(0), jnp.ones((1, 16)))
    text = lambda rows: jax.jit(layer.apply).lower(variables, jnp.ones((rows, 16))).as_text()
    assert int8_matmul.TARGET in text(1) and int8_matmul.TARGET in text(int8_matmul.MAX_ROWS)
    assert int8_matmul.TARGET not in text(int8_matmul.MAX_ROWS + 1)  # XLA's GEMM for larger batches
    assert int8_matmul.TARGET not in jax.jit(Linear(24).apply).lower(
        Linear(24).init(jax.random.PRNGKey(0), jnp.ones((1, 16))), jnp.ones((1, 16))).as_text()
    with int8_matmul.portable():
        exported = jax.export.export(jax.jit(layer.apply), platforms=("cpu",))(
            variables, jax.ShapeDtypeStruct((1, 16), jnp.float32))
    assert int8_matmul.TARGET not in exported.mlir_module()
