"""The exact GELU (layers.gelu_exact, the hybrid encoder's and GPT's `gelu_exact`): the value of
flax's nn.gelu(approximate=False), the derivative of a float64 reference, and a gradient that
jax.shard_map's varying-axes check accepts on every jax we support (jax 0.12's own erfc rule fails it)."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from nety_jax.layers import gelu_exact

X = np.linspace(-12.0, 12.0, 2401, dtype=np.float32)


def test_the_value_is_flax_exact_gelu():
    np.testing.assert_array_equal(jax.jit(gelu_exact)(X), jax.jit(lambda x: nn.gelu(x, approximate=False))(X))
    bf = X.astype(jnp.bfloat16)
    assert gelu_exact(bf).dtype == jnp.bfloat16
    np.testing.assert_array_equal(gelu_exact(bf), nn.gelu(bf, approximate=False))
    assert jax.grad(lambda x: gelu_exact(x).sum())(bf).dtype == jnp.bfloat16


def test_the_derivative_is_phi_plus_x_pdf():
    x64 = X.astype(np.float64)
    phi = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in x64])
    want = phi + x64 * np.exp(-0.5 * x64 ** 2) / math.sqrt(2 * math.pi)
    got = jax.jit(jax.vmap(jax.grad(gelu_exact)))(X)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)
    second = jax.jit(jax.vmap(jax.grad(jax.grad(gelu_exact))))(X[::100])
    want2 = (2 - x64[::100] ** 2) * np.exp(-0.5 * x64[::100] ** 2) / math.sqrt(2 * math.pi)
    np.testing.assert_allclose(second, want2, rtol=1e-4, atol=1e-6)


def test_gradient_inside_shard_map_equals_one_device():
    """Replicated weights, a batch split over the 4 devices, check_vma on (its default): per-device
    gradients psum-ed, as train.parallel=shard_map's step computes them."""
    mesh = Mesh(np.asarray(jax.devices()), ("batch",))
    w = jnp.linspace(-2.0, 2.0, 8)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 8)), jnp.float32)

    def loss(w, x):
        return gelu_exact(x * w).sum()

    def sharded(w, x):
        return jax.lax.psum(jax.grad(loss)(jax.lax.pcast(w, "batch", to="varying"), x), "batch")

    got = jax.jit(jax.shard_map(sharded, mesh=mesh, in_specs=(P(), P("batch")), out_specs=P()))(w, x)
    np.testing.assert_allclose(got, jax.grad(loss)(w, x), rtol=1e-5, atol=1e-6)
