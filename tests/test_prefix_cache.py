"""The prefix cache: prefills that continue from a reused prompt state equal full prefills, and the
cache never serves a state that is not exactly a prefix of the prompt (or, for a reused encoder
pass, exactly the prompt)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import GPT_TINY, RNN_LM, TINY

MAX_NEW = 8


def _model(path, *overrides):
    from nety_jax.config import load_config
    from nety_jax.models import get_model
    cfg = load_config(path, ["model.vocab_size=97", *overrides])
    model = get_model(cfg.model)
    return model, model.init(jax.random.PRNGKey(3))


def _batch(rows, width=None):
    width = width or max(map(len, rows))
    tokens = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = r
    return jnp.asarray(tokens), jnp.asarray([len(r) for r in rows], jnp.int32)


@functools.lru_cache(maxsize=None)
def _jitted(model):
    return (jax.jit(model.decode_step), jax.jit(model.start_decoding, static_argnums=3),
            jax.jit(model.start_from_states, static_argnums=4))


def _greedy(model, variables, first, cache, n=MAX_NEW):
    """n greedy tokens per row from the first logits and a cache (a plain Python loop)."""
    out, logits, step = [], first, _jitted(model)[0]
    for _ in range(n):
        nxt = jnp.argmax(logits, -1).astype(jnp.int32)
        out.append(np.asarray(nxt))
        logits, cache = step(variables, nxt, cache)
    return np.stack(out, 1)


def _start(model, variables, tokens, lengths):
    return _jitted(model)[1](variables, tokens, lengths, MAX_NEW)


def _start_from(model, variables, states, tokens, lengths):
    return _jitted(model)[2](variables, states, tokens, lengths, MAX_NEW)


PROMPTS = [[5, 9, 14, 3, 22, 40, 41, 7, 8, 60, 12], [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
                                                    26, 27, 28, 29, 30], [33, 34, 35]]


@pytest.mark.parametrize("path", [GPT_TINY, RNN_LM], ids=["gpt", "rnn_lm"])
def test_continuing_from_a_prefix_state_equals_the_full_prefill(path):
    """Rows continue from states cached at different prefix lengths (one row from nothing), in one
    batch wider than any of them: logits and the greedy tokens after them equal the full prefill."""
    model, variables = _model(path)
    assert model.reuse == "prefix"
    full_first, full_cache = _start(model, variables, *_batch(PROMPTS))
    cut = [4, 17, 0]  # tokens each row has cached (the last row: none)
    _, pre_cache = _start(model, variables, *_batch([p[:c] for p, c in zip(PROMPTS, cut) if c]))
    states = model.prompt_states(pre_cache, 2) + [None]
    joined = model.join_states(states, 4)  # a filler row too, as batches are bucketed
    suffix_tokens, suffix_lengths = _batch([p[c:] for p, c in zip(PROMPTS, cut)] + [[1]], width=24)
    first, cache = _start_from(model, variables, joined, suffix_tokens, suffix_lengths)
    np.testing.assert_allclose(np.asarray(first)[:3], np.asarray(full_first), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(cache["pos"])[:3], [len(p) for p in PROMPTS])
    want = _greedy(model, variables, full_first, full_cache)
    got = _greedy(model, variables, first, cache)[:3]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("path", [GPT_TINY, RNN_LM], ids=["gpt", "rnn_lm"])
def test_a_state_of_a_prompt_that_continued_a_prefix_continues_again(path):
    """Chat turns: a state saved from a continued prefill serves the next turn."""
    model, variables = _model(path)
    whole = PROMPTS[1]
    first_turn = model.prompt_states(_start(model, variables, *_batch([whole[:5]]))[1], 1)
    toks, lens = _batch([whole[5:12]])
    second_turn = model.prompt_states(
        _start_from(model, variables, model.join_states(first_turn, 1), toks, lens)[1], 1)
    toks, lens = _batch([whole[12:]])
    first, _ = _start_from(model, variables, model.join_states(second_turn, 1), toks, lens)
    full, _ = _start(model, variables, *_batch([whole]))
    np.testing.assert_allclose(np.asarray(first), np.asarray(full), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("overrides", [(), ("model.copy=true", "model.memory=sequence")], ids=["plain", "copy"])
def test_hybrid_reuses_the_encoder_pass_of_an_identical_source(overrides):
    model, variables = _model(TINY, *overrides)
    assert model.reuse == "whole"
    tokens, lengths = _batch([[5, 6, 7, 2], [9, 10, 11, 12, 13, 2]], width=8)
    full_first, full_cache = _start(model, variables, tokens, lengths)
    states = model.prompt_states(full_cache, 2)
    joined = model.join_states(states[::-1], 2)  # rows in another order: each keeps its own source's
    first, cache = _start_from(model, variables, joined, tokens[::-1], lengths[::-1])
    np.testing.assert_allclose(np.asarray(first), np.asarray(full_first)[::-1], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(_greedy(model, variables, first, cache, 3),
                                  _greedy(model, variables, full_first, full_cache, 3)[::-1])
