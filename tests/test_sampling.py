"""Sampling and the while_loop driven by fake logits with exactly known answers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nety_jax.config import EOS_ID, PAD_ID, SOS_ID, DecodeConfig
from nety_jax.generate import sample_loop
from nety_jax.sampling import ban_repeated_ngrams, sample_next

V, N = 12, 6
TABLE = np.random.default_rng(0).normal(size=(N, 3, V)).astype(np.float32) * 2.0  # (step, row, vocab)


def fake_logits(tokens, step):
    """Logits depend on the step (kept in the 'cache') and the row; eos is never likely."""
    logits = jnp.asarray(TABLE)[step, : tokens.shape[0]].at[:, EOS_ID].set(-50.0)
    return logits, step + 1


def run(dcfg, seed=0):
    out = jax.jit(lambda r: sample_loop(fake_logits, jnp.zeros((), jnp.int32), 3, r, dcfg))(
        jax.random.PRNGKey(seed))
    return np.asarray(out["tokens"])


def reference(dcfg, seed=0):
    """The same draws computed another way: numpy sorting / cumulative sums per step."""
    rng = jax.random.PRNGKey(seed)
    out = np.zeros((3, N), np.int32)
    for t in range(N):
        rng, key = jax.random.split(rng)
        logits = TABLE[t].copy()
        logits[:, EOS_ID] = -50.0
        if dcfg.greedy:
            out[:, t] = logits.argmax(-1)
            continue
        logits = logits / dcfg.temperature
        order = np.argsort(-logits, axis=-1, kind="stable")[:, : dcfg.top_k or V]
        vals = np.take_along_axis(logits, order, -1)
        probs = np.exp(vals - vals.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        keep = np.zeros_like(vals, bool)
        for r in range(3):
            mass = 0.0
            for j in range(vals.shape[1]):
                keep[r, j] = mass < dcfg.top_p
                mass += probs[r, j]
        vals = np.where(keep, vals, -1e9)
        choice = np.asarray(jax.random.categorical(key, jnp.asarray(vals), axis=-1))
        out[:, t] = order[np.arange(3), choice]
    return out


@pytest.mark.parametrize("dcfg", [
    DecodeConfig(max_new_tokens=N, temperature=0.0),
    DecodeConfig(max_new_tokens=N, temperature=0.8, top_k=3, top_p=1.0),
    DecodeConfig(max_new_tokens=N, temperature=1.0, top_k=0, top_p=0.7),
    DecodeConfig(max_new_tokens=N, temperature=0.8, top_k=5, top_p=0.9),
])
def test_fake_logits_give_exact_sequences(dcfg):
    np.testing.assert_array_equal(run(dcfg, seed=7), reference(dcfg, seed=7))


def test_top_k_one_and_tiny_p_are_greedy():
    greedy = run(DecodeConfig(max_new_tokens=N, temperature=0.0))
    table = TABLE.copy()
    table[..., EOS_ID] = -50.0
    np.testing.assert_array_equal(greedy, table.argmax(-1).T)
    np.testing.assert_array_equal(run(DecodeConfig(max_new_tokens=N, temperature=1.0, top_k=1)), greedy)
    np.testing.assert_array_equal(
        run(DecodeConfig(max_new_tokens=N, temperature=1.0, top_k=0, top_p=1e-6), seed=3), greedy)


CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52, 6: 22.46}


@pytest.mark.parametrize("top_k, top_p", [(4, 1.0), (0, 0.75), (5, 0.8)])
def test_draws_stay_in_the_sets_and_follow_the_distribution(top_k, top_p):
    probs = np.asarray([0.3, 0.2, 0.15, 0.1, 0.08, 0.07, 0.05, 0.03, 0.02], np.float64)
    logits = np.log(probs).astype(np.float32)
    n = 40_000
    draws = np.asarray(jax.jit(lambda k: sample_next(jnp.tile(jnp.asarray(logits), (n, 1)), k,
                                                     temperature=1.0, top_k=top_k, top_p=top_p))(
        jax.random.PRNGKey(123)))
    allowed = np.arange(top_k or len(probs))
    within_k = probs[allowed] / probs[allowed].sum()  # top-p acts on the top-k renormalised mass
    cum_before = np.cumsum(within_k) - within_k
    allowed = allowed[cum_before < top_p]
    assert set(np.unique(draws)) <= set(allowed.tolist())
    expected = probs[allowed] / probs[allowed].sum() * n
    observed = np.bincount(draws, minlength=len(probs))[allowed]
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < CHI2_999[len(allowed) - 1], (chi2, observed, expected)


def test_temperature_sharpens():
    logits = jnp.tile(jnp.log(jnp.asarray([0.5, 0.3, 0.2])), (20_000, 1))
    hot = np.asarray(sample_next(logits, jax.random.PRNGKey(0), temperature=2.0, top_k=0, top_p=1.0))
    cold = np.asarray(sample_next(logits, jax.random.PRNGKey(0), temperature=0.3, top_k=0, top_p=1.0))
    assert (cold == 0).mean() > 0.75 > (hot == 0).mean()


def test_no_repeat_ngram_bans_exactly_the_repeats():
    tokens = jnp.asarray([[SOS_ID, 5, 6, 7, 5, 6, 0, 0]])
    banned = ban_repeated_ngrams(jnp.zeros((1, 10)), tokens, jnp.asarray(5), 3)  # tail (5, 6) -> 7
    assert np.flatnonzero(np.asarray(banned[0]) < -1e8).tolist() == [7]
    banned = ban_repeated_ngrams(jnp.zeros((1, 10)), tokens, jnp.asarray(5), 2)  # tail (6,) -> 7
    assert np.flatnonzero(np.asarray(banned[0]) < -1e8).tolist() == [7]


def markov_logits(tokens, cache):
    """Row r's next token is a function of its last token and its own offset; row r says
    <eos> after 1 + r tokens (so rows stop at different lengths)."""
    offset, count = cache
    last = tokens[:, 0]
    nxt = 4 + (last + offset) % 7
    nxt = jnp.where(count >= 1 + offset, EOS_ID, nxt)
    return jax.nn.one_hot(nxt, V) * 10.0, (offset, count + 1)


def test_rows_finish_independently():
    dcfg = DecodeConfig(max_new_tokens=8, temperature=0.0)
    offsets = jnp.asarray([0, 3, 1, 5])
    loop = jax.jit(lambda c, r: sample_loop(markov_logits, c, c[0].shape[0], r, dcfg))
    batch = loop((offsets, jnp.zeros(4, jnp.int32)), jax.random.PRNGKey(0))
    for r in range(4):
        alone = loop((offsets[r:r + 1], jnp.zeros(1, jnp.int32)), jax.random.PRNGKey(0))
        np.testing.assert_array_equal(np.asarray(batch["tokens"][r]), np.asarray(alone["tokens"][0]))
        assert int(batch["lengths"][r]) == int(offsets[r]) + 2
        row = np.asarray(batch["tokens"][r])
        assert row[int(offsets[r]) + 1] == EOS_ID and (row[int(offsets[r]) + 2:] == PAD_ID).all()


def test_min_new_tokens_delays_eos():
    dcfg = DecodeConfig(max_new_tokens=8, temperature=0.0, min_new_tokens=4)
    out = sample_loop(markov_logits, (jnp.asarray([0]), jnp.zeros(1, jnp.int32)), 1,
                      jax.random.PRNGKey(0), dcfg)
    assert int(out["lengths"][0]) >= 5
