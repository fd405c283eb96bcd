"""Shared layers: the hash-based dropout."""
import jax
import jax.numpy as jnp
import numpy as np

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
