"""Generation on a real (tiny, random) hybrid, beam search, and the Pretrained API."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nety_jax.config import EOS_ID, SOS_ID
from nety_jax.decoding import LoopSpec, SamplingParams, beam_search, generate_jit, sample_loop
from nety_jax.errors import NetyError
from nety_jax.models import get_model
from nety_jax.serving.pretrained import load_pretrained

SRC = jnp.asarray([[5, 9, 12, 7, 2, 0, 0], [8, 8, 3, 2, 0, 0, 0], [4, 5, 6, 7, 8, 9, 2]], jnp.int32)
LEN = jnp.asarray([5, 4, 7], jnp.int32)
GREEDY = SamplingParams.create(3, temperature=0.0)


def recompute_greedy(model, variables, n):
    """NETY's way, as a reference: rerun encoder and decoder on the whole prefix every step. The
    prefix sits in one width of n + 1 (padded after it), so one program serves every step instead
    of one compile per length; the decoder is causal, so step i reads the logits at position i."""
    logits_fn = jax.jit(lambda tgt: model.logits(variables, {"src": SRC, "src_len": LEN, "tgt_in": tgt})[0])
    tgt = np.zeros((3, n + 1), np.int32)
    tgt[:, 0] = SOS_ID
    for i in range(n):
        tgt[:, i + 1] = np.asarray(logits_fn(jnp.asarray(tgt)))[:, i].argmax(-1)
    return tgt[:, 1:]


@pytest.mark.parametrize("memory,copy", [("pooled", False), ("sequence", False), ("sequence", True)])
def test_cached_greedy_equals_full_prefix_recompute(tiny_cfg, memory, copy):
    model = get_model(tiny_cfg.model.replace(memory=memory, copy=copy))
    variables = model.init(jax.random.PRNGKey(0))
    spec = LoopSpec(max_new_tokens=10, ignore_eos=True)
    cached = generate_jit(variables, SRC, LEN, GREEDY, model=model, spec=spec)
    full = recompute_greedy(model, variables, 10)
    np.testing.assert_array_equal(np.asarray(cached["tokens"]), full)
    assert len(set(map(tuple, full.tolist()))) > 1  # not a degenerate constant output


@pytest.mark.parametrize("copy", [False, True])
def test_beam_one_equals_greedy(tiny_cfg, copy):
    model = get_model(tiny_cfg.model.replace(copy=copy))
    variables = model.init(jax.random.PRNGKey(0))
    # the pointer can copy the source's <eos>, so <eos> is likely at every step: a beam of one
    # then rightly keeps an early finished reply that outscores the greedy row that never ends;
    # without <eos>, beam 1 and greedy must agree token for token
    spec = LoopSpec(max_new_tokens=10, length_penalty=0.0, ignore_eos=copy)
    greedy = generate_jit(variables, SRC, LEN, GREEDY, model=model, spec=spec)

    def one_beam(v):  # beam_size=1 goes through the sampler; call the beam loop itself
        first, cache = model.start_decoding(v, SRC, LEN, 10)
        return beam_search(lambda t, c: model.decode_step(v, t, c), first, cache,
                           dataclasses.replace(spec, beam_size=1))
    beam = jax.jit(one_beam)(variables)
    np.testing.assert_array_equal(np.asarray(greedy["tokens"]), np.asarray(beam["tokens"]))


A, B = 3, 4


def _bigram_lm():
    """A fake bigram model (step, first logits) of exact probabilities over 5 tokens."""
    table = np.full((5, 5), 1e-6)
    table[SOS_ID, [A, B]] = [0.6, 0.4]
    table[A, [EOS_ID, A, B]] = [0.4, 0.3, 0.3]
    table[B, [EOS_ID, A]] = [0.9, 0.1]
    logp = jnp.log(jnp.asarray(table / table.sum(1, keepdims=True), jnp.float32))
    return (lambda tokens, cache: (logp[tokens], cache)), logp[jnp.asarray([SOS_ID])]


def test_beam_two_finds_the_better_sequence():
    """Greedy takes A (0.6) then <eos> (0.4): 0.24. Beam 2 finds B (0.4) then <eos> (0.9): 0.36."""
    step, first = _bigram_lm()
    spec = LoopSpec(max_new_tokens=4, length_penalty=0.0)
    greedy = sample_loop(step, first, jnp.zeros(()), SamplingParams.create(1, temperature=0.0), spec)
    assert np.asarray(greedy["tokens"][0, :2]).tolist() == [A, EOS_ID]
    beam = beam_search(step, first, jnp.zeros(()), dataclasses.replace(spec, beam_size=2))
    assert np.asarray(beam["tokens"][0, :2]).tolist() == [B, EOS_ID]
    assert int(beam["lengths"][0]) == 2
    np.testing.assert_allclose(float(beam["scores"][0]), np.log(0.4 * 0.9), rtol=1e-4)


def test_beam_n_best_is_ranked_finished_first_then_live():
    """The bigram model: beam 2 keeps B <eos> (0.36) and A <eos> (0.24), best first; cut after one
    token, the only finished hypothesis (<eos>) leads and the live ones fill the list by score."""
    step, first = _bigram_lm()
    out = beam_search(step, first, jnp.zeros(()), LoopSpec(max_new_tokens=4, length_penalty=0.0, beam_size=2))
    assert np.asarray(out["beam_tokens"][0, :, :2]).tolist() == [[B, EOS_ID], [A, EOS_ID]]
    np.testing.assert_allclose(np.asarray(out["beam_scores"][0]), np.log([0.36, 0.24]), rtol=1e-4)
    assert np.asarray(out["beam_lengths"][0]).tolist() == [2, 2]
    cut = beam_search(step, first, jnp.zeros(()), LoopSpec(max_new_tokens=1, length_penalty=0.0, beam_size=3))
    assert np.asarray(cut["beam_tokens"][0, :, 0]).tolist() == [EOS_ID, A, B]
    assert np.asarray(cut["beam_lengths"][0]).tolist() == [1, 1, 1]
    assert np.asarray(cut["tokens"][0]).tolist() == [EOS_ID]


def test_trained_model_rows_equal_rows_alone(trained_run):
    model = load_pretrained(trained_run)
    prompts = ["Bonjour !", "Combien font 2 plus 3 ?", "Je me sens triste aujourd'hui.",
               "Qu'est-ce que tu fais lundi ?"]
    together = model.generate(prompts, temperature=0.0)
    alone = [model.generate([p], temperature=0.0)[0] for p in prompts]
    assert together == alone
    # greedy calls compile without the sampler; the generic program (one row samples) agrees
    mixed = model.generate(prompts + ["Bonjour !"], temperature=[0.0] * 4 + [0.9])
    assert mixed[:4] == together
    beams = model.generate(prompts, beam_size=3)
    assert len(beams) == 4 and all(isinstance(r[0], str) for r in beams)
    n_best = model.generate(prompts, beam_size=3, num_samples=3)  # one search per prompt, its 3 best
    assert [len(r) for r in n_best] == [3] * 4 and [r[0] for r in n_best] == [r[0] for r in beams]
    assert any(len(set(r)) > 1 for r in n_best)
    with pytest.raises(NetyError, match="num_samples=4 is more than beam_size=3"):
        model.generate(prompts, beam_size=3, num_samples=4)


def test_greedy_samples_are_flagged_and_num_samples_is_checked(trained_run):
    warnings = []
    model = load_pretrained(trained_run, warn=warnings.append)
    assert model.generate(["Bonjour !"], num_samples=2, temperature=[0.0])[0][0] is not None
    assert len(warnings) == 1 and warnings[0].startswith("warning: num_samples=2 with greedy decoding")
    model.generate(["Bonjour !"], num_samples=2, temperature=0.9)
    assert len(warnings) == 1
    for bad in (0, -1, 2.0):
        with pytest.raises(NetyError, match=f"num_samples={bad!r} must be (an integer|>= 1)"):
            model.generate(["Bonjour !"], num_samples=bad)


def test_only_a_call_of_greedy_rows_compiles_without_the_sampler(trained_run):
    model = load_pretrained(trained_run)
    spec = lambda **settings: model._prepare(["Bonjour !", "Salut"], 0, 1, settings)[0].spec
    assert spec(temperature=0.0).greedy_only and spec(temperature=[0.0, 1.0], top_k=[0, 1]).greedy_only
    assert not spec(temperature=[0.0, 0.9]).greedy_only and not spec(temperature=0.0, beam_size=2).greedy_only
    with pytest.raises(NetyError, match="unknown decode setting 'greedy_only'"):  # derived, never asked for
        model.generate(["Bonjour !"], greedy_only=True)


def test_chunks_cut_texts_and_their_own_values_and_count_rows():
    from nety_jax.serving.settings import chunks
    parts = list(chunks(["a", "b", "c"], 7, 2, 4, {"temperature": [0.1, 0.2, 0.3], "top_k": 5}))
    assert parts == [(0, ["a", "b"], 7, {"temperature": [0.1, 0.2], "top_k": 5}),
                     (4, ["c"], 7, {"temperature": [0.3], "top_k": 5})]
    assert [p[2] for p in chunks(["a", "b", "c"], [1, 2, 3], 1, 2, {})] == [[1, 2], [3]]
    assert len(list(chunks(["a"] * 5, 0, 1, None, {}))) == 1
    with pytest.raises(NetyError, match="temperature: 2 values for 3 prompts"):
        list(chunks(["a", "b", "c"], 0, 1, 2, {"temperature": [0.1, 0.2]}))
    with pytest.raises(NetyError, match="batch_size=0 must be >= 1"):
        list(chunks(["a"], 0, 1, 0, {}))


def test_a_batch_cut_in_parts_gives_the_replies_of_one_call(trained_run):
    warnings = []
    model = load_pretrained(trained_run, warn=warnings.append)
    prompts = ["Bonjour !", "J'aime nager.", "Il pleut encore.", "mot " * 200, "Salut"]
    settings = dict(temperature=1.0, top_k=0, max_new_tokens=8, num_samples=2)
    whole = model.generate(prompts, seed=11, **settings)
    assert len({r for pair in whole[:3] for r in pair}) > 1  # sampled, not one reply repeated
    assert warnings == ["warning: prompt 4 was cut to 24 tokens (the longest this model takes)"]
    for batch_size in (1, 4, 6):
        assert model.generate(prompts, seed=11, batch_size=batch_size, **settings) == whole
    assert warnings[-1] == warnings[0] and len(warnings) == 4  # numbered as given, in every part
    seeds = [5, 6, 7, 8, 9]
    assert model.generate(prompts, seed=seeds, batch_size=3, **settings) == model.generate(prompts, seed=seeds,
                                                                                           **settings)
    with pytest.raises(NetyError, match="prompt 5 is empty"):
        model.generate(prompts[:4] + [" "], batch_size=2)
    assert model.generate([]) == [] and model.generate(iter(prompts[:2]), seed=11, **settings) == whole[:2]
    with pytest.raises(NetyError, match="texts must be a list of prompts, got int"):
        model.generate(5)


def test_stream_gives_the_tokens_of_one_uninterrupted_call(trained_run):
    model = load_pretrained(trained_run)
    settings = dict(temperature=0.9, top_k=20, top_p=0.95, max_new_tokens=12)
    whole = model.generate_ids(["Bonjour !", "J'aime nager."], seed=[4, 5], **settings)["tokens"]
    chunks = list(model.stream(["Bonjour !", "J'aime nager."], seed=[4, 5], chunk=3, **settings))
    assert len(chunks) >= 2
    np.testing.assert_array_equal(chunks[-1], whole)


def test_logits_api_is_teacher_forced_numpy(trained_run):
    model = load_pretrained(trained_run)
    logits = model.logits({"src": SRC, "src_len": LEN, "tgt_in": [[1, 5, 6], [1, 7, 8], [1, 9, 9]]})
    assert isinstance(logits, np.ndarray) and logits.shape == (3, 3, model.config.model.vocab_size)
