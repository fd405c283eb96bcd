"""The two inference front-ends, ``Pretrained`` (a run directory) and ``ExportedModel`` (an export),
offer one interface (``serving.protocol.InferenceModel``): the same calls give the same ids."""
import numpy as np
import pytest

from nety_jax.cli import main


@pytest.fixture(scope="module")
def both(trained_run, tmp_path_factory):
    from nety_jax.serving.export import load_exported
    from nety_jax.serving.pretrained import load_pretrained
    out = tmp_path_factory.mktemp("front-ends") / "fixed"
    assert main(["export", "--checkpoint", trained_run, "--out", str(out), "--batch-size", "2",
                 "--set", "decode.max_new_tokens=8"]) == 0
    return load_pretrained(trained_run), load_exported(str(out))


def test_both_front_ends_are_inference_models(both):
    from nety_jax.serving import InferenceModel
    pretrained, exported = both
    for model in both:
        assert isinstance(model, InferenceModel)
    assert type(pretrained.prompts) is type(pretrained.model.prompts)
    assert type(exported.prompts) is type(pretrained.prompts)


def test_generate_ids_takes_texts_on_both_and_gives_the_same_ids(both):
    pretrained, exported = both
    prompts = ["Bonjour !", "J'aime nager.", "Il pleut encore."]  # more than the export's batch: two calls
    settings = dict(temperature=0.9, top_k=10, seed=4)
    want = pretrained.generate_ids(prompts, max_new_tokens=8, **settings)
    got = exported.generate_ids(prompts, **settings)
    assert set(got) == {"tokens", "lengths", "scores"}
    assert got["tokens"].shape == (3, 8)  # the export's compiled length; a run directory's loop may run longer
    assert (want["lengths"] <= 8).all() and not want["tokens"][:, 8:].any()
    np.testing.assert_array_equal(got["tokens"], want["tokens"][:, :8])
    np.testing.assert_array_equal(got["lengths"], want["lengths"])
    two = exported.generate_ids(prompts[:1], num_samples=2, **settings)["tokens"]
    np.testing.assert_array_equal(two, pretrained.generate_ids(prompts[:1], num_samples=2, max_new_tokens=8,
                                                                **settings)["tokens"][:, :8])


def test_the_exports_id_batch_call_still_works_under_both_names(both):
    _, exported = both
    ids = exported.prompts.ids(exported.tokenizer, "Bonjour !", exported.config.data)
    batch, lengths = np.array([ids, ids], np.int32), np.array([len(ids)] * 2, np.int32)
    old = exported.generate_ids(batch, lengths, [1, 2], temperature=0.9, top_k=10)
    new = exported.call_ids(batch, lengths, [1, 2], temperature=0.9, top_k=10)
    assert isinstance(old, tuple) and len(old) == 3
    for a, b in zip(old, new):
        np.testing.assert_array_equal(a, b)
