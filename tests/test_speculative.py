"""Speculative decoding (decoding/speculative.py): the same greedy replies as plain decoding on
every architecture, and sampled replies distributed exactly as plain sampling draws them."""
import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nety_jax.config import EOS_ID, load_config
from nety_jax.decoding import LoopSpec, SamplingParams, generate_jit
from nety_jax.decoding import speculative
from nety_jax.decoding.generation import _callbacks, _verify_callbacks
from nety_jax.errors import ConfigError
from nety_jax.models import get_model
from tests.conftest import GPT_TINY, RNN_LM, TINY


def _draft(history, end, k: int):
    """``ngram_lookup``'s continuation as the k ids it drafts, whether there was one, and the ids matched."""
    cont, matched = speculative.ngram_lookup(history, end)
    return jax.lax.dynamic_slice_in_dim(history, jnp.maximum(cont, 0), k), cont >= 0, matched


def test_ngram_lookup_finds_what_followed_the_latest_longest_match():
    h = jnp.asarray([7, 8, 9, 5, 7, 8, 6, 4, 9, 5, 7, 8, 0, 0, 0, 0], jnp.int32)
    draft, found, matched = _draft(h, jnp.asarray(12), 3)  # ends ... 9 5 7 8: the 3-gram 5 7 8
    assert bool(found) and np.asarray(draft).tolist() == [6, 4, 9]  # after 5 7 8 at 3..5, not 7 8 at 0
    assert int(matched) == 3
    draft, found, matched = _draft(h, jnp.asarray(6), 2)  # ends 7 8: earlier 7 8 at 0
    assert bool(found) and np.asarray(draft).tolist() == [9, 5] and int(matched) == 2
    _, found, matched = _draft(h, jnp.asarray(3), 2)  # 7 8 9: nothing repeats
    assert not bool(found) and int(matched) == 0


def _draft_reference(history: list, end: int, k: int):
    """Prompt lookup written plainly: the longest n in NGRAMS whose last n ids occur earlier."""
    for n in speculative.NGRAMS:
        if end < n:
            continue
        suffix = history[end - n:end]
        found = [j for j in range(end - n) if history[j:j + n] == suffix]
        if found:
            cont = found[-1] + n
            return (history + [0] * k)[cont:cont + k], True, n
    return None, False, 0


def test_ngram_lookup_equals_a_plain_search_on_random_histories():
    rng = np.random.default_rng(0)
    lookup = jax.jit(jax.vmap(lambda h, e: _draft(h, e, 4)))
    histories = rng.integers(4, 8, size=(64, 24)).astype(np.int32)  # few ids: many matches of each size
    ends = rng.integers(0, 21, size=64).astype(np.int32)
    drafts, found, matched = (np.asarray(x) for x in lookup(jnp.asarray(histories), jnp.asarray(ends)))
    for h, e, d, f, m in zip(histories.tolist(), ends.tolist(), drafts, found, matched):
        want, want_found, want_matched = _draft_reference(h, e, 4)
        assert bool(f) == want_found and int(m) == want_matched, (h, e)
        if want_found:
            assert d.tolist() == want, (h, e)


# -- the same greedy replies on every architecture (random tiny models, small vocabularies loop) --

ARCHS = {"gpt": (GPT_TINY, ["model.vocab_size=48"]), "rnn_lm": (RNN_LM, ["model.vocab_size=12"]),
         "hybrid": (TINY, ["model.vocab_size=48", "model.memory=sequence", "model.copy=true"])}


def _prompts(vocab: int):
    rng = np.random.default_rng(1)
    motif = rng.integers(4, min(vocab, 12), size=(3, 4))
    tokens = np.tile(motif, (1, 3)).astype(np.int32)  # each prompt repeats its own motif
    lengths = np.asarray([12, 9, 6], np.int32)
    return jnp.asarray(np.where(np.arange(12) < lengths[:, None], tokens, 0)), jnp.asarray(lengths)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_speculative_greedy_equals_plain_greedy(arch):
    path, overrides = ARCHS[arch]
    model = get_model(load_config(path, overrides).model)
    variables = model.init(jax.random.PRNGKey(3))
    tokens, lengths = _prompts(48)
    params = SamplingParams.create(3, temperature=0.0, max_new_tokens=[30, 17, 30])
    plain = LoopSpec(max_new_tokens=30, min_new_tokens=3)
    spec = dataclasses.replace(plain, speculate="ngram", draft_tokens=6)  # widths 4 and 6
    want = generate_jit(variables, tokens, lengths, params, model=model, spec=plain)

    @jax.jit
    def run(variables, tokens, lengths, params):
        first, cache, step = _callbacks(model, variables, tokens, lengths, spec)
        steps, keep = _verify_callbacks(model, variables)
        state = speculative.run(steps, keep, speculative.start(first, cache, tokens, lengths, params, spec),
                                spec, step=step)
        return speculative.result(state, spec), state

    got, state = run(variables, tokens, lengths, params)
    np.testing.assert_array_equal(np.asarray(got["tokens"]), np.asarray(want["tokens"]))
    np.testing.assert_array_equal(np.asarray(got["lengths"]), np.asarray(want["lengths"]))
    np.testing.assert_allclose(np.asarray(got["scores"]), np.asarray(want["scores"]), rtol=1e-4)
    # drafts were kept (fewer model calls than tokens), so the accepting path is what was compared
    assert int(np.asarray(state.accepted).sum()) > 0
    assert int(state.calls) < int(np.asarray(want["lengths"]).max()) - 1
    # the program compiled for greedy rows only (no sampler, no sampled acceptance) agrees
    only = generate_jit(variables, tokens, lengths, params, model=model,
                        spec=dataclasses.replace(spec, greedy_only=True))
    np.testing.assert_array_equal(np.asarray(only["tokens"]), np.asarray(want["tokens"]))


# -- sampled replies follow plain sampling's distribution exactly (fake logits, tiny vocabulary) --

V = 6  # 0 pad, 1 sos (never drawn), 2 eos, 3..5 words
TABLE = np.log(np.asarray([
    [1e-9, 1e-9, 0.1, 0.3, 0.3, 0.3],
    [1e-9, 1e-9, 0.1, 0.3, 0.3, 0.3],
    [1e-9, 1e-9, 0.1, 0.3, 0.3, 0.3],
    [1e-9, 1e-9, 0.05, 0.15, 0.5, 0.3],  # after 3: mostly 4 (the prompt's 3 4 5 3 4 drafts 4)
    [1e-9, 1e-9, 0.1, 0.2, 0.1, 0.6],  # after 4: mostly 5
    [1e-9, 1e-9, 0.15, 0.45, 0.3, 0.1],  # after 5: mostly 3
])).astype(np.float32)
PROMPT = [3, 4, 5, 3, 4, 5, 3]
NEW = 4


def _plain_probs(logits, temperature, top_k, top_p):
    """What plain sampling draws from, computed independently (numpy, float64)."""
    x = logits.astype(np.float64) / temperature
    order = np.argsort(-x, kind="stable")
    keep = order[:top_k] if top_k else order
    p = np.exp(x[keep] - x[keep].max())
    p /= p.sum()
    before = np.cumsum(p) - p
    keep, p = keep[before < top_p], p[before < top_p]
    out = np.zeros(V)
    out[keep] = p / p.sum()
    return out


def _exact(temperature, top_k, top_p, min_new):
    """Probability of every reply of NEW tokens (pad after <eos>) by enumeration."""
    probs = {}
    for seq in itertools.product(range(V), repeat=NEW):
        p, last, ended = 1.0, PROMPT[-1], False
        for i, tok in enumerate(seq):
            if ended:
                p *= tok == 0
                continue
            logits = TABLE[last].copy()
            if i < min_new:
                logits[EOS_ID] = -1e9
            p *= _plain_probs(logits, temperature, top_k, top_p)[tok]
            last, ended = tok, tok == EOS_ID
        if p > 0:
            probs[seq] = p
    return probs


def _wilson_hilferty(df: int, z: float = 5.0) -> float:
    """The chi-square quantile at the normal quantile z (z = 5: a chance of about 3e-7)."""
    return df * (1 - 2 / (9 * df) + z * np.sqrt(2 / (9 * df))) ** 3


@pytest.mark.parametrize("temperature, top_k, top_p, min_new, draft",  # drafts of 2 to 4: every width
                         [(1.0, 0, 1.0, 0, 2), (0.7, 3, 1.0, 2, 4), (1.3, 0, 0.8, 0, 3)])
def test_speculative_sampling_follows_the_plain_distribution(temperature, top_k, top_p, min_new, draft):
    rows = 40_000
    table = jnp.asarray(TABLE)
    steps = lambda fed, cache: (table[fed], cache)  # the next token's logits depend on the last one
    keep = lambda pending, n: pending
    spec = LoopSpec(max_new_tokens=NEW, min_new_tokens=min_new, speculate="ngram", draft_tokens=draft)
    params = SamplingParams.create(rows, temperature=temperature, top_k=top_k, top_p=top_p, seed=11)
    prompt = jnp.tile(jnp.asarray([PROMPT], jnp.int32), (rows, 1))
    lengths = jnp.full((rows,), len(PROMPT), jnp.int32)

    @jax.jit
    def sample(params):
        first = jnp.tile(table[PROMPT[-1]][None], (rows, 1))
        state = speculative.start(first, jnp.zeros(()), prompt, lengths, params, spec)
        state = speculative.run(steps, keep, state, spec)
        return speculative.result(state, spec)["tokens"], state.accepted, state.drafted

    tokens, accepted, drafted = (np.asarray(x) for x in sample(params))
    assert 0.1 < accepted.sum() / drafted.sum() < 0.9  # drafts both kept and rejected: the rule is exercised
    exact = _exact(temperature, top_k, top_p, min_new)
    seen = {}
    for row in map(tuple, tokens.tolist()):
        seen[row] = seen.get(row, 0) + 1
    assert set(seen) <= set(exact), sorted(set(seen) - set(exact))[:3]  # nothing impossible
    big = [s for s in exact if exact[s] * rows >= 5]  # pool the rare replies into one bin
    expected = np.asarray([exact[s] * rows for s in big] + [rows * (1 - sum(exact[s] for s in big))])
    observed = np.asarray([seen.get(s, 0) for s in big] + [rows - sum(seen.get(s, 0) for s in big)])
    chi2 = float(((observed - expected) ** 2 / np.maximum(expected, 1e-9)).sum())
    assert chi2 < _wilson_hilferty(len(big)), (chi2, len(big))


# -- draft lengths: the heuristic schedule, verified at the narrowest compiled width ------------------

CYCLE = np.full((10, 10), -5.0, np.float32)
CYCLE[np.arange(10), 3 + (np.arange(10) - 2) % 7] = 5.0  # greedy: after id t comes the next of 3..9, cyclically


def _fake(spec: LoopSpec, prompt: list, first: int):
    """The state after ``prompt`` and its first token under CYCLE's fake model, with its callbacks."""
    table = jnp.asarray(CYCLE)
    tokens, lengths = jnp.asarray([prompt], jnp.int32), jnp.asarray([len(prompt)], jnp.int32)
    state = speculative.start(table[first - 1][None], jnp.zeros(()), tokens, lengths,
                              SamplingParams.create(1, temperature=0.0), spec)
    return state, (lambda fed, cache: (table[fed], cache)), (lambda pending, n: pending)


def test_draft_lengths_follow_the_heuristic_schedule():
    spec = LoopSpec(max_new_tokens=8, speculate="ngram", draft_tokens=7)
    state, _, _ = _fake(spec, [3, 4, 5], 6)
    assert np.asarray(state.draft_len).tolist() == [2]  # rows start short
    state = jax.tree_util.tree_map(lambda x: jnp.repeat(x, 5, axis=0) if x.ndim else x, state)
    state = state.replace(draft_len=jnp.asarray([2, 6, 4, 2, 5]))
    looked = jnp.asarray([True, True, True, True, False])
    kept, length = jnp.asarray([2, 6, 1, 0, 0]), jnp.asarray([2, 6, 3, 2, 0])
    after = speculative._pace(state, looked, kept, length, spec)
    # kept whole: 2 more (at most draft_tokens); not: 1 fewer (at least the narrowest width); not looked: as it was
    assert np.asarray(after.draft_len).tolist() == [4, 7, 3, 2, 5]


def test_a_draft_cut_where_the_text_ends_verifies_at_a_narrower_width():
    spec = LoopSpec(max_new_tokens=8, speculate="ngram", draft_tokens=7)
    assert speculative.widths(7) == (4, 7) and speculative.widths(4) == (4,) and speculative.widths(2) == (2,)
    state, steps, keep = _fake(spec, [5, 6, 5], 6)  # 5 6 5 6: "5 6" again, 2 ids written after it
    state = speculative._look(_trusting(state).replace(draft_len=jnp.asarray([7])), spec)
    after = speculative.run(steps, keep, state, spec, until=2)  # one verification (its draft refused)
    assert np.asarray(after.drafted).tolist() == [4] and int(after.count[0]) == 2  # width 4, not 7


def _trusting(state):
    """``state`` with counts that say every drafted token was kept (a row that verifies any draft)."""
    return state.replace(counts=jnp.full_like(state.counts, 100.0))


def test_drafts_grow_while_they_are_kept_whole():
    spec = LoopSpec(max_new_tokens=19, speculate="ngram", draft_tokens=4, ignore_eos=True)
    state, steps, keep = _fake(spec, [3, 4, 5, 6, 7, 8, 9, 3], 4)  # the model continues the cycle it was shown
    state = jax.jit(lambda s: speculative.run(steps, keep, s, spec))(state)
    assert np.asarray(speculative.reply(state, spec))[0].tolist() == [3 + (1 + i) % 7 for i in range(19)]
    # every draft kept whole: 1 + 5 x 3 + 3 tokens in 4 calls, and the row's draft length at the most
    # (the first lookup matched 2 ids, "3 4": one plain step, its shadow kept, then drafts: 5 calls)
    assert np.asarray(state.draft_len).tolist() == [4] and int(state.calls) == 5


# -- which drafts are verified: the expected kept tokens against the verification's extra cost ------

def test_a_match_of_three_ids_verifies_at_once_one_of_two_waits_for_its_shadow():
    spec = LoopSpec(max_new_tokens=6, speculate="ngram", draft_tokens=4, ignore_eos=True)
    three, _, _ = _fake(spec, [9, 3, 4, 5, 6, 7, 8, 9, 3], 4)  # ... 9 3 | 4: "9 3 4" matched
    two, _, _ = _fake(spec, [3, 4, 5, 6, 7, 8, 9, 3], 4)  # ... 3 | 4: "3 4" matched
    assert np.asarray(three.length).tolist() == [2] and np.asarray(two.length).tolist() == [0]
    expected = [float(speculative._expected_kept(two.counts, two.after_kept, jnp.asarray([m]), jnp.asarray([4]),
                                                 spec)[0]) for m in (2, 3)]
    assert expected[0] < speculative.GAIN <= expected[1]  # 4 tokens of a 2-id and a 3-id match


def test_drafts_that_are_refused_are_never_verified_drafts_that_are_kept_are():
    """A model whose replies repeat pairs of ids but never what followed them (3 4 x, 3 4 y, ...):
    every draft is a 2-id match whose shadows are refused, so none is verified (the old back-off
    verified one after 1, 2, 4, ... tokens); a model that continues what it was shown keeps its drafts."""
    spec = LoopSpec(max_new_tokens=30, speculate="ngram", draft_tokens=4, ignore_eos=True)
    reply = [x for i in range(10) for x in (3, 4, 10 + i)]  # 3 4 10 3 4 11 3 4 12 ...
    table = jnp.asarray(np.where(np.arange(24)[None, :] == np.asarray(reply + [0])[:, None], 5.0, -5.0), jnp.float32)
    steps = lambda fed, position: (table[position + jnp.arange(fed.shape[1])][None], position)  # ignores the ids
    keep = lambda position, n: position + n[0]
    tokens, lengths = jnp.asarray([[3, 4, 9]], jnp.int32), jnp.asarray([3], jnp.int32)
    state = speculative.start(table[0][None], jnp.asarray(1), tokens, lengths,
                              SamplingParams.create(1, temperature=0.0), spec)
    after = jax.jit(lambda s: speculative.run(steps, keep, s, spec))(state)
    assert np.asarray(speculative.reply(after, spec))[0].tolist() == reply  # the same reply as plain decoding
    assert int(after.drafted[0]) == 0 and int(after.calls) == 29  # every token a plain step
    state, steps, keep = _fake(spec, [3, 4, 5, 6, 7, 8, 9, 3], 4)
    copier = jax.jit(lambda s: speculative.run(steps, keep, s, spec))(state)
    assert int(copier.accepted[0]) > 20 and int(copier.calls) <= 8  # the copier verifies and keeps its drafts


def test_a_rows_counts_learn_from_verified_and_shadow_drafts():
    spec = LoopSpec(max_new_tokens=8, speculate="ngram", draft_tokens=4)
    state, _, _ = _fake(spec, [3, 4, 5], 6)
    state = jax.tree_util.tree_map(lambda x: jnp.repeat(x, 3, axis=0) if x.ndim else x, state)
    state = state.replace(after_kept=jnp.asarray([False, True, False]))
    seen = jnp.asarray([True, True, False])
    # row 0: a draft whose first 3 tokens were kept, the 4th not; row 1: its first token refused
    after = speculative._observe(state, seen, jnp.asarray([True, False, True]), jnp.asarray([3, 0, 5]),
                                 jnp.asarray([2, 0, 5]))
    d = speculative.DECAY  # [checked, kept] first of a draft, [checked, kept] after a kept one
    np.testing.assert_allclose(np.asarray(after.counts), [[1, 1, 3, 2], [0, 0, 1, 0], [0, 0, 0, 0]], rtol=1e-6)
    again = speculative._observe(after, seen, jnp.asarray([True, True, True]), jnp.zeros(3, jnp.int32),
                                 jnp.zeros(3, jnp.int32))  # row 0's first token again, kept; row 1's after a kept one
    np.testing.assert_allclose(np.asarray(again.counts), [[d + 1, d + 1, 3, 2], [0, 0, d + 1, 1], [0, 0, 0, 0]],
                               rtol=1e-6)


def test_config_checks_the_speculation_fields():
    with pytest.raises(ConfigError, match="decode.speculate='draft' must be one of none, ngram"):
        load_config(GPT_TINY, ["decode.speculate=draft"])
    with pytest.raises(ConfigError, match="decode.draft_tokens=0 must be > 0"):
        load_config(GPT_TINY, ["decode.speculate=ngram", "decode.draft_tokens=0"])
    assert LoopSpec(speculate="ngram", beam_size=4).speculative is False  # beam search never speculates


# -- the front-ends: the command line and the streaming API (chat) ---------------------------------

REPEATS = "Manon va à la pharmacie pour acheter des médicaments. Manon va à la pharmacie"


def test_complete_and_stream_speculating_give_the_plain_replies(trained_gpt, capsys):
    from nety_jax.cli import main
    from nety_jax.serving.pretrained import load_pretrained
    args = ["complete", "--checkpoint", trained_gpt[0], "--prompt", REPEATS, "--prompt", "Le chat",
            "--temperature", "0", "--max-new-tokens", "16"]
    assert main(args) == 0
    plain = capsys.readouterr().out
    assert main(args + ["--speculate", "ngram", "--draft-tokens", "3"]) == 0
    assert capsys.readouterr().out == plain
    model = load_pretrained(trained_gpt[0], warn=lambda *_: None)
    settings = dict(temperature=0.0, max_new_tokens=16, speculate="ngram", draft_tokens=3)
    chunks = list(model.stream([REPEATS, "Le chat"], chunk=3, **settings))
    want = model.generate_ids([REPEATS, "Le chat"], temperature=0.0, max_new_tokens=16)["tokens"]
    assert len(chunks) > 1
    np.testing.assert_array_equal(chunks[-1], want)



def test_speculating_rows_sample_as_alone_whatever_else_is_in_the_batch(trained_gpt):
    """Seeded sampled rows with speculation give the tokens they give alone (README: a batch cut
    in parts gives what it gives whole): a row with a draft verifies it at its own width, and a
    row without one takes its token as the plain step would (QA round 6: a row without a draft
    was verified against the start of its prompt, with another draw)."""
    from nety_jax.serving.pretrained import load_pretrained
    model = load_pretrained(trained_gpt[0], warn=lambda *_: None)
    prompts = ["Le chat mange", "Le matin, le chat mange du pain. Le matin, le chat", REPEATS]
    settings = dict(temperature=0.8, max_new_tokens=12, speculate="ngram")
    seeds = [4, 5, 6, 7, 8, 9]
    rows = [p for p in prompts for _ in range(2)]
    together = model.generate_ids(rows, seed=seeds, **settings)
    for i, (prompt, seed) in enumerate(zip(rows, seeds)):
        alone = model.generate_ids([prompt], seed=[seed], **settings)
        n = int(alone["lengths"][0])
        assert int(together["lengths"][i]) == n, (prompt, seed)
        np.testing.assert_array_equal(together["tokens"][i][:n], alone["tokens"][0][:n], err_msg=f"{prompt!r} {seed}")



def test_an_export_speculates_as_the_checkpoint_does(trained_gpt, tmp_path, capsys):
    """export --set decode.speculate=ngram (what `complete --exported ... --speculate` tells users to
    run) builds and gives the checkpoint's greedy reply (QA round 6: a traceback, the lookup's score
    width taken from the export's symbolic prompt length)."""
    from nety_jax.cli import main
    out = str(tmp_path / "exported")
    assert main(["export", "--checkpoint", trained_gpt[0], "--out", out, "--set", "decode.speculate=ngram"]) == 0
    capsys.readouterr()
    ask = ["--prompt", REPEATS, "--max-new-tokens", "12", "--temperature", "0"]
    assert main(["complete", "--exported", out] + ask) == 0
    exported = capsys.readouterr().out
    assert main(["complete", "--checkpoint", trained_gpt[0]] + ask) == 0
    assert exported == capsys.readouterr().out


# -- the server: the dynamic engine speculates for every request, with the same greedy replies --

SERVED = ["Manon va à la pharmacie pour acheter des médicaments. Manon va à la pharmacie",  # replies that
          "Chloé achète des pommes de terre et de la crème. Chloé achète des pommes", "Le vendredi,"]  # copy


def _served(backend, rows):
    """Each row's ``RowResult`` through a dynamic engine over ``backend`` (chunks of 3 tokens)."""
    import threading
    from nety_jax.serving.engine import Engine, Job
    engine, done, results = Engine(backend, max_batch=4, window_ms=50, chunk=3), threading.Event(), []
    engine.submit(Job(rows, lambda kind, payload: (results.append((kind, payload)), done.set())
                      if kind != "delta" else None))
    assert done.wait(300)
    engine.close()
    kind, payload = results[0]
    assert kind == "done", payload
    return [(r.text, r.tokens, r.finish_reason) for r in payload]


def test_the_server_speculating_replies_as_without(trained_gpt):
    from nety_jax.serving.engine import PretrainedBackend, Row
    from nety_jax.serving.pretrained import load_pretrained
    model = load_pretrained(trained_gpt[0])
    rows = [Row(model.model.prompts.ids(model.tokenizer, p, model.config.data), 0.0, 0, 1.0, 20, 0)
            for p in SERVED]
    speculating = PretrainedBackend(model, speculate="ngram", draft_tokens=3)
    assert speculating.spec.speculative and not speculating.continuous
    assert _served(speculating, rows) == _served(PretrainedBackend(model), rows)


@pytest.mark.parametrize("flags, message", [
    (["--speculate", "ngram", "--batching", "continuous"], "--speculate needs --batching dynamic"),
    (["--speculate", "ngram", "--draft-tokens", "0"], "--draft-tokens"),
    (["--speculate", "ngram", "--draft-tokens", "17"], "--draft-tokens"),
])
def test_serve_checks_the_speculation_flags_before_loading(flags, message, capsys):
    from nety_jax.cli import main
    assert main(["serve", "--checkpoint", "no/such/run", "--port", "99999", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "--port" not in err and len(err.strip().splitlines()) == 1


def test_serve_refuses_speculation_for_an_exported_artifact(capsys):
    from nety_jax.cli import main
    assert main(["serve", "--exported", "no/such/export", "--speculate", "ngram"]) == 2
    assert "--speculate needs --checkpoint" in capsys.readouterr().err
