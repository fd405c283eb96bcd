"""QA round 5: a run whose tokenizer was swapped for another run's."""
import shutil

import pytest

from conftest import QUIET, TINY
from nety_jax.errors import CheckpointError

MESSAGE = r"tokenizer\.json: a tokenizer of 500 ids, more than the model's vocabulary \(model\.vocab_size=120"


def test_a_tokenizer_with_more_ids_than_the_model_is_refused_by_every_reader(trained_run, tmp_path):
    """Another run's tokenizer copied into a run (2,400 SentencePiece pieces over a 200-id model)
    was used by generate, export, serve and `train --init-from`: prompts encoded to ids past the
    embedding table, which JAX clamps silently, and the replies were garbage without a word. Every
    reader of a run's tokenizer now checks it against the config's vocabulary, naming the file."""
    from nety_jax import load_config, load_pretrained, train
    from nety_jax.data.tokenizer import WordTokenizer
    from nety_jax.training.init_from import load_source
    run = tmp_path / "run with another tokenizer"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns(".lock"))
    load_pretrained(str(run))  # its own tokenizer: fine
    WordTokenizer.build([" ".join(f"mot{i}" for i in range(600))], 500).save(str(run))
    with pytest.raises(CheckpointError, match=MESSAGE):
        load_pretrained(str(run))
    with pytest.raises(CheckpointError, match=MESSAGE):
        load_source(str(run))
    with pytest.raises(CheckpointError, match=MESSAGE):  # resuming
        train(load_config(TINY, ["train.steps=41", "data.vocab_size=120"]), str(run), **QUIET)
