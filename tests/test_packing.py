"""Document-aware packing for language models (data.packing): rows of whole documents that
never see each other."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import GPT_TINY, QUIET, RNN_LM, TINY
from nety_jax.config import EOS_ID
from nety_jax.data.packing import document_pieces, pack


def test_documents_are_cut_into_overlapping_pieces_and_packed_in_order():
    assert document_pieces([5, 6], 8) == [[5, 6, EOS_ID]]
    assert document_pieces([5], 8) == [[5, EOS_ID]]
    assert document_pieces([5, 6, 7, 8, 9], 3) == [[5, 6, 7, 8], [8, 9, EOS_ID]]
    assert document_pieces([5, 6, 7], 2) == [[5, 6, 7], [7, EOS_ID]]
    rows = pack([[2, 5, 6, 2], [2, 7, 2], [2, 8, 9, 10, 2]], 5)
    # row 0: the first two pieces (3 + 2 inputs), row 1: the third (4 inputs) and one pad
    np.testing.assert_array_equal(rows.tokens, [[2, 5, 6, 2, 7], [2, 8, 9, 10, 0]])
    np.testing.assert_array_equal(rows.targets, [[5, 6, 2, 7, 2], [8, 9, 10, 2, 0]])
    np.testing.assert_array_equal(rows.segments, [[1, 1, 1, 2, 2], [1, 1, 1, 1, 0]])
    np.testing.assert_array_equal(rows.positions, [[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]])
    assert len(rows) == 2 and rows.documents == 3
    assert rows.collate([1, 0])["segments"][1].tolist() == [1, 1, 1, 2, 2]
    # first fit: a short piece goes back to the first row that has room
    rows = pack([[2, 5, 6, 7, 8], [2, 9, 9, 9, 9], [2, 4]], 5)
    np.testing.assert_array_equal(rows.tokens, [[2, 5, 6, 7, 2], [2, 9, 9, 9, 0]])
    np.testing.assert_array_equal(rows.segments, [[1, 1, 1, 1, 2], [1, 1, 1, 1, 0]])


def _token_log_probs(model, variables, batch) -> np.ndarray:
    logits, _ = model.logits(variables, {k: jnp.asarray(v) for k, v in batch.items()})
    logp = jax.nn.log_softmax(logits, axis=-1)
    return np.asarray(jnp.take_along_axis(logp, jnp.asarray(batch["targets"])[..., None], -1)[..., 0])


@pytest.mark.parametrize("config", [GPT_TINY, RNN_LM])
def test_packed_rows_give_each_document_its_loss_alone(config):
    from nety_jax.config import load_config
    from nety_jax.models import get_model
    cfg = load_config(config, ["model.vocab_size=60", "model.dropout=0.0"])
    model = get_model(cfg.model)
    variables = model.init(jax.random.PRNGKey(3))
    rs = np.random.default_rng(0)
    documents = [rs.integers(4, 60, n).tolist() for n in (3, 9, 1, 14, 5, 7, 20)]  # 20: two pieces
    pieces = [p for d in documents for p in document_pieces(d, 16)]
    rows = pack(pieces, 16)
    assert len(rows) < len(pieces) and (rows.segments.max(axis=1) > 1).any()  # rows do hold several
    packed = _token_log_probs(model, variables, rows.collate(range(len(rows))))
    alone = {"tokens": np.zeros((len(pieces), 16), np.int32), "targets": np.zeros((len(pieces), 16), np.int32)}
    for i, piece in enumerate(pieces):  # each piece alone in its row (right padding: causal models)
        alone["tokens"][i, : len(piece) - 1], alone["targets"][i, : len(piece) - 1] = piece[:-1], piece[1:]
    alone_lp = _token_log_probs(model, variables, alone)
    which = {tuple(piece[1:]): i for i, piece in enumerate(pieces)}  # the random pieces differ
    seen = []
    for r in range(len(rows)):
        for s in range(1, rows.segments[r].max() + 1):
            at = rows.segments[r] == s
            seen.append(i := which[tuple(rows.targets[r][at].tolist())])
            np.testing.assert_array_equal(rows.tokens[r][at], pieces[i][:-1])
            np.testing.assert_allclose(packed[r][at], alone_lp[i][: at.sum()], rtol=1e-5, atol=1e-5)
    assert sorted(seen) == list(range(len(pieces)))


def test_training_on_packed_rows_resumes_exactly_and_refusals(tmp_path):
    from nety_jax.config import load_config
    from nety_jax.errors import ConfigError
    from nety_jax.models import get_model
    from nety_jax.serving.pretrained import load_pretrained
    from nety_jax.tasks import Corpus
    from nety_jax.training.loop import train
    logged = []
    packed = lambda steps: load_config(GPT_TINY, [  # a constant schedule: none over train.steps
        "data.packing=true", f"train.steps={steps}", "train.eval_every=3", "train.checkpoint_every=3",
        "train.batch_size=8", "train.schedule=constant"])
    summary = train(packed(3), str(tmp_path / "run"), progress=False, log=logged.append)
    assert summary["step"] == 3 and np.isfinite(summary["val"]["loss"])
    assert any("packed rows of 32 tokens" in line for line in logged), logged
    train(packed(5), str(tmp_path / "run"), **QUIET)  # resumed at step 3
    train(packed(5), str(tmp_path / "straight"), **QUIET)
    resumed, straight = (jax.device_get(load_pretrained(str(tmp_path / d)).variables)
                         for d in ("run", "straight"))
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree_util.tree_leaves(resumed),
                                                             jax.tree_util.tree_leaves(straight)))
    assert diff <= 1e-6, diff  # the standard of the resume tests (test_training.py)
    hybrid = load_config(TINY, ["data.packing=true"])
    with pytest.raises(ConfigError, match="^data.packing packs the documents of a language model"):
        get_model(hybrid.model).task.encode(hybrid, None, Corpus([("a", "b")], [], ["a", "b"]), "x")
