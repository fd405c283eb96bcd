"""Sampling and the while_loop driven by fake logits with exactly known answers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nety_jax.config import EOS_ID, PAD_ID
from nety_jax.decoding import LoopSpec, SamplingParams, sample_loop, sample_rows
from nety_jax.decoding.sampling import ban_repeated_ngrams

V, N, B = 12, 6, 3
TABLE = np.random.default_rng(0).normal(size=(N, B, V)).astype(np.float32) * 2.0  # (step, row, vocab)
TABLE[..., EOS_ID] = -50.0  # eos is never likely


def fake_step(tokens, step):
    """Logits depend on the step (kept in the 'cache') and the row."""
    return jnp.asarray(TABLE)[step][: tokens.shape[0]], step + 1


def run(params: SamplingParams, spec=LoopSpec(max_new_tokens=N)):
    fn = jax.jit(lambda p: sample_loop(fake_step, jnp.asarray(TABLE[0]), jnp.asarray(1), p, spec))
    return np.asarray(fn(params)["tokens"])


def reference(params: SamplingParams):
    """The same draws computed another way: numpy sorting and cumulative sums per row and step."""
    out = np.zeros((B, N), np.int32)
    for t in range(N):
        for r in range(B):
            logits = TABLE[t, r].astype(np.float64)
            temp, k, p = float(params.temperature[r]), int(params.top_k[r]), float(params.top_p[r])
            if temp == 0.0 or k == 1:
                out[r, t] = logits.argmax()
                continue
            order = np.argsort(-logits, kind="stable")[: k or V]
            vals = logits[order] / temp
            probs = np.exp(vals - vals.max())
            probs /= probs.sum()
            keep = (np.cumsum(probs) - probs) < p if p < 1 else np.ones_like(probs, bool)
            probs = np.where(keep, probs, 0.0)
            cum = np.cumsum(probs / probs.sum())
            u = float(jax.random.uniform(jax.random.fold_in(jnp.asarray(params.key[r]), t)))
            out[r, t] = order[min(int(np.sum(cum < u)), int(keep.sum()) - 1)]
    return out


SETTINGS = [dict(temperature=0.0), dict(temperature=0.8, top_k=3), dict(temperature=1.0, top_p=0.7),
            dict(temperature=0.8, top_k=5, top_p=0.9),
            dict(temperature=[0.0, 0.7, 1.3], top_k=[0, 4, 2], top_p=[1.0, 0.8, 0.5])]


@pytest.mark.parametrize("settings", SETTINGS)
def test_fake_logits_give_exact_sequences(settings):
    params = SamplingParams.create(B, seed=[7, 8, 9], **settings)
    np.testing.assert_array_equal(run(params), reference(params))


def test_each_row_equals_that_row_alone_and_a_wide_top_k_is_the_same_program():
    params = SamplingParams.create(B, seed=[1, 2, 3], temperature=[0.9, 0.0, 1.2], top_k=[3, 0, 500],
                                   top_p=[0.9, 1.0, 0.95])
    together = run(params)
    for r in range(B):
        alone = SamplingParams.create(B, seed=[[1, 2, 3][r]] * B, temperature=float(params.temperature[r]),
                                      top_k=int(params.top_k[r]), top_p=float(params.top_p[r]))
        np.testing.assert_array_equal(run(alone)[r], together[r])


def test_top_k_one_and_tiny_p_are_greedy():
    greedy = run(SamplingParams.create(B, temperature=0.0))
    np.testing.assert_array_equal(greedy, TABLE.argmax(-1).T)
    np.testing.assert_array_equal(run(SamplingParams.create(B, temperature=1.0, top_k=1)), greedy)
    np.testing.assert_array_equal(run(SamplingParams.create(B, temperature=1.0, top_p=1e-6, seed=3)), greedy)


@pytest.mark.parametrize("top_k_max", [4, 64])  # candidates fewer than the vocabulary, and all of it
def test_a_greedy_batch_takes_what_a_greedy_row_takes_among_sampled_ones(top_k_max):
    """A batch of greedy rows takes each row's first candidate alone (no draw, no sorted
    candidates); the id is the one a greedy row gets in a batch that samples: the largest logit,
    the lowest id among equal ones."""
    logits = np.random.default_rng(5).normal(size=(3, V)).astype(np.float32)
    logits[0, [4, 9]] = logits[1, [2, 3]] = 9.0  # tied maxima
    logits = jnp.asarray(logits)
    greedy = sample_rows(logits, SamplingParams.create(3, temperature=0.0), jnp.asarray(0), top_k_max)
    np.testing.assert_array_equal(np.asarray(greedy), [4, 2, int(np.argmax(np.asarray(logits[2])))])
    mixed = SamplingParams.create(3, seed=[1, 2, 3], temperature=[0.0, 0.0, 1.0], top_k=[0, 0, 0])
    np.testing.assert_array_equal(np.asarray(sample_rows(logits, mixed, jnp.asarray(0), top_k_max))[:2], [4, 2])
    # a program compiled for greedy rows only (``LoopSpec.greedy_only``) holds that argmax alone
    only = sample_rows(logits, SamplingParams.create(3, temperature=0.0), jnp.asarray(0), top_k_max, True)
    np.testing.assert_array_equal(np.asarray(only), np.asarray(greedy))


def test_a_greedy_only_loop_gives_the_greedy_rows_of_the_generic_one():
    generic = run(SamplingParams.create(B, seed=[1, 2, 3], temperature=[0.0, 0.0, 1.0]))
    only = run(SamplingParams.create(B, temperature=0.0), LoopSpec(max_new_tokens=N, greedy_only=True))
    np.testing.assert_array_equal(only[:2], generic[:2])
    np.testing.assert_array_equal(only, TABLE.argmax(-1).T)


CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52, 6: 22.46}


@pytest.mark.parametrize("top_k, top_p", [(4, 1.0), (0, 0.75), (5, 0.8)])
def test_draws_stay_in_the_sets_and_follow_the_distribution(top_k, top_p):
    probs = np.asarray([0.3, 0.2, 0.15, 0.1, 0.08, 0.07, 0.05, 0.03, 0.02], np.float64)
    logits = np.log(probs).astype(np.float32)
    n = 40_000
    params = SamplingParams.create(n, temperature=1.0, top_k=top_k, top_p=top_p, seed=123)
    draws = np.asarray(jax.jit(lambda p: sample_rows(jnp.tile(jnp.asarray(logits), (n, 1)), p, 0, 64))(params))
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
    draw = lambda t: np.asarray(sample_rows(logits, SamplingParams.create(20_000, temperature=t), 0, 64))
    assert (draw(0.3) == 0).mean() > 0.75 > (draw(2.0) == 0).mean()


def test_no_repeat_ngram_bans_exactly_the_repeats():
    tokens = jnp.asarray([[5, 6, 7, 5, 6, 0, 0]])  # 5 written
    banned = ban_repeated_ngrams(jnp.zeros((1, 10)), tokens, jnp.asarray(5), 3)  # tail (5, 6) -> 7
    assert np.flatnonzero(np.asarray(banned[0]) < -1e8).tolist() == [7]
    banned = ban_repeated_ngrams(jnp.zeros((1, 10)), tokens, jnp.asarray(5), 2)  # tail (6,) -> 7
    assert np.flatnonzero(np.asarray(banned[0]) < -1e8).tolist() == [7]


def markov_step(tokens, cache):
    """Row r's next token is a function of its last token and its own offset; row r says
    <eos> after 1 + r tokens (so rows stop at different lengths)."""
    offset, count = cache
    nxt = 4 + (tokens + offset) % 7
    nxt = jnp.where(count >= 1 + offset, EOS_ID, nxt)
    return jax.nn.one_hot(nxt, V) * 10.0, (offset, count + 1)


def _markov(offsets, spec, params=None):
    first = jax.nn.one_hot(4 + offsets % 7, V) * 10.0
    params = params or SamplingParams.create(len(offsets), temperature=0.0)
    return sample_loop(markov_step, first, (offsets, jnp.ones_like(offsets)), params, spec)


def test_rows_finish_independently():
    spec = LoopSpec(max_new_tokens=8)
    offsets = jnp.asarray([0, 3, 1, 5])
    loop = jax.jit(lambda o, p: _markov(o, spec, p))
    batch = loop(offsets, SamplingParams.create(4, temperature=0.0))
    for r in range(4):
        alone = loop(offsets[r:r + 1], SamplingParams.create(1, temperature=0.0))
        np.testing.assert_array_equal(np.asarray(batch["tokens"][r]), np.asarray(alone["tokens"][0]))
        assert int(batch["lengths"][r]) == int(offsets[r]) + 2
        row = np.asarray(batch["tokens"][r])
        assert row[int(offsets[r]) + 1] == EOS_ID and (row[int(offsets[r]) + 2:] == PAD_ID).all()


def test_per_row_max_new_tokens_and_min_new_tokens():
    offsets = jnp.asarray([5, 5, 5])
    params = SamplingParams.create(3, temperature=0.0, max_new_tokens=[2, 4, 8])
    out = _markov(offsets, LoopSpec(max_new_tokens=8), params)
    assert np.asarray(out["lengths"]).tolist() == [2, 4, 7]
    assert (np.asarray(out["tokens"])[0, 2:] == PAD_ID).all()
    delayed = _markov(jnp.asarray([0]), LoopSpec(max_new_tokens=8, min_new_tokens=4))
    assert int(delayed["lengths"][0]) >= 5
