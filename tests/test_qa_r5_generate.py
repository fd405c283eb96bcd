"""QA round 5: `--num-samples` above `--batch-size` (or a fixed-batch export's size)."""
import pytest

from nety_jax import export_run, load_exported, load_pretrained

SETTINGS = dict(temperature=1.0, top_k=0, max_new_tokens=6)


@pytest.fixture(scope="module")
def fixed_export(trained_run, tmp_path_factory):
    """The tiny hybrid exported for batches of 2."""
    out = tmp_path_factory.mktemp("fixed") / "export"
    export_run(trained_run, str(out), batch_size=2)
    return load_exported(str(out))


def _rows_per_call(model, monkeypatch, cls_method):
    """Records the rows of every call through the model (the prompt batch's real rows)."""
    import nety_jax.serving.pretrained as pretrained
    import nety_jax.serving.export as export
    rows = []
    module = pretrained if cls_method == "pretrained" else export
    encode = module.encode_prompts

    def counting(policy, tokenizer, texts, *args, **kwargs):
        rows.append(len(texts))
        return encode(policy, tokenizer, texts, *args, **kwargs)
    monkeypatch.setattr(module, "encode_prompts", counting)
    return rows


def test_batch_size_bounds_the_rows_even_below_num_samples(trained_run, monkeypatch):
    """`generate --num-samples 5 --batch-size 2` ran 5 rows at once: a prompt's samples were never
    split, so --batch-size (a memory bound) was exceeded whenever it was below --num-samples. The
    samples go in shares of at most batch_size rows, with the replies of one call (one seed for
    the batch, and one seed per prompt)."""
    model = load_pretrained(trained_run)
    prompts = ["Bonjour !", "J'aime nager."]
    for seed in (11, [5, 9]):
        whole = model.generate(prompts, seed=seed, num_samples=5, **SETTINGS)
        assert len({r for replies in whole for r in replies}) > 2  # sampled, not one reply repeated
        rows = _rows_per_call(model, monkeypatch, "pretrained")
        assert model.generate(prompts, seed=seed, num_samples=5, batch_size=2, **SETTINGS) == whole
        assert max(rows) <= 2 and sum(rows) == 10, rows
        monkeypatch.undo()
    beams = model.generate(prompts, num_samples=3, beam_size=3, batch_size=1, max_new_tokens=6)  # one search
    assert beams == model.generate(prompts, num_samples=3, beam_size=3, max_new_tokens=6)


def test_a_fixed_batch_export_takes_more_samples_than_its_batch(fixed_export):
    """An export compiled for batches of 2 refused `--num-samples 3` ("this export takes batches
    of 2; got 3 prompts", for one prompt), though README says it goes in parts of its size."""
    exported = fixed_export
    replies = exported.generate(["Bonjour !", "Salut"], seed=4, num_samples=3, **SETTINGS)
    assert [len(r) for r in replies] == [3, 3]
    assert replies == exported.generate(["Bonjour !", "Salut"], seed=4, num_samples=3, batch_size=1, **SETTINGS)
    ids = exported.generate_ids(["Bonjour !", "Salut"], seed=4, num_samples=3, **SETTINGS)  # the same shares
    assert ids["tokens"].shape[0] == 6


def test_exported_call_ids_checks_its_arrays(fixed_export):
    """`ExportedModel.call_ids` (`generate_ids` of an id batch) passed its arrays to the artifact unchecked: a batch of another
    size than the export's was JAX's "Shape mismatch for args[1]" (not a NetyError), a list an
    AttributeError, ids past the vocabulary were clamped silently. Each is a NetyError naming it."""
    import numpy as np
    from nety_jax.errors import NetyError
    exported = fixed_export
    tokens, lengths = np.full((2, 4), 5, np.int32), np.array([4, 2])
    assert exported.call_ids(tokens.tolist(), lengths.tolist(), max_new_tokens=3)[0].shape[0] == 2
    vocab = exported.config.model.vocab_size
    for args, message in [((np.ones((3, 4), np.int32), np.full(3, 4)), "tokens: this export takes batches of 2; got 3"),
                          ((np.ones(4, np.int32), lengths), "tokens must be a non-empty array of integers of rank 2"),
                          ((tokens.astype(np.float32), lengths), "tokens must be a non-empty array of integers"),
                          ((tokens, np.array([4, 5])), r"lengths must be 2 values in \[1, 4\]"),
                          ((tokens, np.array([0, 1])), r"lengths must be 2 values in \[1, 4\]"),
                          ((tokens, [4]), r"lengths must be 2 values"),
                          ((tokens + vocab, lengths), rf"tokens holds ids outside \[0, {vocab}\)")]:
        with pytest.raises(NetyError, match=message):
            exported.call_ids(*args)
    with pytest.raises(NetyError, match="beam_size: not a setting this export takes"):
        exported.call_ids(tokens, lengths, beam_size=2)
