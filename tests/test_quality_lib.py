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
