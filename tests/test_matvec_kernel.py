"""nety_matvec (nety_jax.kernels): the float32 product of a decode step at batch 1-8 (a speculative
verification's K+1 rows too), against XLA's."""
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nety_jax import kernels

pytestmark = pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++") or os.environ.get("CXX")),
                                reason="the kernels are built with the machine's C++ compiler")


def test_matvec_kernel_equals_xla_product_and_its_gradient():
    assert kernels.load()
    rs = np.random.default_rng(7)
    # one chunk (K < 32), chunks ending inside a pass of 8 rows, column tails (N % 16), the
    # output head's shape class (N much larger than K), every row count up to MATVEC_ROWS
    shapes = [(1, 7, 5), (2, 31, 17), (3, 100, 33), (4, 768, 96), (1, 333, 1000), (1, 64, 5003), (4, 1027, 64),
              (5, 129, 40), (6, 40, 300), (7, 257, 77), (8, 768, 96)]
    for m, k, n in shapes:
        x = jnp.asarray(rs.standard_normal((m, k)), jnp.float32)
        w = jnp.asarray(rs.standard_normal((k, n)), jnp.float32)
        text = jax.jit(kernels.matmul).lower(x, w).as_text()
        assert kernels.MATVEC_TARGET in text and kernels.MATMUL_TARGET not in text
        want = jnp.dot(x, w, precision="highest")
        got = jax.jit(kernels.matmul)(x, w)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=2e-4, err_msg=str((m, k, n)))
    x3 = x.reshape(2, m // 2, k)  # leading axes flatten into rows
    np.testing.assert_allclose(np.asarray(kernels.matmul(x3, w)).reshape(m, n), np.asarray(want), rtol=2e-5,
                               atol=2e-4)
    x, w = x[:, :64] / 8, w[:64, :40] / 8
    loss = lambda f: (lambda x, w: jnp.sum(jnp.tanh(f(x, w))))
    got = jax.grad(loss(kernels.matmul), argnums=(0, 1))(x, w)
    want = jax.grad(loss(lambda x, w: jnp.dot(x, w, precision="highest")), argnums=(0, 1))(x, w)
    for a, b in zip(got, want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


def test_linear_uses_the_matvec_kernel_for_a_few_rows_only():
    from nety_jax.layers import Linear
    assert kernels.load()
    k = 512  # a 512 x 512 kernel: MATVEC_MIN_WEIGHTS
    layer = Linear(k)
    variables = layer.init(jax.random.PRNGKey(0), jnp.ones((1, k)))
    text = lambda rows, dtype=jnp.float32: jax.jit(layer.apply).lower(variables, jnp.ones((rows, k), dtype)).as_text()
    assert kernels.MATVEC_TARGET in text(1) and kernels.MATVEC_TARGET in text(kernels.MATVEC_ROWS)
    assert kernels.MATVEC_TARGET not in text(kernels.MATVEC_ROWS + 1)
    assert kernels.MATVEC_TARGET not in text(1, jnp.bfloat16)
    with kernels.portable():
        assert kernels.MATVEC_TARGET not in text(1)
    small = Linear(24)  # weights in cache: XLA's product
    small_vars = small.init(jax.random.PRNGKey(0), jnp.ones((1, 16)))
    assert kernels.MATVEC_TARGET not in jax.jit(small.apply).lower(small_vars, jnp.ones((1, 16))).as_text()
    x = jnp.asarray(np.random.default_rng(8).standard_normal((3, k)), jnp.float32)
    with kernels.portable():
        want = layer.apply(variables, x)
    np.testing.assert_allclose(np.asarray(jax.jit(layer.apply)(variables, x)), np.asarray(want), rtol=1e-5,
                               atol=1e-5)


def test_matvec_t_kernel_equals_xla_product_and_the_tied_head_uses_it():
    assert kernels.load()
    rs = np.random.default_rng(9)
    for m, n, k in [(1, 5, 7), (2, 1000, 33), (3, 40, 100), (5, 300, 17), (6, 77, 40), (7, 129, 9), (8, 600, 32),
                    (4, 5003, 64)]:  # k of the last one divides MATVEC_MIN_WEIGHTS (the table below)
        x = jnp.asarray(rs.standard_normal((m, k)), jnp.float32)
        table = jnp.asarray(rs.standard_normal((n, k)), jnp.float32)
        assert kernels.matmul_t_usable(x, table) == (table.size >= kernels.MATVEC_MIN_WEIGHTS)
        np.testing.assert_allclose(np.asarray(jax.jit(kernels.matmul_t)(x, table)),
                                   np.asarray(jnp.dot(x, table.T, precision="highest")), rtol=2e-5, atol=2e-4)
    table = jnp.ones((kernels.MATVEC_MIN_WEIGHTS // k, k))
    assert kernels.matmul_t_usable(jnp.ones((kernels.MATVEC_ROWS, k)), table)
    assert not kernels.matmul_t_usable(jnp.ones((kernels.MATVEC_ROWS + 1, k)), table)
    x, table = x[:, :16] / 4, table[:40, :16] / 4 + 0.1
    loss = lambda f: (lambda x, t: jnp.sum(jnp.tanh(f(x, t))))
    got = jax.grad(loss(kernels.matmul_t), argnums=(0, 1))(x, table)
    want = jax.grad(loss(lambda x, t: jnp.dot(x, t.T, precision="highest")), argnums=(0, 1))(x, table)
    for a, b in zip(got, want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


def test_a_tied_gpt_decode_step_calls_the_transposed_kernel():
    from nety_jax.config import load_config
    from nety_jax.models import get_model
    cfg = load_config("configs/gpt_tiny.yaml", ["model.tie_output=true", "model.vocab_size=4096"])
    model = get_model(cfg.model)
    variables = model.init(jax.random.PRNGKey(0))
    _, cache = model.start_decoding(variables, jnp.ones((1, 3), jnp.int32), jnp.asarray([3]), 4)
    text = jax.jit(model.decode_step).lower(variables, jnp.ones((1,), jnp.int32), cache).as_text()
    assert kernels.MATVEC_T_TARGET in text
    with kernels.portable():
        want, _ = jax.jit(model.decode_step)(variables, jnp.ones((1,), jnp.int32), cache)
    got, _ = jax.jit(model.decode_step)(variables, jnp.ones((1,), jnp.int32), cache)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
