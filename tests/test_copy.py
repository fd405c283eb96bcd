"""The pointer-generator head (``model.copy``) against the mixture computed by hand in numpy."""
import flax.linen as nn
import jax
import numpy as np

from nety_jax.cli import main
from nety_jax.layers import CopyHead
from conftest import TINY


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_copy_head_is_the_pointer_generator_mixture():
    b, t, m, d, v = 3, 4, 6, 8, 11
    rs = np.random.default_rng(0)
    logits = rs.normal(size=(b, t, v)).astype(np.float32)
    hidden = rs.normal(size=(b, t, d)).astype(np.float32)
    memory = rs.normal(size=(b, m, d)).astype(np.float32)
    ids = np.array([[0, 5, 7, 5, 9, 0],     # position 0: the pooled vector (no token); 5 twice
                    [0, 4, 4, 4, 4, 4],     # one id everywhere
                    [0, 0, 0, 0, 0, 0]], np.int32)  # an empty source: nothing to copy
    mask = np.array([[1, 1, 1, 1, 1, 0], [1] * 6, [1, 0, 0, 0, 0, 0]], bool)
    head = CopyHead(d, v)
    variables = nn.unbox(head.init(jax.random.PRNGKey(1), logits, hidden, memory, mask, ids,
                                   method=lambda mod, lg, h, mem, msk, i: mod(lg, h, mod.prepare(mem, msk, i))))

    def run(logits, hidden, memory, mask, ids):
        pre = head.apply(variables, memory, mask, ids, method=head.prepare)
        return head.apply(variables, logits, hidden, pre)

    out = np.asarray(jax.jit(run)(logits, hidden, memory, mask, ids))
    p = variables["params"]
    q = hidden @ np.asarray(p["query"]["kernel"]) + np.asarray(p["query"]["bias"])
    k = memory @ np.asarray(p["key"]["kernel"]) + np.asarray(p["key"]["bias"])
    want = np.zeros_like(out)
    for i in range(b):
        copyable = mask[i] & (ids[i] > 0)
        for j in range(t):
            vocab = np.exp(logits[i, j] - logits[i, j].max())
            vocab /= vocab.sum()
            if not copyable.any():
                want[i, j] = np.log(vocab)
                continue
            s = np.where(copyable, k[i] @ q[i, j] / np.sqrt(d), -np.inf)
            a = np.exp(s - s.max())
            a /= a.sum()
            ctx = a @ memory[i]
            g = _sigmoid(np.concatenate([hidden[i, j], ctx]) @ np.asarray(p["gate"]["kernel"])[:, 0]
                         + np.asarray(p["gate"]["bias"])[0])
            copy = np.zeros(v)
            np.add.at(copy, ids[i], a)
            want[i, j] = np.log(g * vocab + (1 - g) * copy)
    np.testing.assert_allclose(out, want, atol=2e-5)
    np.testing.assert_allclose(jax.nn.logsumexp(out, axis=-1), 0.0, atol=1e-5)  # a distribution
    assert np.all(np.isfinite(out))


def test_copy_needs_sequence_memory(capsys):
    assert main(["info", "--config", TINY, "--set", "model.copy=true",
                 "--set", "model.memory=pooled"]) != 0
    err = capsys.readouterr().err
    assert "model.copy=true" in err and "model.memory=sequence" in err
