"""The fused output head + cross-entropy (``layers.losses.head_cross_entropy_sums``) against the
logits and ``cross_entropy_sums``, and the greedy / sampled token choice's cheaper passes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nety_jax.layers.losses import cross_entropy_sums, head_cross_entropy_sums

from conftest import GPT_TINY


def _reference(h, w, b, t, m, transposed, blocked):
    z = h @ (w.T if transposed else w)
    if b is not None:
        z = z + b
    if blocked:
        z = z.at[..., list(blocked)].set(-1e9)
    return cross_entropy_sums(z, t, m)


@pytest.mark.parametrize("transposed,bias,blocked", [(False, False, ()), (True, True, (0, 3)),
                                                     (False, True, (1,))])
def test_fused_head_loss_equals_logits_path(transposed, bias, blocked):
    rs = np.random.default_rng(0)
    n, d, v = (2, 7), 16, 50  # 14 rows in chunks of 4: the last chunk is padding-filled
    h = jnp.asarray(rs.normal(size=n + (d,)), jnp.float32)
    w = jnp.asarray(rs.normal(size=(v, d) if transposed else (d, v)), jnp.float32)
    b = jnp.asarray(rs.normal(size=(v,)), jnp.float32) if bias else None
    t = jnp.asarray(rs.integers(4, v, n), jnp.int32)
    m = jnp.asarray(rs.integers(0, 2, n), jnp.float32)
    fused = lambda h, w, b: head_cross_entropy_sums(h, w, b, t, m, transposed=transposed, blocked=blocked,
                                                    rows=4)
    want, got = _reference(h, w, b, t, m, transposed, blocked), fused(h, w, b)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-5, err_msg=key)
    args = (0, 1, 2) if bias else (0, 1)
    g_want = jax.grad(lambda *a: 3.0 * _reference(*a, t, m, transposed, blocked)["loss_sum"], args)(h, w, b)
    g_got = jax.jit(jax.grad(lambda *a: 3.0 * fused(*a)["loss_sum"], args))(h, w, b)
    for a, c in zip(g_want, g_got):
        np.testing.assert_allclose(c, a, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("tied", [False, True])
def test_gpt_loss_sums_fused_equals_logits(tied):
    from nety_jax.config import load_config
    from nety_jax.models import get_model
    from nety_jax.models.base import Model
    cfg = load_config(GPT_TINY, [f"model.tie_output={str(tied).lower()}"])
    model = get_model(cfg.model)
    variables = model.init(jax.random.PRNGKey(0))
    tokens = np.random.default_rng(1).integers(4, cfg.model.vocab_size, (2, 9)).astype(np.int32)
    targets = tokens.copy()
    targets[1, 5:] = 0  # padding stays out of every sum
    batch = {"tokens": tokens, "targets": targets}

    def loss(fn, params):
        return fn({**variables, "params": params}, batch, train=True, rng=jax.random.PRNGKey(2))[0]

    fused = lambda v, x, **k: model.loss_sums(v, x, **k)
    plain = lambda v, x, **k: Model.loss_sums(model, v, x, **k)
    got, want = loss(fused, variables["params"]), loss(plain, variables["params"])
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, err_msg=key)
    g_got = jax.grad(lambda p: loss(fused, p)["loss_sum"])(variables["params"])
    g_want = jax.grad(lambda p: loss(plain, p)["loss_sum"])(variables["params"])
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g_got, g_want)


def test_chosen_log_prob_is_log_softmax_bit_for_bit():
    from nety_jax.decoding.loop import chosen_log_prob
    logits = jnp.asarray(np.random.default_rng(3).normal(size=(5, 300)) * 4, jnp.float32)
    ids = jnp.asarray([0, 7, 299, 150, 3], jnp.int32)
    want = jnp.take_along_axis(jax.nn.log_softmax(logits), ids[:, None], axis=1)[:, 0]
    np.testing.assert_array_equal(jax.jit(chosen_log_prob)(logits, ids), want)


def test_temperature_after_top_k_draws_what_scaled_logits_draw():
    """Candidates chosen on the raw logits, their values scaled: the same ids as scaling every
    logit first (a positive temperature keeps the order)."""
    from nety_jax.decoding.sampling import SamplingParams, _choose, row_uniforms, sample_rows
    rs = np.random.default_rng(4)
    logits = jnp.asarray(rs.normal(size=(6, 500)) * 3, jnp.float32)
    params = SamplingParams.create(6, temperature=[0.0, 0.5, 1.0, 1.7, 0.3, 2.0], top_k=[0, 10, 40, 5, 0, 64],
                                   top_p=[1.0, 0.9, 1.0, 1.0, 0.8, 1.0], seed=5)
    greedy = (params.temperature <= 0) | (params.top_k == 1)
    for step in range(4):
        scaled = logits / jnp.where(greedy, 1.0, params.temperature)[:, None]
        values, indices = jax.lax.top_k(scaled, 500)  # every row: no cut of the candidates
        want = _choose(values, indices, params.top_k, params.top_p, row_uniforms(params.key, step), greedy)
        np.testing.assert_array_equal(sample_rows(logits, params, jnp.int32(step), 64), want)
