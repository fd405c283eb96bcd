"""The held-out scoring of scripts/bench_quality.py: the spelling charge that makes a closed-
vocabulary word model's bits per character comparable with an open-vocabulary model's."""
import math
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import quality_lib as Q  # noqa: E402


def test_spelling_model_is_a_distribution_and_prefers_seen_spellings():
    model = Q.SpellingModel(["chat", "chien", "château", "chat"])
    for context in "^chatien":  # each context's next-symbol probabilities (one bucket for unseen) sum to 1
        symbols = {b for (a, b) in model.pairs} | {"\0"}
        total = sum((model.pairs.get((context, b), 0) + model.k) / (model.context.get(context, 0) + model.k * model.symbols)
                    for b in symbols)
        assert total == pytest.approx(1.0)
    assert 0 < model.nats("chat") < model.nats("chien") < model.nats("xqzw")
    # longer unknown words cost more: the charge grows with the spelling, it is not a constant
    assert model.nats("chatchat") > model.nats("chat")


def test_bits_per_char_counts_every_character():
    assert Q.bits_per_char(math.log(2) * 10, ["abcde", "fghij"]) == pytest.approx(1.0)


def test_nety_recipe_trains_when_an_epoch_ends_with_a_single_row():
    """5 pairs at batch 4 leave a last batch of one row, on which BatchNorm cannot train:
    NETY's recipe skips it instead of failing (a share of the corpus can have such a size)."""
    pytest.importorskip("torch")
    pairs = [(f"bonjour {i}", f"salut {i} !") for i in range(5)]
    dims = dict(d_model=16, hidden=16, layers=1, enc_heads=2, dec_heads=2, dec_layers=1, d_ff=32,
                dropout=0.0, max_len=64)
    recipe = Q.NetyRecipe([t for p in pairs for t in p], dims)
    # by steps, not by time (a loaded machine may take a second for the first step): three steps go
    # through two whole epochs, each ending with its 1-row batch
    recipe.train(pairs, seconds=600.0, max_steps=3)
    assert recipe.steps == 3 and math.isfinite(recipe.nll_nats(pairs))


def test_template_split_shares_are_nested_and_keep_the_test_set():
    import bench_quality as B
    full, test, held_out = B.template_split()
    half, test_half, held_half = B.template_split(fraction=0.5)
    quarter, _, _ = B.template_split(fraction=0.25)
    assert test_half == test and held_half == held_out
    assert set(quarter) < set(half) < set(full)
    assert 0.3 < len(half) / len(full) < 0.7  # a share of the templates, so about that share of pairs
    assert not set(half) & set(test)
