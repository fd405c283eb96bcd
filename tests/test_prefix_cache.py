"""The prefix cache: prefills that continue from a reused prompt state equal full prefills, and the
cache never serves a state that is not exactly a prefix of the prompt (or, for a reused encoder
pass, exactly the prompt)."""
import functools
import io

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


# -- the cache's keys, bound and counters (states stood in for by arrays of known size) --------
def _state(nbytes=64):
    return {"x": jnp.zeros((nbytes // 4,), jnp.float32)}


def test_a_prompt_never_gets_a_state_that_is_not_its_own_prefix():
    from nety_jax.serving.prefix_cache import PrefixCache
    cache = PrefixCache(1 << 20, "prefix")
    a = (5, 6, 7, 8)
    cache.store(a, {"tag": jnp.asarray([1])})
    assert cache.lookup((5, 6, 7, 9, 10, 11)) == (0, None)  # differs in the kept prompt's last token
    assert cache.lookup((5, 6, 7)) == (0, None)  # a prefix OF the kept prompt: its state is too long
    assert cache.lookup(a) == (0, None)  # the same prompt: something must be left to prefill
    assert cache.lookup((4, 5, 6, 7, 8, 9))[0] == 0  # the kept tokens, shifted
    n, state = cache.lookup(a + (1,))
    assert n == 4 and int(state["tag"][0]) == 1
    cache.store(a[:2], {"tag": jnp.asarray([2])})
    cache.store(a + (1, 2), {"tag": jnp.asarray([3])})
    # prompts that are prefixes of each other: each gets the longest kept one that it starts with
    assert [(n, int(s["tag"][0])) for n, s in (cache.lookup(a[:3]), cache.lookup(a + (1,)),
                                                cache.lookup(a + (1, 2, 3)), cache.lookup((5, 6, 0)))] == \
        [(2, 2), (4, 1), (6, 3), (2, 2)]
    assert cache.stats.hits == 5 and cache.stats.misses == 4


def test_whole_reuse_needs_the_exact_padded_row():
    from nety_jax.serving.prefix_cache import PrefixCache
    cache = PrefixCache(1 << 20, "whole")
    cache.store((5, 6, 2, 0), _state())
    assert cache.lookup((5, 6, 2))[1] is None and cache.lookup((5, 6, 2, 0, 0))[1] is None
    assert cache.lookup((5, 7, 2, 0))[1] is None
    assert cache.lookup((5, 6, 2, 0))[0] == 4


def test_the_cache_stays_within_its_bytes_evicting_the_least_recently_used():
    from nety_jax.serving.prefix_cache import PrefixCache
    cache = PrefixCache(3 * 64, "prefix")
    for k in range(3):
        cache.store((k, 1), _state())
    assert cache.lookup((0, 1, 9))[0] == 2  # (0, 1) is now the most recently used
    cache.store((3, 1), _state())
    assert cache.stats.bytes == 3 * 64 and cache.stats.entries == 3 and cache.stats.evictions == 1
    assert cache.lookup((1, 1, 9))[0] == 0  # the least recently used went
    assert cache.lookup((0, 1, 9))[0] == 2 and cache.lookup((3, 1, 9))[0] == 2
    assert not cache.store((4, 1), _state(4 * 64))  # alone over the bound: not kept, nothing evicted
    assert cache.stats.entries == 3
    cache.store((0, 1), _state(128))  # a key kept again replaces its entry
    assert cache.stats.bytes <= 3 * 64 and cache.lookup((0, 1, 9))[0] == 2


def test_a_cut_state_serves_prompts_sharing_the_start_of_a_kept_one():
    """Keys and values cut back (the GPT): a kept prompt serves the tokens another prompt shares
    with it, up to the first that differs, and never past the new prompt's last but one."""
    from nety_jax.serving.prefix_cache import PrefixCache
    cuts = []
    a, b = np.asarray([1]), np.asarray([2])
    cache = PrefixCache(1 << 20, "prefix", cut=lambda state, n: cuts.append(n) or (int(state[0]), n))
    cache.store((1, 2, 3, 4, 5), a)
    cache.store((1, 2, 9), b)
    assert cache.lookup((1, 2, 3, 7, 7)) == (3, (1, 3))  # a system prompt shared, users differ
    assert cache.lookup((1, 2, 3, 4, 5, 6)) == (5, a)  # the whole kept prompt: not cut
    assert cache.lookup((1, 2, 3, 4, 5)) == (4, (1, 4))  # the same prompt: its last is prefilled
    assert cache.lookup((2, 2, 3)) == (0, None) and cuts == [3, 4]


# -- through the Python API and the chat ---------------------------------------------------------
TURNS = ["Il était une fois", "Il était une fois un roi qui avait",
         "Il était une reine"]  # the last shares only the start: a cut (GPT) or a miss


@pytest.mark.parametrize("fixture", ["trained_gpt", "trained_rnn_lm"])
def test_generation_through_the_cache_equals_generation_without(fixture, request):
    from nety_jax.serving.pretrained import load_pretrained
    workdir = request.getfixturevalue(fixture)[0]
    plain, cached = load_pretrained(workdir), load_pretrained(workdir, prefix_cache_mb=8)
    for text in TURNS:
        want = plain.generate([text, "Le"], temperature=0.0, max_new_tokens=6)
        assert cached.generate([text, "Le"], temperature=0.0, max_new_tokens=6) == want
    if fixture == "trained_gpt":  # speculation looks its drafts up in the whole prompt, not the suffix
        text = TURNS[1] + " un roi qui avait"
        assert cached.generate([text], temperature=0.0, max_new_tokens=6, speculate="ngram") == \
            plain.generate([text], temperature=0.0, max_new_tokens=6)
    stats = cached.prefix_cache.stats
    assert stats.hits >= 1 + (fixture == "trained_gpt") and stats.hit_tokens > 0 and stats.entries >= 3


def test_chat_resends_the_history_and_the_cache_spares_its_prefill(trained_gpt):
    from nety_jax.serving.chat import chat
    from nety_jax.serving.pretrained import load_pretrained
    model = load_pretrained(trained_gpt[0], prefix_cache_mb=8)
    out = io.StringIO()
    assert chat(model, stdin=io.StringIO("Il était\nune fois\nun roi\n"), stdout=out, temperature=0.0,
                max_new_tokens=4) == 0
    assert out.getvalue().count("nety> ") == 3
    stats = model.prefix_cache.stats
    assert stats.misses == 1 and stats.hits == 2 and stats.hit_tokens >= 4  # turns 2 and 3 reuse the history


def test_a_long_chat_leaves_out_its_oldest_messages(trained_gpt):
    from nety_jax.serving.pretrained import load_pretrained
    model = load_pretrained(trained_gpt[0])
    history = [("user", f"message numéro {k} du roi et de la reine") for k in range(40)]
    prompt = model.chat_prompt(history, 8)
    assert prompt.endswith("numéro 39 du roi et de la reine") and "numéro 0 " not in prompt
    assert len(model.tokenizer.encode(prompt)) <= model.model.prompts.limit(model.config.data, 8)


def test_prefix_cache_size_is_checked(trained_gpt):
    from nety_jax.errors import NetyError
    from nety_jax.serving.pretrained import load_pretrained
    with pytest.raises(NetyError, match="megabytes >= 0"):
        load_pretrained(trained_gpt[0], prefix_cache_mb=-1)


# -- the serving engines -------------------------------------------------------------------------
ENGINE_PROMPTS = ["Il était une fois", "Il était une fois un roi", "Il était une reine", "Il était une fois"]


@pytest.mark.parametrize("fixture,batching", [("trained_gpt", "continuous"), ("trained_gpt", "dynamic"),
                                               ("trained_run", "continuous")], ids=["gpt-continuous", "gpt-dynamic",
                                                                                      "hybrid-continuous"])
def test_the_engines_prefill_through_the_cache_with_the_replies_of_a_plain_generate(fixture, batching, request):
    """Prompts that extend, share the start of, or repeat earlier ones (served one after the other,
    so the cache holds the earlier ones): each reply is the one an uncached generate gives."""
    from nety_jax.serving.engine import PretrainedBackend, Row
    from nety_jax.serving.pretrained import load_pretrained
    from nety_jax.serving.server import make_engine
    from test_continuous import _submit
    workdir = request.getfixturevalue(fixture)
    workdir = workdir[0] if isinstance(workdir, tuple) else workdir
    plain, cached = load_pretrained(workdir), load_pretrained(workdir, prefix_cache_mb=8)
    engine = make_engine(PretrainedBackend(cached), batching, 4, 1.0, 8, 3, 2)  # test_continuous's slots, chunk
    for prompt in ENGINE_PROMPTS:
        ids = cached.model.prompts.ids(cached.tokenizer, prompt, cached.config.data)
        _, finished, results = _submit(engine, [Row(ids, 0.0, 0, 1.0, 6, 0)])
        assert finished.wait(300)
        (kind, (got,)), = results
        assert got.text == plain.generate([prompt], temperature=0.0, max_new_tokens=6)[0][0], prompt
    engine.close()
    stats = cached.prefix_cache.stats
    assert stats.hits >= (3 if fixture == "trained_gpt" else 1) and stats.hit_tokens > 0


def test_the_cache_counters_are_prometheus_metrics():
    from prometheus_client import CollectorRegistry, generate_latest
    from nety_jax.serving.prefix_cache import CacheCollector, PrefixCache
    cache = PrefixCache(1 << 20, "prefix")
    cache.store((1, 2), _state())
    cache.lookup((1, 2, 3))
    cache.lookup((4, 5))
    registry = CollectorRegistry()
    registry.register(CacheCollector(cache))
    text = generate_latest(registry).decode()
    for line in ("nety_prefix_cache_hits_total 1.0", "nety_prefix_cache_misses_total 1.0",
                 "nety_prefix_cache_hit_tokens_total 2.0", "nety_prefix_cache_bytes 64.0",
                 "nety_prefix_cache_entries 1.0", "nety_prefix_cache_max_bytes 1.048576e+06"):
        assert line in text, line


@pytest.mark.parametrize("command", ["serve", "chat"])
@pytest.mark.parametrize("size", ["-1", "inf", "nan"])
def test_a_bad_prefix_cache_size_is_one_line_and_exit_2(command, size, capsys):
    from nety_jax.cli import main
    assert main([command, "--checkpoint", "no-such-run", "--prefix-cache-mb", size]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nety-jax: error: --prefix-cache-mb must be a number >= 0") and err.count("\n") == 1


def test_the_server_metrics_show_the_prefix_cache(trained_gpt):
    from fastapi.testclient import TestClient
    from nety_jax.serving.engine import PretrainedBackend
    from nety_jax.serving.pretrained import load_pretrained
    from nety_jax.serving.server import create_app
    app = create_app(PretrainedBackend(load_pretrained(trained_gpt[0], prefix_cache_mb=1)), "gpt", batching="dynamic")
    text = TestClient(app).get("/metrics").text
    assert "nety_prefix_cache_hits_total 0.0" in text and "nety_prefix_cache_max_bytes 1.048576e+06" in text
    app.state.server.engine.close()
    plain = create_app(PretrainedBackend(load_pretrained(trained_gpt[0])), "gpt", batching="dynamic")
    assert "nety_prefix_cache" not in TestClient(plain).get("/metrics").text
    plain.state.server.engine.close()


def test_chat_prompt_checks_its_arguments(trained_gpt):
    from nety_jax.errors import NetyError
    from nety_jax.serving.pretrained import load_pretrained
    model = load_pretrained(trained_gpt[0])
    for bad in ([], "bonjour", [("user",)], [("user", 3)], None):
        with pytest.raises(NetyError, match="messages must be"):
            model.chat_prompt(bad)
    for bad in (0, 1.5, "8", 10 ** 6):
        with pytest.raises(NetyError, match="max_new_tokens"):
            model.chat_prompt([("user", "bonjour")], bad)
