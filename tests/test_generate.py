"""Generation on a real (tiny, random) model, and beam search."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nety_jax.beam import beam_search
from nety_jax.config import EOS_ID, DecodeConfig, replace_model
from nety_jax.generate import generate_jit, generate_uncached
from nety_jax.model import init_variables
from nety_jax.pretrained import load_pretrained

SRC = jnp.asarray([[5, 9, 12, 7, 2, 0, 0], [8, 8, 3, 2, 0, 0, 0], [4, 5, 6, 7, 8, 9, 2]], jnp.int32)
LEN = jnp.asarray([5, 4, 7], jnp.int32)


@pytest.mark.parametrize("memory", ["pooled", "sequence"])
def test_cached_greedy_equals_full_prefix_recompute(tiny_cfg, memory):
    cfg = replace_model(tiny_cfg, memory=memory).model
    variables = init_variables(cfg, jax.random.PRNGKey(0))
    dcfg = DecodeConfig(max_new_tokens=10, temperature=0.0, ignore_eos=True)
    cached = generate_jit(variables, SRC, LEN, jax.random.PRNGKey(0), cfg=cfg, dcfg=dcfg)
    full = generate_uncached(variables, SRC, LEN, cfg=cfg, dcfg=dcfg)
    np.testing.assert_array_equal(np.asarray(cached["tokens"]), full)
    assert len(set(map(tuple, full.tolist()))) > 1  # not a degenerate constant output


def test_beam_one_equals_greedy(tiny_cfg):
    cfg = tiny_cfg.model
    variables = init_variables(cfg, jax.random.PRNGKey(0))
    greedy = DecodeConfig(max_new_tokens=10, temperature=0.0)
    beam = dataclasses.replace(greedy, beam_size=1 + 0, length_penalty=0.0)
    a = generate_jit(variables, SRC, LEN, jax.random.PRNGKey(0), cfg=cfg, dcfg=greedy)
    # beam_size=1 goes through the sampler; call the beam loop itself with one beam
    from nety_jax.generate import _model_callbacks
    fn, cache = _model_callbacks(variables, SRC, LEN, cfg, 11)
    b = jax.jit(lambda c: beam_search(fn, c, 3, beam))(cache)
    np.testing.assert_array_equal(np.asarray(a["tokens"]), np.asarray(b["tokens"]))


def test_beam_two_finds_the_better_sequence():
    """Greedy takes A (0.6) then <eos> (0.4): 0.24. Beam 2 finds B (0.4) then <eos> (0.9): 0.36."""
    A, B, V = 3, 4, 5
    table = np.full((V, V), 1e-6)
    table[1, [A, B]] = [0.6, 0.4]  # after <sos>
    table[A, [EOS_ID, A, B]] = [0.4, 0.3, 0.3]
    table[B, [EOS_ID, A]] = [0.9, 0.1]
    logp = jnp.log(jnp.asarray(table / table.sum(1, keepdims=True), jnp.float32))

    def fn(tokens, cache):
        return logp[tokens[:, 0]], cache

    dcfg = DecodeConfig(max_new_tokens=4, temperature=0.0, length_penalty=0.0)
    from nety_jax.generate import sample_loop
    greedy = sample_loop(fn, jnp.zeros(()), 1, jax.random.PRNGKey(0), dcfg)
    assert np.asarray(greedy["tokens"][0, :2]).tolist() == [A, EOS_ID]
    beam = beam_search(fn, jnp.zeros(()), 1, dataclasses.replace(dcfg, beam_size=2))
    assert np.asarray(beam["tokens"][0, :2]).tolist() == [B, EOS_ID]
    assert int(beam["lengths"][0]) == 2
    np.testing.assert_allclose(float(beam["scores"][0]), np.log(0.4 * 0.9), rtol=1e-4)


def test_trained_model_rows_equal_rows_alone(trained_run):
    model = load_pretrained(trained_run)
    prompts = ["Bonjour !", "Combien font 2 plus 3 ?", "Je me sens triste aujourd'hui.",
               "Qu'est-ce que tu fais lundi ?"]
    together = model.generate(prompts, temperature=0.0)
    alone = [model.generate([p], temperature=0.0)[0] for p in prompts]
    assert together == alone
    beams = model.generate(prompts, beam_size=3)
    assert len(beams) == 4 and all(isinstance(r[0], str) for r in beams)


def test_logits_api_is_teacher_forced_numpy(trained_run):
    model = load_pretrained(trained_run)
    logits = model.logits(SRC, jnp.asarray([[1, 5, 6], [1, 7, 8], [1, 9, 9]]))
    assert isinstance(logits, np.ndarray) and logits.shape == (3, 3, model.config.model.vocab_size)
